//! The route's overall `timeout` (VirtualService `http[].timeout`): retries included. The
//! retry layer enforces it ([`crate::retry::RetryLayer::with_route_timeout`]), bounding each
//! try by the sooner of the route's deadline and the per-try timeout: one timer per try.
//! A caller's `grpc-timeout` bounds the call as well (Istio sets Envoy's
//! `max_grpc_timeout` to the route's timeout, so the sooner of the two ends it).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    /// None: no overall timeout (Istio's default).
    pub timeout: Option<Duration>,
}

/// The `grpc-timeout` a caller set (`<digits><unit>`, at most 8 digits, unit H M S m u n);
/// anything else is no deadline.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
    let text = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}
