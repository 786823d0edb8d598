//! REST/JSON: errors as JSON with the HTTP status that matches the gRPC code.

use axum::body::Body as AxumBody;
use http::{header, HeaderValue, StatusCode};

/// The HTTP status for a gRPC code, as grpc-gateway and Google's APIs map them.
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        InvalidArgument | OutOfRange => StatusCode::BAD_REQUEST,
        FailedPrecondition => StatusCode::BAD_REQUEST,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        PermissionDenied => StatusCode::FORBIDDEN,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// `{"error": {"code": 404, "status": "NOT_FOUND", "message": "..."}}`, Google's JSON
/// error shape.
pub fn error_response(status: &tonic::Status) -> http::Response<AxumBody> {
    let http = http_status(status.code());
    let name = format!("{:?}", status.code());
    let body = serde_json::json!({
        "error": {
            "code": http.as_u16(),
            "status": screaming_snake(&name),
            "message": status.message(),
        }
    });
    let mut response = http::Response::new(AxumBody::from(body.to_string()));
    *response.status_mut() = http;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if http == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"parking-mesh\""),
        );
    }
    response
}

/// `NotFound` -> `NOT_FOUND`: the gRPC code's canonical name.
fn screaming_snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_their_canonical_names_and_statuses() {
        assert_eq!(screaming_snake("NotFound"), "NOT_FOUND");
        assert_eq!(screaming_snake("ResourceExhausted"), "RESOURCE_EXHAUSTED");
        assert_eq!(
            http_status(tonic::Code::AlreadyExists),
            StatusCode::CONFLICT
        );
        assert_eq!(
            http_status(tonic::Code::Unauthenticated),
            StatusCode::UNAUTHORIZED
        );
    }
}
