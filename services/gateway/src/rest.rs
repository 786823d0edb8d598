//! REST/JSON, transcoded from the `google.api.http` annotations in the protos (the
//! convention of grpc-gateway and Envoy's gRPC-JSON transcoder): each annotated method's
//! path template becomes a route; path variables, query parameters and the JSON body
//! (proto3's JSON mapping, camelCase names) fill its request message; the answer comes
//! back as JSON, an error as JSON with the HTTP status that matches the gRPC code. The
//! call itself goes to the backend over gRPC, through the same [`Guard`] as gRPC callers.
//!
//! 64-bit integers are written as JSON numbers, not the strings proto3 JSON prefers, so
//! the seed's clients read `"id": 5` as they always did; strings are accepted on input.

use crate::guard::Guard;
use axum::body::Body as AxumBody;
use http::{header, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, MethodDescriptor,
    SerializeOptions,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Backend deadline for a REST call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("descriptor set: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    #[error("{method}: HTTP rule {rule:?}: {why}")]
    Rule {
        method: String,
        rule: String,
        why: &'static str,
    },
}

/// One piece of a path template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Segment {
    Literal(String),
    /// A request field filled from this segment, by its JSON name.
    Field(String),
}

/// One HTTP binding of one gRPC method.
pub(crate) struct Route {
    pub(crate) verb: http::Method,
    pub(crate) template: Vec<Segment>,
    /// Whether the JSON body fills the whole request (`body: "*"`).
    pub(crate) body: bool,
    pub(crate) method: MethodDescriptor,
    /// 0 for the method's main rule, 1.. for its `additional_bindings`.
    pub(crate) binding: usize,
    /// `/package.Service/Method`.
    grpc_path: http::uri::PathAndQuery,
    /// The backend, through the mesh.
    backend: mesh::MeshClient,
}

impl Route {
    /// The path variables when `segments` fit the template.
    fn matches<'a>(&self, segments: &[&'a str]) -> Option<Vec<(&str, &'a str)>> {
        if segments.len() != self.template.len() {
            return None;
        }
        let mut vars = Vec::new();
        for (part, segment) in self.template.iter().zip(segments) {
            match part {
                Segment::Literal(l) if l == segment => {}
                Segment::Literal(_) => return None,
                Segment::Field(f) if !segment.is_empty() => vars.push((f.as_str(), *segment)),
                Segment::Field(_) => return None,
            }
        }
        Some(vars)
    }

    /// The path template with JSON names: `/reservationStatuses/{reservationId}`.
    pub(crate) fn path(&self) -> String {
        self.template
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => format!("/{l}"),
                Segment::Field(f) => format!("/{{{f}}}"),
            })
            .collect()
    }

    fn literals(&self) -> usize {
        self.template
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }
}

/// A route and its path variables (JSON name, raw value).
pub(crate) type Found<'r, 'p> = (&'r Route, Vec<(&'r str, &'p str)>);

/// The REST routes of every annotated method.
pub struct Rest {
    routes: Vec<Route>,
    guard: Arc<Guard>,
    /// Largest JSON body read.
    max_body: usize,
}

/// Parses `/a/{b}/c` against the request message's fields.
fn template(method: &MethodDescriptor, path: &str) -> Result<Vec<Segment>, Error> {
    let bad = |why| Error::Rule {
        method: method.full_name().to_owned(),
        rule: path.to_owned(),
        why,
    };
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| bad("must start with /"))?;
    rest.split('/')
        .map(
            |part| match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) => {
                    let name = name.strip_suffix("=*").unwrap_or(name);
                    let field = method
                        .input()
                        .get_field_by_name(name)
                        .ok_or_else(|| bad("names no field of the request"))?;
                    Ok(Segment::Field(field.json_name().to_owned()))
                }
                None if part.contains(['{', '}', ':', '*']) => {
                    Err(bad("only literal segments and {field} are supported"))
                }
                None => Ok(Segment::Literal(part.to_owned())),
            },
        )
        .collect()
}

impl Rest {
    /// Routes from the `google.api.http` options in `descriptors`, each to the backend of
    /// its service (`services`: full service name to its mesh client).
    pub fn new(
        descriptors: &[u8],
        services: &HashMap<String, mesh::MeshClient>,
        guard: Arc<Guard>,
        max_body: usize,
    ) -> Result<Rest, Error> {
        let pool = DescriptorPool::decode(descriptors)?;
        let Some(http_rule) = pool.get_extension_by_name("google.api.http") else {
            return Ok(Rest {
                routes: Vec::new(),
                guard,
                max_body,
            });
        };
        let mut routes = Vec::new();
        for service in pool.services() {
            let Some(backend) = services.get(service.full_name()) else {
                continue;
            };
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&http_rule) {
                    continue;
                }
                let rule = options.get_extension(&http_rule);
                let Some(rule) = rule.as_message() else {
                    continue;
                };
                if method.is_server_streaming() || method.is_client_streaming() {
                    // Streams stay gRPC (and gRPC-Web) only.
                    continue;
                }
                let mut rules = vec![rule.clone()];
                if let Some(more) = rule
                    .get_field_by_name("additional_bindings")
                    .and_then(|v| v.as_list().map(|l| l.to_vec()))
                {
                    rules.extend(more.iter().filter_map(|v| v.as_message().cloned()));
                }
                for (binding, rule) in rules.into_iter().enumerate() {
                    for (verb, method_name) in [
                        (http::Method::GET, "get"),
                        (http::Method::POST, "post"),
                        (http::Method::PUT, "put"),
                        (http::Method::DELETE, "delete"),
                        (http::Method::PATCH, "patch"),
                    ] {
                        let path = rule
                            .get_field_by_name(method_name)
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default();
                        if path.is_empty() {
                            continue;
                        }
                        let body = rule
                            .get_field_by_name("body")
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default();
                        if !body.is_empty() && body != "*" {
                            return Err(Error::Rule {
                                method: method.full_name().to_owned(),
                                rule: body,
                                why: "body must be \"*\" or empty",
                            });
                        }
                        let grpc_path = format!("/{}/{}", service.full_name(), method.name())
                            .parse()
                            .map_err(|_| Error::Rule {
                                method: method.full_name().to_owned(),
                                rule: path.clone(),
                                why: "unusable method name",
                            })?;
                        routes.push(Route {
                            verb,
                            template: template(&method, &path)?,
                            body: body == "*",
                            method: method.clone(),
                            binding,
                            grpc_path,
                            backend: backend.clone(),
                        });
                    }
                }
            }
        }
        // Literal segments win over variables: /reservationStatuses/reservationID
        // before /reservationStatuses/{reservation_id}.
        routes.sort_by_key(|r| std::cmp::Reverse(r.literals()));
        Ok(Rest {
            routes,
            guard,
            max_body,
        })
    }

    /// `(verb, path)` of every route, for logs and documentation.
    pub fn describe(&self) -> Vec<String> {
        self.routes
            .iter()
            .map(|r| format!("{} {} -> {}", r.verb, r.path(), r.method.full_name()))
            .collect()
    }

    /// Every route, literals first (the order they are matched in); the OpenAPI document
    /// is written from these.
    pub(crate) fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for `verb` and `path`, with its path variables (JSON name, raw value).
    /// `Err(true)`: the path has routes, for other verbs only (405).
    pub(crate) fn find<'p>(
        &self,
        verb: &http::Method,
        path: &'p str,
    ) -> Result<Found<'_, 'p>, bool> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.routes
            .iter()
            .filter(|r| r.verb == verb)
            .find_map(|r| r.matches(&segments).map(|vars| (r, vars)))
            .ok_or_else(|| self.routes.iter().any(|r| r.matches(&segments).is_some()))
    }

    /// Answers one HTTP request that no other route took.
    pub async fn handle(
        self: Arc<Self>,
        request: axum::extract::Request,
    ) -> http::Response<AxumBody> {
        let (mut parts, body) = request.into_parts();
        let is_grpc = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if is_grpc {
            return tonic::Status::unimplemented(format!("no gRPC method {}", parts.uri.path()))
                .into_http();
        }
        let path = parts.uri.path().to_owned();
        let (route, vars) = match self.find(&parts.method, &path) {
            Ok(found) => found,
            Err(other_verb) => {
                return if other_verb {
                    error_json(
                        StatusCode::METHOD_NOT_ALLOWED,
                        tonic::Code::Unimplemented,
                        &format!("{} is not allowed on {path}", parts.method),
                    )
                } else {
                    error_json(
                        StatusCode::NOT_FOUND,
                        tonic::Code::NotFound,
                        &format!("no route for {} {path}", parts.method),
                    )
                };
            }
        };
        if let Err(rejection) = self.guard.admit(&mut parts.headers, &parts.extensions) {
            return rejection.json();
        }
        let bytes = match http_body_util::Limited::new(body, self.max_body)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                return error_json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    tonic::Code::InvalidArgument,
                    &format!("request body over {} bytes", self.max_body),
                )
            }
        };
        let message = match request_message(route, &vars, parts.uri.query(), &bytes) {
            Ok(message) => message,
            Err(status) => return error_response(&status),
        };
        // The verified token (the backend checks it again) and the call's id go on.
        let forwarded = parts
            .headers
            .iter()
            .filter(|(name, _)| {
                *name == http::header::AUTHORIZATION
                    || name.as_str() == parking_common::propagation::REQUEST_ID
            })
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect::<http::HeaderMap>();
        let mut call = tonic::Request::from_parts(
            tonic::metadata::MetadataMap::from_headers(forwarded),
            tonic::Extensions::default(),
            message,
        );
        call.set_timeout(CALL_TIMEOUT);
        let mut grpc =
            tonic::client::Grpc::new(parking_common::propagation::Inject(route.backend.clone()));
        if let Err(e) = grpc.ready().await {
            tracing::warn!(error = %e, "backend unreachable");
            return error_response(&tonic::Status::unavailable(format!(
                "{} is unavailable right now; retry shortly",
                route.method.parent_service().name()
            )));
        }
        let codec = DynamicCodec(route.method.output());
        match grpc.unary(call, route.grpc_path.clone(), codec).await {
            Ok(answer) => json_response(&answer.into_inner()),
            Err(status) => error_response(&status),
        }
    }
}

/// `/package.Service/Method` of every streaming method (they bypass the mesh).
pub fn streaming_paths(descriptors: &[u8]) -> Result<Vec<String>, Error> {
    let pool = DescriptorPool::decode(descriptors)?;
    Ok(pool
        .services()
        .flat_map(|service| {
            service
                .methods()
                .filter(|m| m.is_server_streaming() || m.is_client_streaming())
                .map(|m| format!("/{}/{}", service.full_name(), m.name()))
                .collect::<Vec<_>>()
        })
        .collect())
}

/// The request message from path variables, query parameters and the JSON body.
fn request_message(
    route: &Route,
    vars: &[(&str, &str)],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, tonic::Status> {
    let input = route.method.input();
    // Each request field comes from one place only: the path, the query or the body. A
    // field given twice is refused, never silently overridden.
    let mut fields = serde_json::Map::new();
    let mut bind = |name: &str, value: serde_json::Value, from: &str| {
        let field = input
            .get_field_by_name(name)
            .or_else(|| input.get_field_by_json_name(name))
            .ok_or_else(|| {
                tonic::Status::invalid_argument(format!(
                    "unknown {from} field {name:?} for {}",
                    route.method.name()
                ))
            })?;
        match fields.entry(field.json_name().to_owned()) {
            serde_json::map::Entry::Occupied(_) => Err(tonic::Status::invalid_argument(format!(
                "{name:?} is given twice (path, query or body: one only)"
            ))),
            serde_json::map::Entry::Vacant(slot) => {
                slot.insert(value);
                Ok(())
            }
        }
    };
    for (name, value) in vars {
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| tonic::Status::invalid_argument("path is not UTF-8"))?;
        bind(name, value.into_owned().into(), "path")?;
    }
    if route.body && !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(map)) => {
                for (name, value) in map {
                    bind(&name, value, "body")?;
                }
            }
            Ok(_) => {
                return Err(tonic::Status::invalid_argument(
                    "the request body must be a JSON object",
                ))
            }
            Err(e) => {
                return Err(tonic::Status::invalid_argument(format!(
                    "malformed JSON: {e}"
                )))
            }
        }
    }
    let query: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| tonic::Status::invalid_argument(format!("query string: {e}")))?;
    for (name, value) in query {
        bind(&name, value.into(), "query")?;
    }
    DynamicMessage::deserialize_with_options(
        input,
        serde_json::Value::Object(fields),
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| tonic::Status::invalid_argument(format!("request: {e}")))
}

fn json_response(message: &DynamicMessage) -> http::Response<AxumBody> {
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .skip_default_fields(false);
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::new(&mut out);
    if let Err(e) = message.serialize_with_options(&mut serializer, &options) {
        return error_response(&tonic::Status::internal(format!("answer as JSON: {e}")));
    }
    json_body(StatusCode::OK, out)
}

/// Encodes and decodes `DynamicMessage`s for a method known only at run time.
struct DynamicCodec(MessageDescriptor);

struct DynamicEncoder;
struct DynamicDecoder(MessageDescriptor);

impl tonic::codec::Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;
    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }
    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder(self.0.clone())
    }
}

impl tonic::codec::Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: DynamicMessage,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::Message::encode(&item, dst)
            .map_err(|e| tonic::Status::internal(format!("encoding the request: {e}")))
    }
}

impl tonic::codec::Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<DynamicMessage>, tonic::Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("decoding the answer: {e}")))
    }
}

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
    error_json(http_status(status.code()), status.code(), status.message())
}

/// The same shape with an HTTP status of our own (413, 405, ...).
fn error_json(http: StatusCode, code: tonic::Code, message: &str) -> http::Response<AxumBody> {
    let body = serde_json::json!({
        "error": {
            "code": http.as_u16(),
            "status": parking_common::observe::code_name(code),
            "message": message,
        }
    });
    let mut response = json_body(http, body.to_string());
    if http == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"parking-mesh\""),
        );
    }
    response
}

/// A JSON answer with `status` (every JSON the gateway writes goes through here).
pub fn json_body(status: StatusCode, body: impl Into<AxumBody>) -> http::Response<AxumBody> {
    let mut response = http::Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_their_canonical_names_and_statuses() {
        let name = parking_common::observe::code_name;
        assert_eq!(name(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(name(tonic::Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
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

#[cfg(test)]
mod route_tests {
    use super::*;

    #[tokio::test]
    async fn every_annotated_method_becomes_a_route_literals_first() {
        let config = mesh::MeshConfig::from_lists("any", "", "http://127.0.0.1:1").expect("config");
        let channel =
            mesh::MeshClient::load(&config, &mesh::metrics::MeshMetrics::default()).expect("mesh");
        let services = [
            "parking.v1.TicketReservationService",
            "parking.v1.ParkingLotService",
            "parking.v1.TicketDeliveryService",
            "parking.v1.ReservationStatusService",
        ]
        .into_iter()
        .map(|s| (s.to_owned(), channel.clone()))
        .collect();
        let guard = Arc::new(Guard {
            tokens: Arc::new(
                crate::tokens::Tokens::ephemeral("i", "a", Duration::from_secs(1)).expect("key"),
            ),
            by_addr: None,
            by_subject: None,
            trusted_hops: 0,
        });
        let rest =
            Rest::new(parking_proto::FILE_DESCRIPTOR_SET, &services, guard, 1024).expect("routes");
        let routes = rest.describe();
        assert_eq!(routes.len(), 13, "{routes:#?}");
        let literal = routes
            .iter()
            .position(|r| r == "GET /reservationStatuses/reservationID -> parking.v1.ReservationStatusService.GetReservationStatus");
        let variable = routes
            .iter()
            .position(|r| r == "GET /reservationStatuses/{reservationId} -> parking.v1.ReservationStatusService.GetReservationStatus");
        assert!(literal < variable && variable.is_some(), "{routes:#?}");
    }
}
