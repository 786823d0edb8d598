//! Zero trust between services: the backends attacked straight on their own ports, as
//! anyone on the network could (no gateway in the way). Every call needs a token the
//! backend verifies itself against the gateway's published keys; the role in it decides
//! the rest. Afterwards nothing has changed: no row, no event.
//!
//! And key rotation: while calls flow through the gateway and straight to the backends,
//! the gateway's key file goes from [old] to [old, new] to [new, old]: no call is refused,
//! and the backends learn the new key the first time a token names it.
#![allow(clippy::unwrap_used)]

use gateway::tokens::Claims;
use parking_common::identity::Role;
use parking_e2e::{
    day, eventually, login, reserve, wait_healthy, with_token, AuthChannel, Backend, Cluster, Svc,
    SERVICE_CLIENT,
};
use parking_proto::v1 as pb;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pb::parking_lot_service_client::ParkingLotServiceClient as Lot;
use pb::reservation_status_service_client::ReservationStatusServiceClient as Status;
use pb::ticket_delivery_service_client::TicketDeliveryServiceClient as Delivery;
use pb::ticket_reservation_service_client::TicketReservationServiceClient as Reservations;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Every kind of call a caller without the right could try, one per backend method that
/// changes or reveals something. Each answers the code it got.
async fn attack(channel: impl Fn(Svc) -> AuthChannel, victim: i64) -> Vec<(String, tonic::Code)> {
    let date = day(4);
    let mut codes = Vec::new();
    let mut note = |what: &str, answer: Result<(), tonic::Status>| {
        codes.push((
            what.to_owned(),
            answer.err().map(|s| s.code()).unwrap_or(tonic::Code::Ok),
        ))
    };
    let mut reservations = Reservations::new(channel(Svc::Reservation));
    note(
        "ReserveTicket",
        reservations
            .reserve_ticket(reserve(victim, &date))
            .await
            .map(drop),
    );
    note(
        "CancelReservation",
        reservations
            .cancel_reservation(pb::CancelReservationRequest { id: 1 })
            .await
            .map(drop),
    );
    note(
        "GetReservation",
        reservations
            .get_reservation(pb::GetReservationRequest { id: 1 })
            .await
            .map(drop),
    );
    note(
        "ListReservations",
        reservations
            .list_reservations(pb::ListReservationsRequest {
                member_id: victim,
                ..Default::default()
            })
            .await
            .map(drop),
    );
    let mut lot = Lot::new(channel(Svc::ParkingLot));
    note(
        "GetDailyAvailability",
        lot.get_daily_availability(pb::GetDailyAvailabilityRequest { date: date.clone() })
            .await
            .map(drop),
    );
    note(
        "SetDailyCapacity",
        lot.set_daily_capacity(pb::SetDailyCapacityRequest {
            date: date.clone(),
            capacity: 99,
        })
        .await
        .map(drop),
    );
    let mut delivery = Delivery::new(channel(Svc::Delivery));
    note(
        "ListDeliveries",
        delivery
            .list_deliveries(pb::ListDeliveriesRequest::default())
            .await
            .map(drop),
    );
    note(
        "ShipTicket",
        delivery
            .ship_ticket(pb::ShipTicketRequest { delivery_id: 1 })
            .await
            .map(drop),
    );
    note(
        "CancelDelivery",
        delivery
            .cancel_delivery(pb::CancelDeliveryRequest { reservation_id: 1 })
            .await
            .map(drop),
    );
    let mut status = Status::new(channel(Svc::Status));
    note(
        "GetReservationStatus",
        status
            .get_reservation_status(pb::GetReservationStatusRequest {
                reservation_id: 1,
                ..Default::default()
            })
            .await
            .map(drop),
    );
    // A refusal may come with the response headers or as the stream's first message.
    let watched = match status
        .watch_reservation_status(pb::WatchReservationStatusRequest { reservation_id: 1 })
        .await
    {
        Ok(stream) => stream.into_inner().message().await.map(drop),
        Err(refused) => Err(refused),
    };
    note("WatchReservationStatus", watched);
    note(
        "ListReservationStatuses",
        status
            .list_reservation_statuses(pb::ListReservationStatusesRequest {
                member_id: victim,
                ..Default::default()
            })
            .await
            .map(drop),
    );
    codes
}

/// What the attacks could have changed: every stream's events, the day's capacity, the
/// first reservation and its delivery.
async fn state(c: &Cluster) -> (Vec<usize>, i32, i32, i32) {
    let mut events = Vec::new();
    for context in ["reservation", "parkinglot", "delivery"] {
        events.push(c.events(context).await.len());
    }
    let capacity = c
        .parking_lot()
        .await
        .get_daily_availability(pb::GetDailyAvailabilityRequest { date: day(4) })
        .await
        .unwrap()
        .into_inner()
        .capacity;
    let reservation = c
        .reservation()
        .await
        .get_reservation(pb::GetReservationRequest { id: 1 })
        .await
        .unwrap()
        .into_inner()
        .state;
    let delivery = c
        .delivery()
        .await
        .list_deliveries(pb::ListDeliveriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .deliveries
        .first()
        .map(|d| d.state)
        .unwrap_or_default();
    (events, capacity, reservation, delivery)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_refuse_every_call_without_a_credential_they_verify() {
    let c = Cluster::start(Backend::Sqlite).await;
    // One real application of member 6 to attack: confirmed, its delivery requested.
    let first = c
        .reservation()
        .await
        .reserve_ticket(reserve(6, &day(4)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.id, 1);
    eventually(Duration::from_secs(30), "delivery requested", || async {
        let list = c
            .delivery()
            .await
            .list_deliveries(pb::ListDeliveriesRequest::default())
            .await
            .ok()?
            .into_inner();
        (!list.deliveries.is_empty()).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "status view row", || async {
        c.status()
            .await
            .get_reservation_status(pb::GetReservationStatusRequest {
                reservation_id: 1,
                ..Default::default()
            })
            .await
            .ok()
    })
    .await;
    let before = state(&c).await;

    let key = c.gateway_tokens();
    let signed = |edit: &dyn Fn(&mut Claims)| {
        let mut claims = Claims {
            iss: "parking-mesh".into(),
            aud: "parking-mesh".into(),
            sub: "admin".into(),
            role: Role::Admin,
            iat: now(),
            exp: now() + 300,
        };
        edit(&mut claims);
        key.sign(&claims).unwrap()
    };
    let foreign = gateway::tokens::Tokens::ephemeral(
        "parking-mesh",
        "parking-mesh",
        Duration::from_secs(300),
    )
    .unwrap()
    .issue("admin", Role::Admin)
    .unwrap();
    let unauthenticated: Vec<(&str, Option<String>)> = vec![
        ("no credential", None),
        (
            "an expired admin token",
            Some(signed(&|c| {
                c.iat = now() - 600;
                c.exp = now() - 60;
            })),
        ),
        ("an admin token of a foreign key", Some(foreign)),
        (
            "an admin token for another audience",
            Some(signed(&|c| c.aud = "elsewhere".into())),
        ),
        (
            "an admin token from another issuer",
            Some(signed(&|c| c.iss = "elsewhere".into())),
        ),
        ("garbage", Some("not.a.token".into())),
    ];
    for (what, token) in unauthenticated {
        let mut channels = std::collections::HashMap::new();
        for svc in Svc::ALL {
            channels.insert(svc, with_token(c.port(svc), token.as_deref()).await);
        }
        for (call, code) in attack(|svc| channels[&svc].clone(), 6).await {
            assert_eq!(code, tonic::Code::Unauthenticated, "{call} with {what}");
        }
    }

    // Identity headers mean nothing: with no token they are refused like any other call.
    let mut forged = tonic::Request::new(pb::SetDailyCapacityRequest {
        date: day(4),
        capacity: 99,
    });
    forged
        .metadata_mut()
        .insert("x-parking-role", "admin".parse().unwrap());
    forged
        .metadata_mut()
        .insert("x-parking-subject", "admin".parse().unwrap());
    let err = Lot::new(with_token(c.port(Svc::ParkingLot), None).await)
        .set_daily_capacity(forged)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // Genuine tokens whose role does not allow the call: an employee for another member.
    let employee = c.token("3117", Role::Employee);
    let mut channels = std::collections::HashMap::new();
    for svc in Svc::ALL {
        channels.insert(svc, with_token(c.port(svc), Some(&employee)).await);
    }
    for (call, code) in attack(|svc| channels[&svc].clone(), 6).await {
        // The lot's availability is for every person signed in.
        let expected = if call == "GetDailyAvailability" {
            tonic::Code::Ok
        } else {
            tonic::Code::PermissionDenied
        };
        assert_eq!(code, expected, "{call} by employee 3117");
    }
    assert_eq!(state(&c).await, before, "nothing changed");

    // parking-lot's service identity may cancel deliveries (the cancel saga's
    // compensation) and nothing else.
    let service = c.token(&format!("client:{SERVICE_CLIENT}"), Role::Service);
    let mut channels = std::collections::HashMap::new();
    for svc in Svc::ALL {
        channels.insert(svc, with_token(c.port(svc), Some(&service)).await);
    }
    for (call, code) in attack(|svc| channels[&svc].clone(), 6).await {
        let allowed = call == "CancelDelivery";
        assert_eq!(
            code == tonic::Code::Ok,
            allowed,
            "{call} by the parking-lot service: {code:?}"
        );
        if !allowed {
            assert_eq!(code, tonic::Code::PermissionDenied, "{call} by the service");
        }
    }
    let (events, capacity, reservation, delivery) = state(&c).await;
    assert_eq!(
        (&events[..2], capacity, reservation),
        (&before.0[..2], before.1, before.2),
        "only the delivery changed"
    );
    assert_eq!(events[2], before.0[2] + 1, "one DeliveryCanceled");
    assert_eq!(delivery, pb::DeliveryState::DeliveryCanceled as i32);

    // Probes and reflection need no token.
    for svc in Svc::ALL {
        wait_healthy(c.port(svc), Duration::from_secs(2))
            .await
            .unwrap();
    }
}

/// A fresh Ed25519 key as PKCS#8 PEM.
fn new_key() -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    ed25519_dalek::SigningKey::from_bytes(&seed)
        .to_pkcs8_pem(Default::default())
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_with_calls_in_flight_and_none_is_refused() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let port = c
        .start_gateway_with(&[
            ("RATE_LIMIT_PER_ADDR", "0"),
            ("RATE_LIMIT_PER_SUBJECT", "0"),
        ])
        .await;
    let key_file = c.token_key_file();
    let old = std::fs::read_to_string(&key_file).unwrap();
    let new = new_key();
    let new_only = c.folder().join("new-key.pem");
    std::fs::write(&new_only, &new).unwrap();

    let calls = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    // The token the workers call with, replaced after each step of the rotation: tokens
    // of the old key stay in flight while the new key signs.
    let current = Arc::new(std::sync::RwLock::new(login(port, "3117").await));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut flows = tokio::task::JoinSet::new();
    // Through the gateway with the user's token, and straight to a backend with the
    // operator's token.
    for worker in 0..3 {
        let (calls, refused, stop, current) = (
            calls.clone(),
            refused.clone(),
            stop.clone(),
            current.clone(),
        );
        let direct = c.port(Svc::ParkingLot);
        let operator = c.token("operator", Role::Admin);
        flows.spawn(async move {
            while !stop.is_cancelled() {
                let token = current.read().unwrap().clone();
                for (via, channel) in [
                    ("gateway", with_token(port, Some(&token)).await),
                    ("parking-lot", with_token(direct, Some(&operator)).await),
                ] {
                    let answer = Lot::new(channel)
                        .get_daily_availability(pb::GetDailyAvailabilityRequest { date: day(2) })
                        .await;
                    calls.fetch_add(1, Ordering::Relaxed);
                    if let Err(status) = answer {
                        refused
                            .lock()
                            .unwrap()
                            .push(format!("worker {worker} via {via}: {status:?}"));
                    }
                }
            }
        });
    }
    let new_tokens = gateway::tokens::Tokens::from_pem_file(
        &new_only,
        "parking-mesh",
        "parking-mesh",
        Duration::from_secs(300),
    )
    .unwrap();
    let wait_reload = || tokio::time::sleep(Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 1. The new key published beside the old one.
    std::fs::write(&key_file, format!("{old}{new}")).unwrap();
    wait_reload().await;
    *current.write().unwrap() = login(port, "3117").await;
    // 2. The new key signs; the old one is still published, its tokens still in flight.
    std::fs::write(&key_file, format!("{new}{old}")).unwrap();
    wait_reload().await;
    let fresh = login(port, "3117").await;
    let kid = |token: &str| {
        jsonwebtoken::decode_header(token)
            .unwrap()
            .kid
            .unwrap_or_default()
    };
    assert_eq!(kid(&fresh), new_tokens.signing_kid(), "the new key signs");
    *current.write().unwrap() = fresh;
    // Every backend accepts the new key's tokens the first time it sees one.
    let by_new_key = new_tokens.issue("admin", Role::Admin).unwrap();
    let channel = |svc| with_token(c.port(svc), Some(&by_new_key));
    Reservations::new(channel(Svc::Reservation).await)
        .list_reservations(pb::ListReservationsRequest::default())
        .await
        .unwrap();
    Status::new(channel(Svc::Status).await)
        .list_reservation_statuses(pb::ListReservationStatusesRequest::default())
        .await
        .unwrap();
    Delivery::new(channel(Svc::Delivery).await)
        .list_deliveries(pb::ListDeliveriesRequest::default())
        .await
        .unwrap();
    Lot::new(channel(Svc::ParkingLot).await)
        .set_daily_capacity(pb::SetDailyCapacityRequest {
            date: day(9),
            capacity: 7,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    while flows.join_next().await.is_some() {}
    let refused = refused.lock().unwrap().clone();
    let calls = calls.load(Ordering::Relaxed);
    println!(
        "key rotation: {calls} calls in flight across it, {} refused",
        refused.len()
    );
    assert!(calls > 20, "calls kept flowing ({calls})");
    assert!(refused.is_empty(), "refused during rotation: {refused:#?}");

    // 3. The old key retired: the gateway refuses its tokens at once.
    std::fs::write(&key_file, &new).unwrap();
    wait_reload().await;
    let old_only = c.folder().join("old-key.pem");
    std::fs::write(&old_only, &old).unwrap();
    let old_tokens = gateway::tokens::Tokens::from_pem_file(
        &old_only,
        "parking-mesh",
        "parking-mesh",
        Duration::from_secs(300),
    )
    .unwrap();
    let err = Lot::new(
        with_token(
            port,
            Some(&old_tokens.issue("3117", Role::Employee).unwrap()),
        )
        .await,
    )
    .get_daily_availability(pb::GetDailyAvailabilityRequest { date: day(2) })
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
}
