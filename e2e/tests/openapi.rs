//! The gateway's OpenAPI document against the gateway itself: fetched from
//! `GET /openapi.json` (no token: it is the public contract), every operation in it is
//! called for real, shaped by the document (path parameters filled, query parameters and
//! bodies from its schemas, a token attached), and must be routed by the transcoder (any
//! answer but its own 404 "no route" or 405). Every answer's body must fit the schema the
//! document gives it (the operation's 200 schema, or the error schema), checked by a JSON
//! Schema 2020-12 validator.
#![allow(clippy::unwrap_used)]

use parking_e2e::{day, eventually, free_port, login, Backend, Cluster};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// One REST call: HTTP status and JSON answer.
async fn call(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut request = http::Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = if body.is_null() {
        Vec::new()
    } else {
        request = request.header("content-type", "application/json");
        body.to_string().into_bytes()
    };
    let (status, _, answer) = parking_e2e::http(port, request, body).await;
    let json = serde_json::from_slice(&answer)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer).into_owned()));
    (status.as_u16(), json)
}

/// Whether the transcoder itself turned the request away as unrouted (not a backend's
/// NOT_FOUND, which says what was not found).
fn unrouted(status: u16, answer: &Value) -> bool {
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    status == 405 || (status == 404 && message.starts_with("no route for"))
}

/// A validator for `schema` within the document (its `$ref`s point into components).
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["components"] = doc["components"].clone();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema {schema}: {e}"))
}

/// The document's schema with one `$ref` followed.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap(),
        None => schema,
    }
}

/// A value for the request field `name` of `schema`: meaningful for the fields the
/// scenario knows, the simplest of its type otherwise.
fn sample(doc: &Value, name: &str, schema: &Value, reservation_id: i64) -> Value {
    let schema = resolve(doc, schema);
    if let Some(values) = schema["enum"].as_array() {
        // The first value after *_UNSPECIFIED.
        return values.get(1).unwrap_or(&values[0]).clone();
    }
    match name {
        "memberId" => return json!(3117),
        "id" | "reservationId" => return json!(reservation_id),
        "capacity" => return json!(5),
        "pageSize" | "days" => return json!(3),
        // The first page.
        "pageToken" => return json!(""),
        _ if name.to_ascii_lowercase().ends_with("date") => return json!(day(7)),
        _ => {}
    }
    let types = match &schema["type"] {
        Value::Array(types) => types.clone(),
        one => vec![one.clone()],
    };
    if types.contains(&json!("integer")) {
        json!(1)
    } else if types.contains(&json!("boolean")) {
        json!(false)
    } else {
        json!(format!("openapi-{name}"))
    }
}

struct Shaped {
    path: String,
    body: Value,
}

/// The request `op` describes at `template`.
fn shape(doc: &Value, template: &str, op: &Value, reservation_id: i64) -> Shaped {
    let mut path = template.to_owned();
    let mut query = Vec::new();
    for p in op["parameters"].as_array().cloned().unwrap_or_default() {
        let name = p["name"].as_str().unwrap();
        let value = sample(doc, name, &p["schema"], reservation_id);
        let text = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned);
        match p["in"].as_str().unwrap() {
            "path" => path = path.replace(&format!("{{{name}}}"), &text),
            "query" if text.is_empty() => {}
            "query" => query.push((name.to_owned(), text)),
            other => panic!("parameter in {other}"),
        }
    }
    if !query.is_empty() {
        path = format!("{path}?{}", serde_urlencoded::to_string(&query).unwrap());
    }
    let body = match op["requestBody"]["content"]["application/json"]["schema"].as_object() {
        Some(_) => {
            let schema = resolve(
                doc,
                &op["requestBody"]["content"]["application/json"]["schema"],
            );
            let fields = schema["properties"].as_object().unwrap();
            Value::Object(
                fields
                    .iter()
                    .map(|(name, s)| (name.clone(), sample(doc, name, s, reservation_id)))
                    .collect(),
            )
        }
        None => Value::Null,
    };
    Shaped { path, body }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_answers_as_documented() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    // No community service in this cluster: its calls must still be routed (and answered
    // UNAVAILABLE by the gateway, in the documented error shape).
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let port = c.start_gateway_with(&[("COMMUNITY_URL", &nowhere)]).await;

    let (status, doc) = call(port, "GET", "/openapi.json", None, &Value::Null).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["openapi"], "3.1.0");

    // The detector of unrouted requests detects them.
    let (status, answer) = call(port, "GET", "/noSuchRoute", None, &Value::Null).await;
    assert!(unrouted(status, &answer), "{status} {answer}");
    let (status, answer) = call(port, "PATCH", "/ticketReservations", None, &Value::Null).await;
    assert!(unrouted(status, &answer), "{status} {answer}");

    let tokens = [
        login(port, "3117").await,
        login(port, "admin").await,
        login(port, "manager").await,
        login(port, "rosa").await,
    ];

    // A reservation for the operations that name one, made through the document too.
    let reserve = &doc["paths"]["/ticketReservations"]["post"];
    let shaped = shape(&doc, "/ticketReservations", reserve, 0);
    let (status, made) = call(port, "POST", &shaped.path, Some(&tokens[0]), &shaped.body).await;
    assert_eq!(status, 200, "{made}");
    let reservation_id = made["id"].as_i64().unwrap();
    // The status view follows events: wait until it has the reservation.
    let status_path = format!("/reservationStatuses/{reservation_id}");
    let employee = tokens[0].clone();
    eventually(Duration::from_secs(30), "the status view has it", || {
        let (path, token) = (status_path.clone(), employee.clone());
        async move {
            (call(port, "GET", &path, Some(&token), &Value::Null).await.0 == 200).then_some(())
        }
    })
    .await;

    // Deletions last, so the reads still find the reservation.
    let mut operations = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (verb, op) in item.as_object().unwrap() {
            operations.push((
                verb == "delete",
                verb.to_ascii_uppercase(),
                template.clone(),
                op,
            ));
        }
    }
    operations.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
    assert_eq!(operations.len(), 16, "the document's operations");

    let error_validator = validator(&doc, &json!({"$ref": "#/components/schemas/Error"}));
    let mut answered_ok = BTreeSet::new();
    for (_, verb, template, op) in &operations {
        let id = op["operationId"].as_str().unwrap();
        let shaped = shape(&doc, template, op, reservation_id);
        // The first role the backend does not turn away.
        let mut answer = (0, Value::Null);
        for token in &tokens {
            answer = call(port, verb, &shaped.path, Some(token), &shaped.body).await;
            if answer.0 != 401 && answer.0 != 403 {
                break;
            }
        }
        let (status, body) = answer;
        assert!(
            !unrouted(status, &body),
            "{id}: {verb} {} was not routed: {status} {body}",
            shaped.path
        );
        let schema = if status == 200 {
            answered_ok.insert(id.to_owned());
            validator(
                &doc,
                &op["responses"]["200"]["content"]["application/json"]["schema"],
            )
        } else {
            validator(&doc, &json!({"$ref": "#/components/schemas/Error"}))
        };
        let errors: Vec<String> = schema.iter_errors(&body).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{id}: {status} {body}: {errors:#?}");
        eprintln!("{id}: {verb} {} -> {status}", shaped.path);
    }
    // Real answers of each kind were checked against their schemas.
    for id in [
        "TicketReservationService_ReserveTicket",
        "TicketReservationService_GetReservation",
        "TicketReservationService_ListReservations",
        "TicketReservationService_CancelReservation",
        "ParkingLotService_GetDailyAvailability",
        "ParkingLotService_GetDailyAvailability2",
        "ParkingLotService_SetDailyCapacity",
        "ReservationStatusService_GetReservationStatus",
        "ReservationStatusService_ListReservationStatuses",
        "TicketDeliveryService_ListDeliveries",
    ] {
        assert!(
            answered_ok.contains(id),
            "{id} never answered 200: {answered_ok:?}"
        );
    }

    // The schemas can fail: a reservation with a state that does not exist, a date that is
    // no date-time, a missing field.
    let reservation = validator(
        &doc,
        &json!({"$ref": "#/components/schemas/parking.v1.TicketReservation"}),
    );
    assert!(reservation.is_valid(&made));
    for bad in [
        json!({"id": 1, "memberId": 3117, "reservationDate": "2026-12-01", "state": "BOOKED", "requestId": ""}),
        json!({"id": "one", "memberId": 3117, "reservationDate": "2026-12-01", "state": "REQUESTED", "requestId": ""}),
        json!({"memberId": 3117, "reservationDate": "2026-12-01", "state": "REQUESTED", "requestId": ""}),
    ] {
        assert!(!reservation.is_valid(&bad), "{bad}");
    }
    let booking = validator(
        &doc,
        &json!({"$ref": "#/components/schemas/parking.v1.EveningBooking"}),
    );
    assert!(!booking.is_valid(
        &json!({"bookingId": "b", "resident": "rosa", "date": "2026-12-01",
        "state": "EVENING_BOOKING_STATE_CONFIRMED", "bookedAt": "yesterday"})
    ));
    assert!(!error_validator
        .is_valid(&json!({"error": {"code": 404, "status": "GONE", "message": ""}})));
}
