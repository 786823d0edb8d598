//! The route's overall `timeout` (VirtualService `http[].timeout`): retries included. The
//! retry layer enforces it ([`crate::retry::RetryLayer::with_route_timeout`]), bounding each
//! try by the sooner of the route's deadline and the per-try timeout: one timer per try.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    /// None: no overall timeout (Istio's default).
    pub timeout: Option<Duration>,
}
