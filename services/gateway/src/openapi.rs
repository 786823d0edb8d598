//! The OpenAPI 3.1 document of the REST routes, served at `GET /openapi.json`. It is
//! written from the transcoder's own route table ([`Rest`], built from the descriptor set's
//! `google.api.http` annotations), so the document and the routes cannot drift apart.
//!
//! Schemas follow what the transcoder really reads and writes: proto3's JSON mapping
//! (lowerCamelCase names, enums by name, `google.protobuf.Timestamp` as an RFC 3339
//! string, repeated fields as arrays), except that 64-bit integers are answered as JSON
//! numbers (the seed's clients read `"id": 5`) and accepted as numbers or decimal strings.
//! Answers carry every field without presence, so those are `required` in the schemas of
//! messages that are answered.

use crate::rest::{Rest, Route, Segment};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};

/// The contract's version (proto/VERSION), the document's `info.version`.
const CONTRACT_VERSION: &str = include_str!("../../../proto/VERSION");

/// The name of the error schema in `components.schemas`.
const ERROR: &str = "Error";

/// The OpenAPI document of every route in `rest`.
pub fn document(rest: &Rest) -> Value {
    let mut schemas = Schemas::default();
    for route in rest.routes() {
        schemas.mark_answered(&route.method.output());
    }
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut tags = BTreeMap::new();
    for route in rest.routes() {
        let service = route.method.parent_service();
        tags.insert(service.name().to_owned(), service.full_name().to_owned());
        paths.entry(route.path()).or_default().insert(
            route.verb.as_str().to_ascii_lowercase(),
            operation(route, &mut schemas),
        );
    }
    let mut components = schemas.defined;
    components.insert(ERROR.to_owned(), error_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "parking-mesh",
            "version": CONTRACT_VERSION.trim(),
            "description": "REST/JSON of the parking.v1 gRPC contract, transcoded by the \
                gateway from the protos' google.api.http annotations. Each request field \
                comes from one place only: the path, the query or the body. 64-bit integers \
                are answered as JSON numbers and accepted as numbers or decimal strings. \
                Every call needs an access token from /oauth2/token.",
        },
        "tags": tags.iter().map(|(name, full)| json!({
            "name": name,
            "description": format!("gRPC service {full}"),
        })).collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from /oauth2/token (EdDSA JWT; the \
                        keys are at /.well-known/jwks.json).",
                },
                "oauth2": {
                    "type": "oauth2",
                    "flows": {
                        "password": { "tokenUrl": "/oauth2/token", "scopes": {} },
                        "clientCredentials": { "tokenUrl": "/oauth2/token", "scopes": {} },
                    },
                },
            },
        },
        "security": [{ "bearer": [] }, { "oauth2": [] }],
    })
}

/// One route as an OpenAPI operation.
fn operation(route: &Route, schemas: &mut Schemas) -> Value {
    let input = route.method.input();
    let service = route.method.parent_service();
    let mut in_path = HashSet::new();
    let mut parameters = Vec::new();
    for segment in &route.template {
        if let Segment::Field(name) = segment {
            if let Some(field) = input.get_field_by_json_name(name) {
                in_path.insert(field.number());
                parameters.push(json!({
                    "name": name,
                    "in": "path",
                    "required": true,
                    "schema": schemas.field(&field),
                }));
            }
        }
    }
    let rest_of = |input: &MessageDescriptor| {
        input
            .fields()
            .filter(|f| !in_path.contains(&f.number()))
            .collect::<Vec<_>>()
    };
    let mut operation = json!({
        // grpc-gateway's convention: Service_Method, then Service_Method2, ... for the
        // additional bindings.
        "operationId": match route.binding {
            0 => format!("{}_{}", service.name(), route.method.name()),
            n => format!("{}_{}{}", service.name(), route.method.name(), n + 1),
        },
        "summary": route.method.name(),
        "tags": [service.name()],
        "x-grpc-method": format!("{}/{}", service.full_name(), route.method.name()),
        "responses": {
            "200": {
                "description": route.method.output().name(),
                "content": { "application/json": { "schema": schemas.message(&route.method.output()) } },
            },
            "default": {
                "description": "An error: the gRPC status as JSON, with the HTTP status \
                    that matches its code (400, 401, 403, 404, 409, 503, ...).",
                "content": { "application/json": { "schema": reference(ERROR) } },
            },
        },
    });
    if route.body {
        // body "*": every field the path does not fill.
        let fields = rest_of(&input);
        let schema = if fields.len() == input.fields().len() {
            schemas.message(&input)
        } else {
            object(
                fields.iter().map(|f| (f.json_name(), schemas.field(f))),
                None,
            )
        };
        operation["requestBody"] = json!({
            "required": false,
            "content": { "application/json": { "schema": schema } },
        });
    } else {
        // No body: the other fields are query parameters (scalars and enums only; the
        // transcoder takes each once).
        for field in rest_of(&input) {
            let scalar = match field.kind() {
                Kind::Message(m) => well_known(&m).is_some(),
                _ => true,
            };
            if scalar && !field.is_list() && !field.is_map() {
                parameters.push(json!({
                    "name": field.json_name(),
                    "in": "query",
                    "required": false,
                    "schema": schemas.field(&field),
                }));
            }
        }
    }
    if !parameters.is_empty() {
        operation["parameters"] = parameters.into();
    }
    operation
}

/// `components.schemas`, filled as messages and enums are met.
#[derive(Default)]
struct Schemas {
    defined: BTreeMap<String, Value>,
    /// Messages reachable from an answer: every field without presence is written.
    answered: HashSet<String>,
}

impl Schemas {
    fn mark_answered(&mut self, message: &MessageDescriptor) {
        if well_known(message).is_some() || !self.answered.insert(message.full_name().to_owned()) {
            return;
        }
        for field in message.fields() {
            if let Kind::Message(inner) = field.kind() {
                self.mark_answered(&inner);
            }
        }
    }

    /// A message's schema: a reference to its component (defined on first use), or a
    /// well-known type's JSON form.
    fn message(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known(message) {
            return schema;
        }
        let name = message.full_name().to_owned();
        if !self.defined.contains_key(&name) {
            // Placeholder first: a message may contain itself.
            self.defined.insert(name.clone(), Value::Null);
            let fields: Vec<_> = message.fields().collect();
            let properties: Vec<_> = fields
                .iter()
                .map(|f| (f.json_name(), self.field(f)))
                .collect();
            let required = self.answered.contains(&name).then(|| {
                fields
                    .iter()
                    .filter(|f| !f.supports_presence())
                    .map(|f| f.json_name().to_owned())
                    .collect::<Vec<_>>()
            });
            self.defined
                .insert(name.clone(), object(properties, required));
        }
        reference(&name)
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            if let Kind::Message(entry) = field.kind() {
                let value = self.kind(&entry.map_entry_value_field().kind());
                return json!({ "type": "object", "additionalProperties": value });
            }
        }
        let one = self.kind(&field.kind());
        if field.is_list() {
            json!({ "type": "array", "items": one })
        } else {
            one
        }
    }

    fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => json!({ "type": "number", "format": "double" }),
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX })
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({
                "type": ["integer", "string"],
                "format": "int64",
                "pattern": "^-?[0-9]+$",
            }),
            Kind::Uint64 | Kind::Fixed64 => json!({
                "type": ["integer", "string"],
                "minimum": 0,
                "pattern": "^[0-9]+$",
            }),
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
            Kind::Message(message) => self.message(message),
            Kind::Enum(e) => {
                let name = e.full_name().to_owned();
                let values: Vec<_> = e.values().map(|v| v.name().to_owned()).collect();
                self.defined
                    .entry(name.clone())
                    .or_insert_with(|| json!({ "type": "string", "enum": values }));
                reference(&name)
            }
        }
    }
}

/// The JSON form of the well-known types the contract uses, which are not objects.
fn well_known(message: &MessageDescriptor) -> Option<Value> {
    match message.full_name() {
        "google.protobuf.Timestamp" => Some(json!({ "type": "string", "format": "date-time" })),
        "google.protobuf.Duration" => {
            Some(json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$" }))
        }
        _ => None,
    }
}

fn object<'a>(
    properties: impl IntoIterator<Item = (&'a str, Value)>,
    required: Option<Vec<String>>,
) -> Value {
    let properties: Map<String, Value> = properties
        .into_iter()
        .map(|(name, schema)| (name.to_owned(), schema))
        .collect();
    let mut schema = json!({ "type": "object", "properties": properties });
    if let Some(required) = required.filter(|r| !r.is_empty()) {
        schema["required"] = required.into();
    }
    schema
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The transcoder's error answer (`rest::error_json`).
fn error_schema() -> Value {
    let codes: Vec<&str> = (0..=16)
        .map(|code| parking_common::observe::code_name(tonic::Code::from_i32(code)))
        .collect();
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "status", "message"],
                "properties": {
                    "code": { "type": "integer", "description": "The HTTP status." },
                    "status": { "type": "string", "enum": codes, "description": "The gRPC code's name." },
                    "message": { "type": "string" },
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;

    /// The gateway's routes for every service it serves.
    fn rest() -> Rest {
        rest_from(parking_proto::FILE_DESCRIPTOR_SET)
    }

    /// The routes of a descriptor set, every service to a backend that is never called.
    fn rest_from(descriptors: &[u8]) -> Rest {
        let config = mesh::MeshConfig::from_lists("any", "", "http://127.0.0.1:1").expect("config");
        let channel =
            mesh::MeshClient::load(&config, &mesh::metrics::MeshMetrics::default()).expect("mesh");
        let pool = prost_reflect::DescriptorPool::decode(descriptors).expect("descriptors");
        let services = pool
            .services()
            .map(|s| (s.full_name().to_owned(), channel.clone()))
            .collect();
        let guard = Arc::new(crate::guard::Guard {
            tokens: Arc::new(
                crate::tokens::Tokens::ephemeral("i", "a", Duration::from_secs(1)).expect("key"),
            ),
            by_addr: None,
            by_subject: None,
            trusted_hops: 0,
        });
        Rest::new(descriptors, &services, guard, 1024).expect("routes")
    }

    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (verb, op) in item.as_object().expect("path item") {
                out.push((verb.to_ascii_uppercase(), path.clone(), op));
            }
        }
        out
    }

    #[tokio::test]
    async fn the_document_has_every_route_the_transcoder_serves_and_nothing_else() {
        let rest = rest();
        let doc = document(&rest);
        let documented: Vec<_> = operations(&doc)
            .into_iter()
            .map(|(verb, path, _)| (verb, path))
            .collect();
        let served: BTreeSet<_> = rest
            .routes()
            .iter()
            .map(|r| (r.verb.to_string(), r.path()))
            .collect();
        assert_eq!(
            served.len(),
            rest.routes().len(),
            "two routes share a verb and path"
        );
        assert_eq!(
            documented.iter().cloned().collect::<BTreeSet<_>>(),
            served,
            "{:#?}",
            rest.describe()
        );
        assert_eq!(documented.len(), served.len());
        // The community service's routes are there with the rest (16 in all).
        assert_eq!(served.len(), 16, "{:#?}", rest.describe());
        assert!(served.contains(&("DELETE".into(), "/eveningBookings/{bookingId}".into())));

        // A request shaped by the document reaches the operation's gRPC method, with the
        // document's path parameters as the transcoder's path variables.
        for (verb, path, op) in operations(&doc) {
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let mut concrete = path.clone();
            let mut in_path = BTreeSet::new();
            for p in params.iter().filter(|p| p["in"] == "path") {
                let name = p["name"].as_str().expect("name");
                concrete = concrete.replace(&format!("{{{name}}}"), "17");
                in_path.insert(name.to_owned());
            }
            let verb = http::Method::from_bytes(verb.as_bytes()).expect("verb");
            let (route, vars) = rest
                .find(&verb, &concrete)
                .unwrap_or_else(|_| panic!("{verb} {concrete} is not routed"));
            assert_eq!(
                op["x-grpc-method"],
                format!(
                    "{}/{}",
                    route.method.parent_service().full_name(),
                    route.method.name()
                ),
                "{verb} {concrete}"
            );
            let vars: BTreeSet<_> = vars.iter().map(|(n, _)| n.to_string()).collect();
            assert_eq!(vars, in_path, "{verb} {path}");
            // Every parameter names a request field by its JSON name.
            for p in &params {
                let name = p["name"].as_str().expect("name");
                assert!(
                    route.method.input().get_field_by_json_name(name).is_some(),
                    "{verb} {path}: {name}"
                );
            }
        }
    }

    /// `buf breaking` (scripts/test-contract.sh) guards the messages and methods; the REST
    /// routes live in google.api.http options, which it does not compare. Every route of
    /// every released contract (proto/released/*.binpb, buf images: FileDescriptorSets
    /// with extra fields) must still be served, by the same method.
    #[tokio::test]
    async fn every_released_rest_route_is_still_served() {
        let current = rest();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto/released");
        let mut images = 0;
        for entry in std::fs::read_dir(dir).expect("proto/released") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "binpb") {
                continue;
            }
            images += 1;
            let image = std::fs::read(&path).expect("image");
            let released = rest_from(&image);
            assert!(!released.routes().is_empty(), "{}", path.display());
            for route in released.routes() {
                let concrete = route.path().replace(['{', '}'], "");
                let found = current.find(&route.verb, &concrete).ok().map(|(r, _)| r);
                assert_eq!(
                    found.map(|r| r.method.full_name()),
                    Some(route.method.full_name()),
                    "{}: {} {} is no longer served",
                    path.display(),
                    route.verb,
                    route.path()
                );
            }
        }
        assert!(images > 0, "no released image in {dir}");
    }

    #[tokio::test]
    async fn schemas_follow_the_json_the_transcoder_writes() {
        let doc = document(&rest());
        let schemas = &doc["components"]["schemas"];
        let reservation = &schemas["parking.v1.TicketReservation"];
        assert_eq!(reservation["properties"]["memberId"]["format"], "int64");
        assert_eq!(
            reservation["properties"]["state"]["$ref"],
            "#/components/schemas/parking.v1.ReservationState"
        );
        assert_eq!(
            schemas["parking.v1.ReservationState"]["enum"],
            json!([
                "RESERVATION_STATE_UNSPECIFIED",
                "REQUESTED",
                "CONFIRMED",
                "REJECTED",
                "CANCELED"
            ])
        );
        // Answered: every field is written.
        assert_eq!(
            reservation["required"],
            json!(["id", "memberId", "reservationDate", "state", "requestId"])
        );
        let booking = &schemas["parking.v1.EveningBooking"]["properties"];
        assert_eq!(
            booking["bookedAt"],
            json!({"type": "string", "format": "date-time"})
        );
        assert_eq!(
            schemas["parking.v1.ListReservationsResponse"]["properties"]["reservations"],
            json!({"type": "array", "items": {"$ref": "#/components/schemas/parking.v1.TicketReservation"}})
        );
        // Requests: nothing required; GET fields are query parameters.
        assert!(schemas["parking.v1.ReserveTicketRequest"]
            .get("required")
            .is_none());
        let list = &doc["paths"]["/ticketReservations"]["get"]["parameters"];
        let names: Vec<_> = (0..3).map(|i| list[i]["name"].clone()).collect();
        assert_eq!(names, ["memberId", "pageSize", "pageToken"]);
        assert!(list.get(3).is_none(), "{list}");
        // PUT /parkingLots/{date} body "*": the body is what the path leaves.
        let body = &doc["paths"]["/parkingLots/{date}"]["put"]["requestBody"]["content"]
            ["application/json"]["schema"]["properties"];
        assert_eq!(
            body,
            &json!({"capacity": {"type": "integer", "format": "int32"}})
        );
        assert_eq!(
            doc["paths"]["/ticketReservations"]["post"]["operationId"],
            "TicketReservationService_ReserveTicket"
        );
        assert_eq!(
            doc["paths"]["/parkingLots"]["get"]["operationId"],
            "ParkingLotService_GetDailyAvailability2"
        );
        assert_eq!(doc["info"]["version"], CONTRACT_VERSION.trim());
        assert_eq!(
            schemas[ERROR]["properties"]["error"]["properties"]["status"]["enum"][5],
            "NOT_FOUND"
        );
    }
}
