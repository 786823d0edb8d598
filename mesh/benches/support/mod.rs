//! What the mesh's benches share (also included by e2e/benches/sidecar.rs): the policy
//! every overhead figure is measured with, the server they call, and the statistics.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

/// A full policy: route timeout, retries with a per-try timeout, pool limits and outlier
/// detection (host `bench`).
pub const POLICY: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bench}
spec:
  host: bench
  trafficPolicy:
    connectionPool:
      http: {http2MaxRequests: 1000, http1MaxPendingRequests: 1000}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 100}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench}
spec:
  hosts: [bench]
  http:
  - timeout: 5s
    retries: {attempts: 2, perTryTimeout: 2s, retryOn: "unavailable,connect-failure"}
    route:
    - destination: {host: bench}
"#;

/// A tonic server answering health Check at once, on a free loopback port.
pub async fn server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    port
}

/// The `p` quantile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// CPU time (user + system) this process has used so far, from /proc/self/stat (Linux;
/// zero elsewhere). Ticks of 10 ms: read it over runs of a second or more.
pub fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command (which may hold spaces) in parentheses: utime and stime
    // are the 12th and 13th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}
