//! Istio's `DestinationRule` and `VirtualService` (networking.istio.io v1, v1beta1,
//! v1alpha3) as serde types with Istio's own field names, loaded from (multi-document)
//! YAML. Every struct refuses fields it does not know, so a field this mesh cannot
//! enforce is an error naming the field's path, never silently ignored.

use crate::duration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// API versions we read; the schema of these kinds is the same in all three.
pub const API_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// A resource could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("document {doc}: not YAML: {message}")]
    Yaml { doc: usize, message: String },
    #[error("document {doc} ({kind} {name}): {path}: {message}")]
    Field {
        doc: usize,
        kind: String,
        name: String,
        path: String,
        message: String,
    },
    #[error("document {doc}: apiVersion {api_version:?} of {kind} is not one of {API_VERSIONS:?}")]
    ApiVersion {
        doc: usize,
        kind: String,
        api_version: String,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRule {
    pub host: String,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Visibility across namespaces: meaningless in-process, accepted.
    #[serde(default)]
    pub export_to: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    pub simple: SimpleLb,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    Unspecified,
    RoundRobin,
    Random,
    LeastRequest,
    /// Deprecated alias of LEAST_REQUEST.
    LeastConn,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPool {
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    #[serde(default)]
    pub http: Option<HttpSettings>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSettings {
    #[serde(default)]
    pub max_connections: Option<i64>,
    #[serde(default, with = "duration::opt")]
    pub connect_timeout: Option<Duration>,
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpKeepalive {
    #[serde(default)]
    pub probes: Option<u32>,
    #[serde(default, with = "duration::opt")]
    pub time: Option<Duration>,
    #[serde(default, with = "duration::opt")]
    pub interval: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSettings {
    #[serde(default)]
    pub http1_max_pending_requests: Option<i64>,
    #[serde(default)]
    pub http2_max_requests: Option<i64>,
    #[serde(default)]
    pub max_requests_per_connection: Option<i64>,
    #[serde(default)]
    pub max_retries: Option<i64>,
    #[serde(default, with = "duration::opt")]
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Deprecated by Istio: consecutive 502/503/504 (gateway errors).
    #[serde(default)]
    pub consecutive_errors: Option<u32>,
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, with = "duration::opt")]
    pub interval: Option<Duration>,
    #[serde(default, with = "duration::opt")]
    pub base_ejection_time: Option<Duration>,
    #[serde(default)]
    pub max_ejection_percent: Option<i32>,
    #[serde(default)]
    pub min_health_percent: Option<i32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualService {
    pub hosts: Vec<String>,
    /// Only the sidecar mesh ("mesh", the default) applies in-process.
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    #[serde(default)]
    pub export_to: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatch>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
    #[serde(default, with = "duration::opt")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retries: Option<HttpRetry>,
    #[serde(default)]
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
}

/// Exactly one of exact / prefix (regex is refused: the mesh has no RE2).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSelector {
    pub number: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRetry {
    pub attempts: i64,
    #[serde(default, with = "duration::opt")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default)]
    pub retry_on: Option<String>,
    /// Locality-aware retries: one locality in-process, accepted.
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fault {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    #[serde(with = "duration::opt")]
    pub fixed_delay: Option<Duration>,
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// Deprecated integer percent.
    #[serde(default)]
    pub percent: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    #[serde(default)]
    pub http_status: Option<u16>,
    #[serde(default)]
    pub grpc_status: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

/// Every DestinationRule and VirtualService found in a set of YAML texts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub destination_rules: Vec<(Metadata, DestinationRule)>,
    pub virtual_services: Vec<(Metadata, VirtualService)>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default, rename = "apiVersion")]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: serde_yaml_ng::Value,
    #[serde(default)]
    spec: serde_yaml_ng::Value,
}

fn typed<T: for<'de> Deserialize<'de>>(
    value: serde_yaml_ng::Value,
    doc: usize,
    kind: &str,
    name: &str,
    prefix: &str,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        ConfigError::Field {
            doc,
            kind: kind.to_owned(),
            name: name.to_owned(),
            path: if inner == "." {
                prefix.to_owned()
            } else {
                format!("{prefix}.{inner}")
            },
            message: format!(
                "{} (fields this mesh cannot enforce are refused; see mesh/README.md)",
                e.inner()
            ),
        }
    })
}

impl Resources {
    /// Reads every document of a YAML text; other kinds (a Service in the same file) are skipped.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut out = Self::default();
        for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let doc = i + 1;
            let value =
                serde_yaml_ng::Value::deserialize(document).map_err(|e| ConfigError::Yaml {
                    doc,
                    message: e.to_string(),
                })?;
            if value.is_null() {
                continue;
            }
            let envelope: Envelope =
                serde_yaml_ng::from_value(value).map_err(|e| ConfigError::Yaml {
                    doc,
                    message: e.to_string(),
                })?;
            if envelope.kind != "DestinationRule" && envelope.kind != "VirtualService" {
                continue;
            }
            if !API_VERSIONS.contains(&envelope.api_version.as_str()) {
                return Err(ConfigError::ApiVersion {
                    doc,
                    kind: envelope.kind,
                    api_version: envelope.api_version,
                });
            }
            let metadata: Metadata = if envelope.metadata.is_null() {
                Metadata::default()
            } else {
                typed(envelope.metadata, doc, &envelope.kind, "?", "metadata")?
            };
            let name = metadata.name.clone();
            if envelope.kind == "DestinationRule" {
                let spec = typed(envelope.spec, doc, &envelope.kind, &name, "spec")?;
                out.destination_rules.push((metadata, spec));
            } else {
                let spec = typed(envelope.spec, doc, &envelope.kind, &name, "spec")?;
                out.virtual_services.push((metadata, spec));
            }
        }
        Ok(out)
    }

    /// Reads and merges several files.
    pub fn load(paths: &[std::path::PathBuf]) -> Result<Self, ConfigError> {
        let mut all = Self::default();
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let found = Self::parse(&text)?;
            all.destination_rules.extend(found.destination_rules);
            all.virtual_services.extend(found.virtual_services);
        }
        Ok(all)
    }
}

/// True when an Istio host name names `host`: equal, or `host` is its short name
/// (`delivery` for `delivery.default.svc.cluster.local`).
pub fn host_matches(istio_host: &str, host: &str) -> bool {
    istio_host == host
        || istio_host.split('.').next() == Some(host)
        || host.split('.').next() == Some(istio_host)
}
