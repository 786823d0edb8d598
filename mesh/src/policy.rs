//! Compiles the Istio resources that concern one host into the policy the layers enforce,
//! refusing with a message naming the field whatever we cannot enforce faithfully.

use crate::istio::{self, host_matches, ConfigError, Resources, TrafficPolicy};
use crate::outlier::{self, Pick};
use crate::route::{MatchBlock, StringMatch};
use crate::{classify, fault, pool, retry, timeout};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;

/// The settings of one destination (the host, or one subset of it).
#[derive(Debug, Clone, PartialEq)]
pub struct Traffic {
    pub pool: pool::Config,
    pub outlier: Option<outlier::Config>,
    pub pick: Pick,
    pub connect_timeout: Option<Duration>,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            pool: pool::Config::default(),
            outlier: None,
            pick: Pick::RoundRobin,
            connect_timeout: None,
        }
    }
}

/// One VirtualService route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Empty: every call.
    pub matches: Vec<MatchBlock>,
    /// (subset, weight); `None` is the whole host.
    pub destinations: Vec<(Option<String>, u32)>,
    pub timeout: timeout::Config,
    pub retry: retry::Config,
    pub fault: fault::Config,
}

/// Everything the mesh enforces for calls to one host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPolicy {
    pub host: String,
    pub routes: Vec<Route>,
    /// Settings per subset; `None` is the host's own traffic policy.
    pub traffic: BTreeMap<Option<String>, Traffic>,
    /// Endpoint labels each subset selects.
    pub subset_labels: BTreeMap<String, BTreeMap<String, String>>,
}

/// One destination of a host (a subset, or the host itself): what it is built from.
pub struct Destination<'a> {
    /// The subset's traffic policy, else the host's.
    pub traffic: Traffic,
    /// The labels the subset selects endpoints by (none: every endpoint).
    pub labels: BTreeMap<String, String>,
    /// The endpoints carrying them.
    pub endpoints: Vec<&'a crate::endpoint::EndpointAddr>,
}

impl HostPolicy {
    /// What `subset` (None: the host itself) gets of `endpoints`, as a DestinationRule
    /// gives it: the mesh builds a balancer of it, and the Envoy conformance harness a
    /// cluster.
    pub fn destination<'a>(
        &self,
        subset: &Option<String>,
        endpoints: &'a [crate::endpoint::EndpointAddr],
    ) -> Destination<'a> {
        let traffic = self
            .traffic
            .get(subset)
            .or_else(|| self.traffic.get(&None))
            .cloned()
            .unwrap_or_default();
        let labels = subset
            .as_ref()
            .and_then(|s| self.subset_labels.get(s))
            .cloned()
            .unwrap_or_default();
        let endpoints = endpoints
            .iter()
            .filter(|e| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            .collect();
        Destination {
            traffic,
            labels,
            endpoints,
        }
    }
}

/// Istio reads a zero duration as "not set".
fn nonzero(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero())
}

fn unsupported(path: &str, why: &str) -> ConfigError {
    ConfigError::Unsupported(format!("{path}: {why}"))
}

fn limit(path: &str, value: Option<i64>) -> Result<usize, ConfigError> {
    match value {
        // Istio treats 0 as unset: its default, 2^32 - 1.
        None | Some(0) => Ok(u32::MAX as usize),
        Some(v) if v < 0 => Err(unsupported(
            path,
            &format!("must not be negative (got {v})"),
        )),
        Some(v) => Ok(v as usize),
    }
}

fn traffic(base: &Traffic, policy: &TrafficPolicy, path: &str) -> Result<Traffic, ConfigError> {
    let mut out = base.clone();
    if let Some(lb) = &policy.load_balancer {
        out.pick = match lb.simple {
            istio::SimpleLb::Unspecified | istio::SimpleLb::RoundRobin => Pick::RoundRobin,
            istio::SimpleLb::Random => Pick::Random,
            istio::SimpleLb::LeastRequest | istio::SimpleLb::LeastConn => Pick::LeastRequest,
        };
    }
    if let Some(cp) = &policy.connection_pool {
        let mut pool = pool::Config::default();
        if let Some(tcp) = &cp.tcp {
            if tcp.max_connections.is_some_and(|m| m < 0) {
                return Err(unsupported(
                    &format!("{path}.connectionPool.tcp.maxConnections"),
                    "must not be negative",
                ));
            }
            if tcp
                .connect_timeout
                .is_some_and(|t| t < Duration::from_millis(1))
            {
                return Err(unsupported(
                    &format!("{path}.connectionPool.tcp.connectTimeout"),
                    "must be at least 1ms",
                ));
            }
            out.connect_timeout = tcp.connect_timeout.or(out.connect_timeout);
        }
        if let Some(http) = &cp.http {
            let p = format!("{path}.connectionPool.http");
            pool.max_requests = limit(&format!("{p}.http2MaxRequests"), http.http2_max_requests)?;
            pool.max_pending = limit(
                &format!("{p}.http1MaxPendingRequests"),
                http.http1_max_pending_requests,
            )?;
            limit(
                &format!("{p}.maxRequestsPerConnection"),
                http.max_requests_per_connection,
            )?;
            limit(&format!("{p}.maxRetries"), http.max_retries)?;
        }
        out.pool = pool;
    }
    if let Some(od) = &policy.outlier_detection {
        let p = format!("{path}.outlierDetection");
        if od.min_health_percent.is_some_and(|m| m > 0) {
            return Err(unsupported(
                &format!("{p}.minHealthPercent"),
                "panic-mode balancing is not implemented; only 0 (Istio's default) is supported",
            ));
        }
        // Istio reads 0 as unset: 10 %.
        let max_ejection_percent = od.max_ejection_percent.filter(|p| *p != 0).unwrap_or(10);
        if !(0..=100).contains(&max_ejection_percent) {
            return Err(unsupported(
                &format!("{p}.maxEjectionPercent"),
                "must be within 0..=100",
            ));
        }
        let defaults = outlier::Config::default();
        // Istio: the deprecated consecutiveErrors means gateway errors and turns off the
        // default 5xx count unless consecutive5xxErrors is given too.
        let gateway = od
            .consecutive_gateway_errors
            .or(od.consecutive_errors)
            .filter(|n| *n > 0);
        let five_xx = match (od.consecutive_5xx_errors, od.consecutive_errors) {
            (Some(n), _) => Some(n).filter(|n| *n > 0),
            (None, Some(_)) => None,
            (None, None) => defaults.consecutive_5xx,
        };
        out.outlier = Some(outlier::Config {
            consecutive_5xx: five_xx,
            consecutive_gateway: gateway,
            interval: nonzero(od.interval).unwrap_or(defaults.interval),
            base_ejection_time: nonzero(od.base_ejection_time)
                .unwrap_or(defaults.base_ejection_time),
            max_ejection_percent: max_ejection_percent as u32,
        });
    }
    Ok(out)
}

fn string_match(path: &str, m: &istio::StringMatch) -> Result<StringMatch, ConfigError> {
    match (&m.exact, &m.prefix) {
        (Some(e), None) => Ok(StringMatch::Exact(e.clone())),
        (None, Some(p)) => Ok(StringMatch::Prefix(p.clone())),
        _ => Err(unsupported(
            path,
            "give exactly one of exact or prefix (regex is not supported)",
        )),
    }
}

fn grpc_code(path: &str, name: &str) -> Result<Code, ConfigError> {
    if let Ok(n) = name.parse::<i32>() {
        return Ok(Code::from_i32(n));
    }
    let code = match name {
        "OK" => Code::Ok,
        "CANCELLED" => Code::Cancelled,
        "UNKNOWN" => Code::Unknown,
        "INVALID_ARGUMENT" => Code::InvalidArgument,
        "DEADLINE_EXCEEDED" => Code::DeadlineExceeded,
        "NOT_FOUND" => Code::NotFound,
        "ALREADY_EXISTS" => Code::AlreadyExists,
        "PERMISSION_DENIED" => Code::PermissionDenied,
        "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
        "FAILED_PRECONDITION" => Code::FailedPrecondition,
        "ABORTED" => Code::Aborted,
        "OUT_OF_RANGE" => Code::OutOfRange,
        "UNIMPLEMENTED" => Code::Unimplemented,
        "INTERNAL" => Code::Internal,
        "UNAVAILABLE" => Code::Unavailable,
        "DATA_LOSS" => Code::DataLoss,
        "UNAUTHENTICATED" => Code::Unauthenticated,
        other => {
            return Err(unsupported(
                path,
                &format!("{other:?} is not a gRPC status name"),
            ))
        }
    };
    Ok(code)
}

fn percent(
    path: &str,
    p: Option<istio::Percent>,
    deprecated: Option<u32>,
) -> Result<f64, ConfigError> {
    let value = p
        .map(|p| p.value)
        .or(deprecated.map(f64::from))
        .unwrap_or(100.0);
    if !(0.0..=100.0).contains(&value) {
        return Err(unsupported(path, "percentage must be within 0..=100"));
    }
    Ok(value)
}

fn route(
    host: &str,
    i: usize,
    r: &istio::HttpRoute,
    subsets: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Route, ConfigError> {
    let path = format!("spec.http[{i}]");
    let mut matches = Vec::new();
    for (j, m) in r.matches.iter().enumerate() {
        let mp = format!("{path}.match[{j}]");
        let mut block = MatchBlock::default();
        if let Some(uri) = &m.uri {
            block.uri = Some(string_match(&format!("{mp}.uri"), uri)?);
        }
        for (name, value) in &m.headers {
            let hp = format!("{mp}.headers.{name}");
            let header = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| unsupported(&hp, "not a header name"))?;
            block.headers.push((header, string_match(&hp, value)?));
        }
        matches.push(block);
    }
    if r.route.is_empty() {
        return Err(unsupported(
            &format!("{path}.route"),
            "a route needs at least one destination (redirects are not supported)",
        ));
    }
    let mut destinations = Vec::new();
    for (j, d) in r.route.iter().enumerate() {
        let dp = format!("{path}.route[{j}].destination");
        if !host_matches(&d.destination.host, host) {
            return Err(unsupported(
                &format!("{dp}.host"),
                &format!(
                    "routes to {} but this mesh client serves {host}",
                    d.destination.host
                ),
            ));
        }
        if let Some(subset) = &d.destination.subset {
            if !subsets.contains_key(subset) {
                return Err(unsupported(
                    &format!("{dp}.subset"),
                    &format!("subset {subset:?} is not defined by the DestinationRule"),
                ));
            }
        }
        let weight = d.weight.unwrap_or(if r.route.len() == 1 { 100 } else { 0 });
        if weight > 100 {
            return Err(unsupported(
                &format!("{path}.route[{j}].weight"),
                "must be within 0..=100",
            ));
        }
        destinations.push((d.destination.subset.clone(), weight));
    }
    let total: u32 = destinations.iter().map(|(_, w)| *w).sum();
    if total == 0 || (destinations.len() > 1 && total != 100) {
        return Err(unsupported(
            &format!("{path}.route"),
            &format!("weights must add up to 100 (they add up to {total})"),
        ));
    }
    let retry = match &r.retries {
        None => retry::Config::default(),
        Some(rt) => {
            if rt.attempts < 0 {
                return Err(unsupported(
                    &format!("{path}.retries.attempts"),
                    "must not be negative",
                ));
            }
            let retry_on = match &rt.retry_on {
                Some(text) => retry::RetryOn::parse(text)
                    .map_err(|e| unsupported(&format!("{path}.retries.retryOn"), &e))?,
                None => retry::Config::default().retry_on,
            };
            retry::Config {
                attempts: rt.attempts as u32,
                per_try_timeout: nonzero(rt.per_try_timeout),
                retry_on,
            }
        }
    };
    let mut fault = fault::Config::default();
    if let Some(f) = &r.fault {
        if let Some(d) = &f.delay {
            let dp = format!("{path}.fault.delay");
            let fixed = d.fixed_delay.ok_or_else(|| {
                unsupported(
                    &format!("{dp}.fixedDelay"),
                    "is required (exponentialDelay is not supported)",
                )
            })?;
            fault.delay = Some((
                fixed,
                percent(&format!("{dp}.percentage"), d.percentage, d.percent)?,
            ));
        }
        if let Some(a) = &f.abort {
            let ap = format!("{path}.fault.abort");
            let code = match (&a.grpc_status, a.http_status) {
                (Some(name), None) => grpc_code(&format!("{ap}.grpcStatus"), name)?,
                (None, Some(status)) => {
                    let status = http::StatusCode::from_u16(status).map_err(|_| {
                        unsupported(&format!("{ap}.httpStatus"), "not an HTTP status")
                    })?;
                    classify::code_for_http(status)
                }
                _ => return Err(unsupported(
                    &ap,
                    "give exactly one of grpcStatus or httpStatus (http2Error is not supported)",
                )),
            };
            fault.abort = Some((
                code,
                percent(&format!("{ap}.percentage"), a.percentage, None)?,
            ));
        }
    }
    Ok(Route {
        matches,
        destinations,
        timeout: timeout::Config {
            timeout: nonzero(r.timeout),
        },
        retry,
        fault,
    })
}

/// The policy for `host` in `resources`: its first DestinationRule and VirtualService.
pub fn compile(resources: &Resources, host: &str) -> Result<HostPolicy, ConfigError> {
    let mut traffic_map = BTreeMap::new();
    let mut subset_labels = BTreeMap::new();
    let base = Traffic::default();
    match resources
        .destination_rules
        .iter()
        .find(|(_, dr)| host_matches(&dr.host, host))
    {
        Some((_, dr)) => {
            let top = match &dr.traffic_policy {
                Some(tp) => traffic(&base, tp, "spec.trafficPolicy")?,
                None => base,
            };
            for (i, subset) in dr.subsets.iter().enumerate() {
                let t = match &subset.traffic_policy {
                    Some(tp) => traffic(&top, tp, &format!("spec.subsets[{i}].trafficPolicy"))?,
                    None => top.clone(),
                };
                traffic_map.insert(Some(subset.name.clone()), t);
                subset_labels.insert(subset.name.clone(), subset.labels.clone());
            }
            traffic_map.insert(None, top);
        }
        None => {
            traffic_map.insert(None, base);
        }
    }
    let routes = match resources
        .virtual_services
        .iter()
        .find(|(_, vs)| vs.hosts.iter().any(|h| host_matches(h, host)))
    {
        Some((_, vs)) => {
            if vs.gateways.iter().any(|g| g != "mesh") {
                return Err(unsupported(
                    "spec.gateways",
                    "only the sidecar mesh (\"mesh\") applies in-process",
                ));
            }
            if vs.http.is_empty() {
                return Err(unsupported(
                    "spec.http",
                    "no HTTP route (tcp and tls routes are not supported)",
                ));
            }
            vs.http
                .iter()
                .enumerate()
                .map(|(i, r)| route(host, i, r, &subset_labels))
                .collect::<Result<Vec<_>, _>>()?
        }
        None => vec![Route {
            matches: vec![],
            destinations: vec![(None, 100)],
            timeout: timeout::Config::default(),
            retry: retry::Config::default(),
            fault: fault::Config::default(),
        }],
    };
    Ok(HostPolicy {
        host: host.to_owned(),
        routes,
        traffic: traffic_map,
        subset_labels,
    })
}
