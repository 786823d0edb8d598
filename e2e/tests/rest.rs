//! REST/JSON through the gateway, transcoded from the protos' google.api.http annotations:
//! the seed's own calls (its httpie commands' routes and camelCase fields) for the whole
//! scenario, and every kind of bad request answered as JSON with the right HTTP status.
#![allow(clippy::unwrap_used)]

use parking_e2e::{day, eventually, login, yesterday, Backend, Cluster};
use serde_json::{json, Value};
use std::time::Duration;

/// One REST call: HTTP status, headers, JSON answer.
async fn rest(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: impl Into<bytes::Bytes>,
) -> (u16, http::HeaderMap, Value) {
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let (status, headers, body) = parking_e2e::http(port, request, body).await;
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status.as_u16(), headers, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenario_over_rest() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let port = c.start_gateway().await;
    let (employee, other, manager, admin) = (
        login(port, "3117").await,
        login(port, "6").await,
        login(port, "manager").await,
        login(port, "admin").await,
    );
    let (e, m, a) = (
        Some(employee.as_str()),
        Some(manager.as_str()),
        Some(admin.as_str()),
    );
    let date = day(7);

    let (code, _, lot) = rest(
        port,
        "PUT",
        &format!("/parkingLots/{date}"),
        a,
        json!({"capacity": 2}).to_string(),
    )
    .await;
    assert_eq!((code, lot["capacity"].as_i64()), (200, Some(2)), "{lot}");

    // The seed's command: http POST :8080/ticketReservations memberId=3117 reservationDate=...
    let body = json!({"memberId": 3117, "reservationDate": date}).to_string();
    let (code, _, r) = rest(port, "POST", "/ticketReservations", e, body.clone()).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["memberId"], 3117, "64-bit numbers stay JSON numbers: {r}");
    assert_eq!(r["reservationDate"], date.as_str());
    assert_eq!(r["state"], "REQUESTED");
    let id = r["id"].as_i64().unwrap();
    // The seed's load test sent the member id as a string; proto3 JSON takes both.
    let (code, _, r6) = rest(
        port,
        "POST",
        "/ticketReservations",
        Some(&other),
        json!({"memberId": "6", "reservationDate": date}).to_string(),
    )
    .await;
    assert_eq!(code, 200, "{r6}");

    let status = eventually(
        Duration::from_secs(30),
        "delivery requested over REST",
        || async move {
            let (code, _, s) =
                rest(port, "GET", &format!("/reservationStatuses/{id}"), e, "").await;
            // Events of different streams arrive in any order: wait for all three.
            let seen = s["history"].as_array().map_or(0, Vec::len);
            (code == 200 && s["stage"] == "STAGE_DELIVERY_REQUESTED" && seen >= 3).then_some(s)
        },
    )
    .await;
    assert_eq!(status["reservationId"], id);
    assert!(status["history"].as_array().unwrap().len() >= 3, "{status}");
    // The seed's query form.
    let (code, _, same) = rest(
        port,
        "GET",
        &format!("/reservationStatuses/reservationID?id={id}"),
        e,
        "",
    )
    .await;
    assert_eq!((code, &same["reservationId"]), (200, &json!(id)), "{same}");

    // Paged list: the manager sees both, one per page.
    let (code, _, page) = rest(port, "GET", "/reservationStatuses?pageSize=1", m, "").await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["statuses"].as_array().unwrap().len(), 1);
    let token = page["nextPageToken"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    let (_, _, next) = rest(
        port,
        "GET",
        &format!("/reservationStatuses?pageSize=1&pageToken={token}"),
        m,
        "",
    )
    .await;
    assert_ne!(
        next["statuses"][0]["reservationId"],
        page["statuses"][0]["reservationId"]
    );
    // The employee's list holds their own only.
    let (_, _, mine) = rest(port, "GET", "/reservationStatuses", e, "").await;
    let mine = mine["statuses"].as_array().unwrap().clone();
    assert!(
        !mine.is_empty() && mine.iter().all(|s| s["memberId"] == 3117),
        "{mine:?}"
    );

    let (code, _, list) = rest(
        port,
        "GET",
        &format!("/ticketDeliveries?reservationDate={date}"),
        m,
        "",
    )
    .await;
    assert_eq!(code, 200, "{list}");
    let delivery = list["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["reservationId"] == id)
        .cloned()
        .unwrap();
    let (code, _, shipped) = rest(
        port,
        "POST",
        &format!("/ticketDeliveries/{}/ship", delivery["id"]),
        m,
        "",
    )
    .await;
    assert_eq!(
        (code, shipped["state"].as_str()),
        (200, Some("DELIVERY_SHIPPED")),
        "{shipped}"
    );

    let (code, _, got) = rest(port, "GET", &format!("/ticketReservations/{id}"), e, "").await;
    assert_eq!(
        (code, got["state"].as_str()),
        (200, Some("CONFIRMED")),
        "{got}"
    );
    let (code, _, lots) = rest(port, "GET", &format!("/parkingLots?date={date}"), e, "").await;
    assert_eq!((code, lots["occupied"].as_i64()), (200, Some(2)), "{lots}");

    // Cancel: the space is freed once the delivery is cancelled.
    let (code, _, cancelled) =
        rest(port, "DELETE", &format!("/ticketReservations/{id}"), e, "").await;
    assert_eq!(
        (code, cancelled["state"].as_str()),
        (200, Some("CANCELED")),
        "{cancelled}"
    );
    eventually(Duration::from_secs(30), "vacated", || async move {
        let (_, _, s) = rest(port, "GET", &format!("/reservationStatuses/{id}"), e, "").await;
        (s["stage"] == "STAGE_VACATED").then_some(())
    })
    .await;
    let (_, _, lots) = rest(port, "GET", &format!("/parkingLots/{date}"), e, "").await;
    assert_eq!(lots["occupied"].as_i64(), Some(1), "{lots}");

    // Errors keep their meaning: a member holds one ticket a day, past dates refused.
    let (code, _, err) = rest(
        port,
        "POST",
        "/ticketReservations",
        Some(&other),
        json!({"memberId": 6, "reservationDate": date}).to_string(),
    )
    .await;
    assert_eq!(
        (code, err["error"]["status"].as_str()),
        (409, Some("ALREADY_EXISTS")),
        "{err}"
    );
    let (code, _, err) = rest(
        port,
        "POST",
        "/ticketReservations",
        e,
        json!({"memberId": 3117, "reservationDate": yesterday()}).to_string(),
    )
    .await;
    assert_eq!(
        (code, err["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{err}"
    );
    assert!(
        err["error"]["message"].as_str().unwrap().contains("past"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rest_requests_get_json_errors_and_change_nothing() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let port = c
        .start_gateway_with(&[
            ("REST_MAX_BODY", "1024"),
            ("RATE_LIMIT_PER_SUBJECT", "10"),
            ("RATE_LIMIT_SUBJECT_BURST", "60"),
        ])
        .await;
    let employee = login(port, "3117").await;
    let e = Some(employee.as_str());
    let date = day(8);
    let reserve = json!({"memberId": 3117, "reservationDate": date}).to_string();

    let lot = format!("/parkingLots/{date}");
    // (method, path, token, body, HTTP status, gRPC status name)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/ticketReservations",
            None,
            reserve.clone(),
            401,
            "UNAUTHENTICATED",
        ),
        (
            "POST",
            "/ticketReservations",
            e,
            json!({"memberId": 6, "reservationDate": date}).to_string(),
            403,
            "PERMISSION_DENIED",
        ),
        (
            "PUT",
            &lot,
            e,
            json!({"capacity": 9}).to_string(),
            403,
            "PERMISSION_DENIED",
        ),
        (
            "POST",
            "/ticketReservations",
            e,
            "{\"memberId\": 3117, ".into(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "POST",
            "/ticketReservations",
            e,
            "[1, 2]".into(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "POST",
            "/ticketReservations",
            e,
            json!({"memberId": 3117, "reservationDate": date, "vip": true}).to_string(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "POST",
            "/ticketReservations",
            e,
            json!({"memberId": 3117, "reservationDate": date, "pad": "x".repeat(2000)}).to_string(),
            413,
            "INVALID_ARGUMENT",
        ),
        (
            "GET",
            "/ticketReservations/abc",
            e,
            String::new(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "GET",
            "/ticketReservations?color=red",
            e,
            String::new(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "GET",
            "/ticketReservations/999999",
            e,
            String::new(),
            404,
            "NOT_FOUND",
        ),
        ("GET", "/no/such/route", e, String::new(), 404, "NOT_FOUND"),
        (
            "GET",
            "/ticketReservations/5?id=6",
            e,
            String::new(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "GET",
            "/ticketReservations?pageSize=1&pageSize=2",
            e,
            String::new(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "POST",
            "/ticketReservations",
            e,
            json!({"memberId": 3117, "member_id": 6, "reservationDate": date}).to_string(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "PATCH",
            "/ticketReservations",
            e,
            String::new(),
            405,
            "UNIMPLEMENTED",
        ),
    ];
    for (method, path, token, body, want, status) in cases {
        let (code, headers, err) = rest(port, method, path, token, body).await;
        assert_eq!(code, want, "{method} {path}: {err}");
        assert_eq!(err["error"]["status"], status, "{method} {path}: {err}");
        assert_eq!(err["error"]["code"], want, "{err}");
        assert!(
            !err["error"]["message"].as_str().unwrap().is_empty(),
            "{err}"
        );
        assert_eq!(headers["content-type"], "application/json");
        if want == 401 {
            assert!(headers.contains_key("www-authenticate"));
        }
    }
    let reservations = c
        .reservation()
        .await
        .list_reservations(parking_proto::v1::ListReservationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .reservations;
    let capacity = c
        .parking_lot()
        .await
        .get_daily_availability(parking_proto::v1::GetDailyAvailabilityRequest {
            date: date.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .capacity;
    assert_ne!(capacity, 9, "the refused PUT changed nothing");
    assert!(
        reservations.is_empty(),
        "no bad request stored anything: {reservations:?}"
    );

    // A burst over the user's limit: 429 with Retry-After, as JSON.
    let calls = (0..90).map(|_| rest(port, "GET", "/ticketReservations", e, ""));
    let answers = futures::future::join_all(calls).await;
    let limited: Vec<_> = answers.iter().filter(|(code, _, _)| *code == 429).collect();
    assert!(!limited.is_empty(), "no 429 in a burst of 90 against 60");
    assert!(answers.iter().any(|(code, _, _)| *code == 200));
    let (_, headers, err) = limited[0];
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert_eq!(err["error"]["status"], "RESOURCE_EXHAUSTED");

    // A gRPC call to a method nobody serves is still answered in gRPC.
    let (code, headers, _) = parking_e2e::http(
        port,
        http::Request::post("/parking.v1.Nothing/Here").header("content-type", "application/grpc"),
        "",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(headers["grpc-status"], "12", "{headers:?}");
}
