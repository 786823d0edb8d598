//! The gateway's door and the backends' rules, attacked through the gateway only: every
//! refusal has the right code, and afterwards the data is exactly as it was (read straight
//! from the backends with an operator's token). The backends attacked directly, with no
//! gateway in the way: tests/zero_trust.rs.
#![allow(clippy::unwrap_used)]

use base64::Engine;
use gateway::tokens::Claims;
use parking_common::identity::Role;
use parking_e2e::{day, eventually, gateway_as, login, reserve, with_token, Backend, Cluster, Svc};
use parking_proto::v1 as pb;
use std::time::Duration;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, role: Role) -> Claims {
    Claims {
        iss: "parking-mesh".into(),
        aud: "parking-mesh".into(),
        sub: sub.into(),
        role,
        iat: now(),
        exp: now() + 300,
    }
}

/// Asserts a call was refused with PERMISSION_DENIED.
fn denied<T>(answer: Result<T, tonic::Status>, what: &str) {
    match answer {
        Ok(_) => panic!("{what}: allowed"),
        Err(err) => assert_eq!(err.code(), tonic::Code::PermissionDenied, "{what}: {err:?}"),
    }
}

/// Everything the attacks could have changed, read straight from the backends.
#[derive(Debug, PartialEq)]
struct Snapshot {
    reservations: Vec<(i64, i64, i32)>,
    capacity: i32,
    deliveries: Vec<(i64, i32)>,
}

async fn snapshot(c: &Cluster, date: &str) -> Snapshot {
    let reservations = c
        .reservation()
        .await
        .list_reservations(pb::ListReservationsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reservations
        .into_iter()
        .map(|r| (r.id, r.member_id, r.state))
        .collect();
    let capacity = c
        .parking_lot()
        .await
        .get_daily_availability(pb::GetDailyAvailabilityRequest { date: date.into() })
        .await
        .unwrap()
        .into_inner()
        .capacity;
    let deliveries = c
        .delivery()
        .await
        .list_deliveries(pb::ListDeliveriesRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries
        .into_iter()
        .map(|d| (d.id, d.state))
        .collect();
    Snapshot {
        reservations,
        capacity,
        deliveries,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_misaddressed_tokens_are_refused_without_effect() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let port = c.start_gateway().await;
    let date = day(5);
    let before = snapshot(&c, &date).await;
    let key = c.gateway_tokens();
    let genuine = login(port, "3117").await;
    let parts: Vec<&str> = genuine.split('.').collect();

    let mut payload: serde_json::Value =
        serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    payload["role"] = "admin".into();
    let raised = B64.encode(serde_json::to_vec(&payload).unwrap());
    let other_key = gateway::tokens::Tokens::ephemeral(
        "parking-mesh",
        "parking-mesh",
        Duration::from_secs(300),
    )
    .unwrap();
    let attacks: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("garbage", Some("not.a.token".into())),
        (
            "expired",
            Some(
                key.sign(&Claims {
                    iat: now() - 3600,
                    exp: now() - 600,
                    ..claims("admin", Role::Admin)
                })
                .unwrap(),
            ),
        ),
        (
            "signed by another key",
            Some(other_key.issue("admin", Role::Admin).unwrap()),
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
                raised
            )),
        ),
        (
            "wrong audience",
            Some(
                key.sign(&Claims {
                    aud: "another-app".into(),
                    ..claims("admin", Role::Admin)
                })
                .unwrap(),
            ),
        ),
        (
            "wrong issuer",
            Some(
                key.sign(&Claims {
                    iss: "https://evil.example".into(),
                    ..claims("admin", Role::Admin)
                })
                .unwrap(),
            ),
        ),
        (
            "tampered payload",
            Some(format!("{}.{}.{}", parts[0], raised, parts[2])),
        ),
    ];
    for (attack, token) in attacks {
        let gw = with_token(port, token.as_deref()).await;
        let err = pb::parking_lot_service_client::ParkingLotServiceClient::new(gw.clone())
            .set_daily_capacity(pb::SetDailyCapacityRequest {
                date: date.clone(),
                capacity: 99,
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::Unauthenticated,
            "{attack}: {err:?}"
        );
        let err = pb::ticket_reservation_service_client::TicketReservationServiceClient::new(gw)
            .reserve_ticket(reserve(3117, &date))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::Unauthenticated,
            "{attack}: {err:?}"
        );
    }
    // The genuine token still works, and a token this test signed with the gateway's key.
    for token in [genuine.clone(), key.issue("admin", Role::Admin).unwrap()] {
        pb::parking_lot_service_client::ParkingLotServiceClient::new(
            with_token(port, Some(&token)).await,
        )
        .get_daily_availability(pb::GetDailyAvailabilityRequest { date: date.clone() })
        .await
        .unwrap();
    }
    assert_eq!(snapshot(&c, &date).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_ownership_are_enforced_and_forged_identity_headers_do_nothing() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let port = c.start_gateway().await;
    let date = day(6);
    let (me, other, manager) = (
        gateway_as(port, "3117").await,
        gateway_as(port, "6").await,
        gateway_as(port, "manager").await,
    );
    let reservations =
        pb::ticket_reservation_service_client::TicketReservationServiceClient::new(me.clone());
    let theirs = pb::ticket_reservation_service_client::TicketReservationServiceClient::new(other)
        .reserve_ticket(reserve(6, &date))
        .await
        .unwrap()
        .into_inner();
    // Wait for member 6's delivery order so there is something to ship.
    let delivery = eventually(Duration::from_secs(30), "a delivery for member 6", || {
        let c = &c;
        async move {
            c.delivery()
                .await
                .list_deliveries(pb::ListDeliveriesRequest::default())
                .await
                .ok()?
                .into_inner()
                .deliveries
                .into_iter()
                .next()
        }
    })
    .await;
    let before = snapshot(&c, &date).await;

    let mut r = reservations.clone();
    denied(
        r.reserve_ticket(reserve(6, &date)).await,
        "reserve for another member",
    );
    denied(
        r.cancel_reservation(pb::CancelReservationRequest { id: theirs.id })
            .await,
        "cancel another member's reservation",
    );
    denied(
        r.get_reservation(pb::GetReservationRequest { id: theirs.id })
            .await,
        "read another member's reservation",
    );
    denied(
        r.list_reservations(pb::ListReservationsRequest {
            member_id: 6,
            ..Default::default()
        })
        .await,
        "list another member's reservations",
    );
    let mut status =
        pb::reservation_status_service_client::ReservationStatusServiceClient::new(me.clone());
    denied(
        status
            .get_reservation_status(pb::GetReservationStatusRequest {
                reservation_id: theirs.id,
                ..Default::default()
            })
            .await,
        "another member's status",
    );
    let mut watch = status
        .watch_reservation_status(pb::WatchReservationStatusRequest {
            reservation_id: theirs.id,
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut watch),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        first.unwrap_err().code(),
        tonic::Code::PermissionDenied,
        "watching another member's status"
    );
    let mut deliveries =
        pb::ticket_delivery_service_client::TicketDeliveryServiceClient::new(me.clone());
    denied(
        deliveries
            .ship_ticket(pb::ShipTicketRequest {
                delivery_id: delivery.id,
            })
            .await,
        "employee ships",
    );
    denied(
        deliveries
            .list_deliveries(pb::ListDeliveriesRequest::default())
            .await,
        "employee reads the work list",
    );
    let mut lot = pb::parking_lot_service_client::ParkingLotServiceClient::new(me.clone());
    denied(
        lot.set_daily_capacity(pb::SetDailyCapacityRequest {
            date: date.clone(),
            capacity: 99,
        })
        .await,
        "employee sets capacity",
    );
    denied(
        pb::parking_lot_service_client::ParkingLotServiceClient::new(manager.clone())
            .set_daily_capacity(pb::SetDailyCapacityRequest {
                date: date.clone(),
                capacity: 99,
            })
            .await,
        "manager sets capacity",
    );

    // Identity headers sent by the caller are dropped: the token decides.
    let forged = |msg| {
        let mut request = tonic::Request::new(msg);
        request
            .metadata_mut()
            .insert("x-parking-subject", "admin".parse().unwrap());
        request
            .metadata_mut()
            .insert("x-parking-role", "admin".parse().unwrap());
        request
    };
    denied(
        lot.set_daily_capacity(forged(pb::SetDailyCapacityRequest {
            date: date.clone(),
            capacity: 99,
        }))
        .await,
        "employee with forged admin headers",
    );
    let err =
        pb::parking_lot_service_client::ParkingLotServiceClient::new(with_token(port, None).await)
            .set_daily_capacity(forged(pb::SetDailyCapacityRequest {
                date: date.clone(),
                capacity: 99,
            }))
            .await
            .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    assert_eq!(snapshot(&c, &date).await, before);

    // What each role may do still works: the employee sees only their own in a list,
    // the manager sees all and ships.
    let mine = reservations
        .clone()
        .list_reservations(pb::ListReservationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .reservations;
    assert!(mine.iter().all(|r| r.member_id == 3117), "{mine:?}");
    let all =
        pb::reservation_status_service_client::ReservationStatusServiceClient::new(manager.clone())
            .list_reservation_statuses(pb::ListReservationStatusesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .statuses;
    assert!(all.iter().any(|s| s.member_id == 6), "{all:?}");
    pb::ticket_delivery_service_client::TicketDeliveryServiceClient::new(manager)
        .ship_ticket(pb::ShipTicketRequest {
            delivery_id: delivery.id,
        })
        .await
        .unwrap();
    c.stop_service(Svc::Delivery).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoint_refuses_wrong_passwords_and_bad_requests() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let port = c.start_gateway().await;
    let form = |pairs: &[(&str, &str)]| serde_urlencoded::to_string(pairs).unwrap();
    let post = |body: String, content_type: &'static str| async move {
        let (status, headers, body) = parking_e2e::http(
            port,
            http::Request::post("/oauth2/token").header("content-type", content_type),
            body,
        )
        .await;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        (status.as_u16(), headers, json)
    };
    const FORM: &str = "application/x-www-form-urlencoded";
    let (status, headers, answer) = post(
        form(&[
            ("grant_type", "password"),
            ("username", "3117"),
            ("password", "wrong"),
        ]),
        FORM,
    )
    .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(headers["cache-control"], "no-store");
    // An unknown user gets the very same answer (and takes the same argon2 time).
    let (status, _, unknown) = post(
        form(&[
            ("grant_type", "password"),
            ("username", "nobody"),
            ("password", "wrong"),
        ]),
        FORM,
    )
    .await;
    assert_eq!((status, &unknown), (400, &answer));
    let (status, _, answer) = post(form(&[("grant_type", "magic")]), FORM).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (status, _, answer) = post("{}".into(), "application/json").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, headers, answer) = post(
        form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "ops-bot"),
            ("client_secret", "wrong"),
        ]),
        FORM,
    )
    .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert!(headers.contains_key("www-authenticate"));
    let (status, _, answer) = post("x".repeat(64 * 1024), FORM).await;
    assert_eq!(status, 413, "{answer}");

    // client_credentials with HTTP Basic: a manager's token for a program.
    let basic = basic("ops-bot");
    let (status, _, body) = parking_e2e::http(
        port,
        http::Request::post("/oauth2/token")
            .header("content-type", FORM)
            .header("authorization", basic),
        form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let token: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let list = pb::ticket_delivery_service_client::TicketDeliveryServiceClient::new(
        with_token(port, token["access_token"].as_str()).await,
    )
    .list_deliveries(pb::ListDeliveriesRequest::default())
    .await;
    assert!(list.is_ok(), "{list:?}");

    // The public key, and nothing private, at the well-known address.
    let (status, _, body) =
        parking_e2e::http(port, http::Request::get("/.well-known/jwks.json"), "").await;
    assert_eq!(status, 200);
    let jwks: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    assert!(jwks["keys"][0].get("d").is_none());
}

/// HTTP Basic credentials of a test client.
fn basic(client: &str) -> String {
    let secret = parking_e2e::password_of(client);
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{client}:{secret}"));
    format!("Basic {encoded}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_grpc_message_is_refused_and_stores_nothing() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let port = c.start_gateway().await;
    let date = day(5);
    let mut request = reserve(3117, &date);
    // Over tonic's 4 MiB message limit.
    request.request_id = "x".repeat(5 * 1024 * 1024);
    let err = pb::ticket_reservation_service_client::TicketReservationServiceClient::new(
        gateway_as(port, "3117").await,
    )
    .reserve_ticket(request)
    .await
    .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument
        ),
        "{err:?}"
    );
    assert!(snapshot(&c, &date).await.reservations.is_empty());
}
