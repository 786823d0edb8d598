//! `GET /status`: the gateway's readiness and each backend's `grpc.health.v1` answer, as
//! JSON; 200 when every backend serves, 503 otherwise (for load balancers and people).

use axum::response::{IntoResponse, Response};
use std::time::Duration;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// The backends to ask, by name.
#[derive(Clone)]
pub struct Backends(pub Vec<(&'static str, Channel)>);

async fn check(channel: Channel) -> String {
    let mut client = HealthClient::new(channel);
    let asked = client.check(HealthCheckRequest {
        service: String::new(),
    });
    match tokio::time::timeout(Duration::from_secs(1), asked).await {
        Ok(Ok(answer)) => ServingStatus::try_from(answer.get_ref().status)
            .map(|s| s.as_str_name().to_owned())
            .unwrap_or_else(|_| "UNKNOWN".to_owned()),
        Ok(Err(status)) => format!("UNAVAILABLE: {}", status.message()),
        Err(_) => "UNAVAILABLE: no answer within 1s".to_owned(),
    }
}

/// Answers `/status`.
pub async fn report(backends: Backends) -> Response {
    let checks = backends.0.into_iter().map(|(name, channel)| async move {
        (
            name.to_owned(),
            serde_json::Value::String(check(channel).await),
        )
    });
    let results = futures_util::future::join_all(checks).await;
    let all_serving = results.iter().all(|(_, s)| s == "SERVING");
    let body = serde_json::json!({
        "gateway": "SERVING",
        "backends": results.into_iter().collect::<serde_json::Map<String, serde_json::Value>>(),
    });
    let code = if all_serving {
        http::StatusCode::OK
    } else {
        http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
