//! The flows of DESIGN.md end to end: real service processes, real gRPC sockets, real
//! JetStream, and each test once on SQLite and once on PostgreSQL.
#![allow(clippy::unwrap_used)]

use parking_e2e::{day, eventually, reserve, Backend, Cluster, Options, Payload, Svc};
use parking_proto::v1 as pb;
use pb::ReservationStage as Stage;
use pb::ReservationState as State;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

parking_e2e::on_both_backends!(
    reserve_confirm_deliver_ship,
    capacity_five_six_members,
    cancel_vacates_after_delivery_and_frees_the_space,
    reservations_taken_while_parking_lot_is_down,
    two_parking_lots_hold_the_quota_under_300_concurrent_applications,
    delivery_down_during_cancel_keeps_the_space,
    killed_between_commit_and_publish_loses_nothing,
    status_view_converges_out_of_order,
    cancel_while_parking_lot_is_down_holds_no_space,
    cancel_before_allocation_takes_nothing,
    same_request_id_returns_the_first_result,
);

async fn state_of(c: &Cluster, id: i64) -> State {
    let r = c
        .reservation()
        .await
        .get_reservation(pb::GetReservationRequest { id })
        .await
        .unwrap();
    r.into_inner().state()
}

async fn wait_state(c: &Cluster, id: i64, want: State) {
    eventually(WAIT, &format!("reservation {id} {want:?}"), || async move {
        (state_of(c, id).await == want).then_some(())
    })
    .await
}

async fn wait_stage(c: &Cluster, id: i64, want: Stage) -> pb::ReservationStatus {
    eventually(
        WAIT,
        &format!("status of {id} at {want:?}"),
        || async move {
            let s = c
                .status()
                .await
                .get_reservation_status(pb::GetReservationStatusRequest {
                    reservation_id: id,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            (s.stage() == want).then_some(s)
        },
    )
    .await
}

async fn reserve_confirm_deliver_ship(backend: Backend) {
    let c = Cluster::start(backend).await;
    let date = day(3);
    let r = c
        .reservation()
        .await
        .reserve_ticket(reserve(3117, &date))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state(), State::Requested);
    assert_eq!(
        (r.member_id, r.reservation_date.as_str()),
        (3117, date.as_str())
    );
    wait_state(&c, r.id, State::Confirmed).await;

    // The manager's list holds the order.
    let delivery = eventually(WAIT, "delivery order", || {
        let c = &c;
        let date = date.clone();
        async move {
            let list = c
                .delivery()
                .await
                .list_deliveries(pb::ListDeliveriesRequest {
                    reservation_date: date,
                    state: pb::DeliveryState::DeliveryRequested as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            list.deliveries
                .into_iter()
                .find(|d| d.reservation_id == r.id)
        }
    })
    .await;
    assert_eq!(delivery.member_id, 3117);
    assert_eq!(delivery.space_number, 1);
    let status = wait_stage(&c, r.id, Stage::StageDeliveryRequested).await;
    assert_eq!(status.ticket_delivery_id, delivery.id);

    let shipped = c
        .delivery()
        .await
        .ship_ticket(pb::ShipTicketRequest {
            delivery_id: delivery.id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shipped.state(), pb::DeliveryState::DeliveryShipped);

    let status = wait_stage(&c, r.id, Stage::StageShipped).await;
    assert!(status.parking_lot_id > 0, "parking_lot_id filled");
    assert_eq!(status.ticket_delivery_id, delivery.id);
    assert_eq!(
        (status.member_id, status.reservation_date.as_str()),
        (3117, date.as_str())
    );
    assert_eq!(status.space_number, 1);
    let walk: Vec<Stage> = status.history.iter().map(|h| h.stage()).collect();
    assert_eq!(
        walk,
        [
            Stage::StageReserved,
            Stage::StageOccupied,
            Stage::StageDeliveryRequested,
            Stage::StageShipped
        ]
    );

    // The Occupied event carries the space; events are correlated by reservation id.
    let lot = c.events("parkinglot").await;
    assert_eq!(lot.len(), 1);
    assert_eq!(lot[0].0, format!("{}.parkinglot.Occupied", c.namespace));
    assert_eq!(lot[0].1.correlation_id, r.id.to_string());
    match &lot[0].1.payload {
        Some(Payload::Occupied(o)) => assert_eq!((o.reservation_id, o.space_number), (r.id, 1)),
        other => panic!("expected Occupied, got {other:?}"),
    }
}

async fn set_capacity(c: &Cluster, date: &str, capacity: i32) {
    c.parking_lot()
        .await
        .set_daily_capacity(pb::SetDailyCapacityRequest {
            date: date.into(),
            capacity,
        })
        .await
        .unwrap();
}

async fn availability(c: &Cluster, date: &str) -> pb::DailyAvailability {
    c.parking_lot()
        .await
        .get_daily_availability(pb::GetDailyAvailabilityRequest { date: date.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn cancel(c: &Cluster, id: i64) -> pb::TicketReservation {
    c.reservation()
        .await
        .cancel_reservation(pb::CancelReservationRequest { id })
        .await
        .unwrap()
        .into_inner()
}

async fn reserve_ok(c: &Cluster, member: i64, date: &str) -> i64 {
    c.reservation()
        .await
        .reserve_ticket(reserve(member, date))
        .await
        .unwrap()
        .into_inner()
        .id
}

/// Waits until no reservation of `ids` is REQUESTED any more; returns (confirmed, rejected).
async fn settled(c: &Cluster, ids: &[i64]) -> (Vec<i64>, Vec<i64>) {
    eventually(
        Duration::from_secs(120),
        "every application settled",
        || async move {
            let mut confirmed = vec![];
            let mut rejected = vec![];
            let mut page_token = String::new();
            loop {
                let page = c
                    .reservation()
                    .await
                    .list_reservations(pb::ListReservationsRequest {
                        member_id: 0,
                        page_size: 200,
                        page_token,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                for r in &page.reservations {
                    if ids.contains(&r.id) {
                        match r.state() {
                            State::Confirmed => confirmed.push(r.id),
                            State::Rejected => rejected.push(r.id),
                            _ => {}
                        }
                    }
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            (confirmed.len() + rejected.len() == ids.len()).then_some((confirmed, rejected))
        },
    )
    .await
}

fn count(events: &[(String, pb::EventEnvelope)], name: &str) -> usize {
    events
        .iter()
        .filter(|(s, _)| s.ends_with(&format!(".{name}")))
        .count()
}

async fn capacity_five_six_members(backend: Backend) {
    let c = Cluster::start(backend).await;
    let date = day(5);
    let mut ids = vec![];
    for member in 1..=6 {
        ids.push(reserve_ok(&c, member, &date).await);
    }
    let (confirmed, rejected) = settled(&c, &ids).await;
    assert_eq!(confirmed.len(), 5, "MAX_PARKING defaults to 5");
    assert_eq!(rejected.len(), 1);
    let status = wait_stage(&c, rejected[0], Stage::StageFullyOccupied).await;
    assert_eq!(
        status.parking_lot_id, 0,
        "a rejected application holds no space"
    );
    let a = availability(&c, &date).await;
    assert_eq!((a.capacity, a.occupied, a.remaining), (5, 5, 0));
    // Five different spaces.
    let lot = c.events("parkinglot").await;
    let mut spaces: Vec<i32> = lot
        .iter()
        .filter_map(|(_, e)| match &e.payload {
            Some(Payload::Occupied(o)) => Some(o.space_number),
            _ => None,
        })
        .collect();
    spaces.sort();
    assert_eq!(spaces, [1, 2, 3, 4, 5]);
    assert_eq!(count(&lot, "FullyOccupied"), 1);
}

async fn cancel_vacates_after_delivery_and_frees_the_space(backend: Backend) {
    let c = Cluster::start(backend).await;
    let date = day(2);
    set_capacity(&c, &date, 1).await;
    let first = reserve_ok(&c, 10, &date).await;
    wait_state(&c, first, State::Confirmed).await;
    wait_stage(&c, first, Stage::StageDeliveryRequested).await;
    let second = reserve_ok(&c, 11, &date).await;
    wait_state(&c, second, State::Rejected).await;

    let canceled = cancel(&c, first).await;
    assert_eq!(canceled.state(), State::Canceled);
    let status = wait_stage(&c, first, Stage::StageVacated).await;
    let order: Vec<&str> = status
        .history
        .iter()
        .map(|h| h.event_type.as_str())
        .collect();
    let pos = |name: &str| {
        order
            .iter()
            .position(|e| *e == name)
            .unwrap_or_else(|| panic!("{name} in {order:?}"))
    };
    assert!(
        pos("TicketReservationCanceled") < pos("DeliveryCanceled"),
        "{order:?}"
    );
    assert!(pos("DeliveryCanceled") < pos("Vacated"), "{order:?}");
    let delivery = c
        .delivery()
        .await
        .list_deliveries(pb::ListDeliveriesRequest {
            reservation_date: date.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(delivery.deliveries.len(), 1);
    assert_eq!(
        delivery.deliveries[0].state(),
        pb::DeliveryState::DeliveryCanceled
    );
    assert_eq!(availability(&c, &date).await.occupied, 0);

    // The freed space goes to the next applicant.
    let third = reserve_ok(&c, 12, &date).await;
    wait_state(&c, third, State::Confirmed).await;
    let status = wait_stage(&c, third, Stage::StageDeliveryRequested).await;
    assert_eq!(status.space_number, 1);
    assert_eq!(availability(&c, &date).await.occupied, 1);
}

async fn reservations_taken_while_parking_lot_is_down(backend: Backend) {
    let mut c = Cluster::start(backend).await;
    let date = day(4);
    c.stop_service(Svc::ParkingLot).await;
    let mut ids = vec![];
    for member in 100..103 {
        ids.push(reserve_ok(&c, member, &date).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &ids {
        assert_eq!(
            state_of(&c, *id).await,
            State::Requested,
            "nobody settles while ParkingLot is down"
        );
    }
    c.start_service(Svc::ParkingLot).await;
    let (confirmed, _) = settled(&c, &ids).await;
    assert_eq!(confirmed.len(), 3);
    // Every missed event handled exactly once.
    let lot = c.events("parkinglot").await;
    assert_eq!(count(&lot, "Occupied"), 3, "{lot:?}");
    let mut reservations: Vec<String> = lot.iter().map(|(_, e)| e.correlation_id.clone()).collect();
    reservations.sort();
    reservations.dedup();
    assert_eq!(reservations.len(), 3);
    assert_eq!(availability(&c, &date).await.occupied, 3);
}

async fn two_parking_lots_hold_the_quota_under_300_concurrent_applications(backend: Backend) {
    let mut c = Cluster::start(backend).await;
    let date = day(7);
    set_capacity(&c, &date, 40).await;
    c.start_replica(Svc::ParkingLot).await;
    let client = c.reservation().await;
    let calls = (1..=300).map(|member| {
        let mut client = client.clone();
        let date = date.clone();
        async move {
            client
                .reserve_ticket(reserve(member, &date))
                .await
                .unwrap()
                .into_inner()
                .id
        }
    });
    let ids: Vec<i64> = futures::future::join_all(calls).await;
    let (confirmed, rejected) = settled(&c, &ids).await;
    assert_eq!((confirmed.len(), rejected.len()), (40, 260));
    let lot = c.events("parkinglot").await;
    assert_eq!(count(&lot, "Occupied"), 40);
    assert_eq!(count(&lot, "FullyOccupied"), 260);
    let mut decided: Vec<&str> = lot.iter().map(|(_, e)| e.correlation_id.as_str()).collect();
    decided.sort();
    decided.dedup();
    assert_eq!(decided.len(), 300, "no application decided twice");
    let mut spaces: Vec<i32> = lot
        .iter()
        .filter_map(|(_, e)| match &e.payload {
            Some(Payload::Occupied(o)) => Some(o.space_number),
            _ => None,
        })
        .collect();
    spaces.sort();
    assert_eq!(spaces, (1..=40).collect::<Vec<_>>());
    let a = availability(&c, &date).await;
    assert_eq!((a.occupied, a.remaining), (40, 0));
}

async fn delivery_down_during_cancel_keeps_the_space(backend: Backend) {
    let mut c = Cluster::start(backend).await;
    let date = day(6);
    let id = reserve_ok(&c, 500, &date).await;
    wait_state(&c, id, State::Confirmed).await;
    wait_stage(&c, id, Stage::StageDeliveryRequested).await;
    c.stop_service(Svc::Delivery).await;
    cancel(&c, id).await;
    wait_stage(&c, id, Stage::StageCancelRequested).await;
    // Parking-lot tries, fails, and keeps the space while delivery is down.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        availability(&c, &date).await.occupied,
        1,
        "space freed before delivery was cancelled"
    );
    assert_eq!(count(&c.events("parkinglot").await, "Vacated"), 0);
    c.start_service(Svc::Delivery).await;
    wait_stage(&c, id, Stage::StageVacated).await;
    assert_eq!(availability(&c, &date).await.occupied, 0);
    assert_eq!(count(&c.events("parkinglot").await, "Vacated"), 1);
    assert_eq!(count(&c.events("delivery").await, "DeliveryCanceled"), 1);
}

async fn killed_between_commit_and_publish_loses_nothing(backend: Backend) {
    let mut c = Cluster::prepare(backend, Options::default()).await;
    for svc in [Svc::ParkingLot, Svc::Delivery, Svc::Status] {
        c.start_service(svc).await;
    }
    // Reservation commits but cannot publish (NATS unreachable), then dies hard.
    c.start_without_nats(Svc::Reservation).await;
    let date = day(8);
    let id = reserve_ok(&c, 700, &date).await;
    assert_eq!(state_of(&c, id).await, State::Requested);
    c.kill_service(Svc::Reservation).await;
    assert_eq!(count(&c.events("reservation").await, "TicketReserved"), 0);

    c.start_service(Svc::Reservation).await;
    wait_state(&c, id, State::Confirmed).await;
    let published = c.events("reservation").await;
    assert_eq!(
        count(&published, "TicketReserved"),
        1,
        "published exactly once after restart"
    );
    assert_eq!(published[0].1.correlation_id, id.to_string());
}

async fn status_view_converges_out_of_order(backend: Backend) {
    // Only the view runs: the other services would react to these events themselves.
    let mut c = Cluster::prepare(backend, Options::default()).await;
    c.start_service(Svc::Status).await;
    let id = 9_000_001;
    let date = day(9);
    let env = |payload: Payload| pb::EventEnvelope {
        event_id: uuid::Uuid::new_v4().to_string(),
        correlation_id: id.to_string(),
        occurred_at: None,
        traceparent: String::new(),
        tracestate: String::new(),
        payload: Some(payload),
    };
    let shipped = env(Payload::Shipped(pb::Shipped {
        reservation_id: id,
        delivery_id: 77,
    }));
    // Latest first, and one event twice (at-least-once delivery).
    c.publish("delivery", &shipped, "Shipped").await;
    c.publish("delivery", &shipped, "Shipped").await;
    c.publish(
        "delivery",
        &env(Payload::DeliveryRequested(pb::DeliveryRequested {
            reservation_id: id,
            delivery_id: 77,
            member_id: 42,
            reservation_date: date.clone(),
            space_number: 4,
        })),
        "DeliveryRequested",
    )
    .await;
    c.publish(
        "parkinglot",
        &env(Payload::Occupied(pb::Occupied {
            reservation_id: id,
            member_id: 42,
            reservation_date: date.clone(),
            parking_lot_id: 66,
            space_number: 4,
        })),
        "Occupied",
    )
    .await;
    c.publish(
        "reservation",
        &env(Payload::TicketReserved(pb::TicketReserved {
            reservation_id: id,
            member_id: 42,
            reservation_date: date.clone(),
        })),
        "TicketReserved",
    )
    .await;
    let status = eventually(WAIT, "four events projected", || {
        let c = &c;
        async move {
            let s = c
                .status()
                .await
                .get_reservation_status(pb::GetReservationStatusRequest {
                    reservation_id: id,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            (s.history.len() == 4).then_some(s)
        }
    })
    .await;
    assert_eq!(
        status.stage(),
        Stage::StageShipped,
        "a later stage never goes back"
    );
    assert_eq!(
        (
            status.member_id,
            status.reservation_date.as_str(),
            status.parking_lot_id,
            status.ticket_delivery_id,
            status.space_number
        ),
        (42, date.as_str(), 66, 77, 4)
    );
    // A stale event after that changes nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = c
        .status()
        .await
        .get_reservation_status(pb::GetReservationStatusRequest {
            reservation_id: id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.history.len(), 4, "the duplicate was applied once");
}

async fn cancel_while_parking_lot_is_down_holds_no_space(backend: Backend) {
    let mut c = Cluster::start(backend).await;
    let date = day(10);
    c.stop_service(Svc::ParkingLot).await;
    let id = reserve_ok(&c, 800, &date).await;
    cancel(&c, id).await;
    c.start_service(Svc::ParkingLot).await;
    // Whichever of the two events ParkingLot sees first, no space is taken and no one called.
    let later = reserve_ok(&c, 801, &date).await;
    wait_state(&c, later, State::Confirmed).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state_of(&c, id).await, State::Canceled);
    assert_eq!(
        availability(&c, &date).await.occupied,
        1,
        "only the later application holds a space"
    );
    // If ParkingLot allocated first, it vacated too.
    let lot = c.events("parkinglot").await;
    let of = |name: &str| {
        lot.iter()
            .filter(|(s, e)| s.ends_with(name) && e.correlation_id == id.to_string())
            .count()
    };
    assert_eq!(of(".Occupied"), of(".Vacated"), "{lot:?}");
}

async fn cancel_before_allocation_takes_nothing(backend: Backend) {
    // No reservation service: the test plays it, so the cancel is surely handled first.
    let mut c = Cluster::prepare(backend, Options::default()).await;
    for svc in [Svc::Delivery, Svc::Status, Svc::ParkingLot] {
        c.start_service(svc).await;
    }
    let date = day(11);
    let env = |id: i64, payload: Payload| pb::EventEnvelope {
        event_id: uuid::Uuid::new_v4().to_string(),
        correlation_id: id.to_string(),
        payload: Some(payload),
        ..Default::default()
    };
    let (early, other) = (8_000_001, 8_000_002);
    c.publish(
        "reservation",
        &env(
            early,
            Payload::TicketReservationCanceled(pb::TicketReservationCanceled {
                reservation_id: early,
                member_id: 1,
                reservation_date: date.clone(),
            }),
        ),
        "TicketReservationCanceled",
    )
    .await;
    c.wait_consumer_idle("reservation", "parking-lot-vacate")
        .await;
    for id in [early, other] {
        c.publish(
            "reservation",
            &env(
                id,
                Payload::TicketReserved(pb::TicketReserved {
                    reservation_id: id,
                    member_id: id,
                    reservation_date: date.clone(),
                }),
            ),
            "TicketReserved",
        )
        .await;
    }
    c.wait_consumer_idle("reservation", "parking-lot-allocate")
        .await;
    // Handled is not yet published: the relay sends the decision just after the commit.
    let lot = eventually(Duration::from_secs(10), "a decision published", || async {
        Some(c.events("parkinglot").await).filter(|lot| !lot.is_empty())
    })
    .await;
    assert_eq!(
        lot.len(),
        1,
        "only the other application was decided: {lot:?}"
    );
    assert_eq!(lot[0].1.correlation_id, other.to_string());
    assert_eq!(availability(&c, &date).await.occupied, 1);
    assert!(
        c.events("delivery")
            .await
            .iter()
            .all(|(s, _)| !s.ends_with(".DeliveryCanceled")),
        "delivery was never called"
    );
}

async fn same_request_id_returns_the_first_result(backend: Backend) {
    let c = Cluster::start(backend).await;
    let date = day(1);
    let req = pb::ReserveTicketRequest {
        member_id: 900,
        reservation_date: date.clone(),
        request_id: "req-900-1".into(),
    };
    let first = c
        .reservation()
        .await
        .reserve_ticket(req.clone())
        .await
        .unwrap()
        .into_inner();
    let again = c
        .reservation()
        .await
        .reserve_ticket(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.id, again.id);
    assert_eq!(again.request_id, "req-900-1");
    // Reusing the key for another day is refused, not silently answered.
    let other = pb::ReserveTicketRequest {
        reservation_date: day(2),
        ..req
    };
    let err = c
        .reservation()
        .await
        .reserve_ticket(other)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    wait_state(&c, first.id, State::Confirmed).await;
    assert_eq!(count(&c.events("reservation").await, "TicketReserved"), 1);

    // Without a request_id, a retry of one call (the mesh resends it with the gateway's
    // x-request-id) gets the first answer; a new call is a second ticket, refused.
    let call = |call_id: &'static str| {
        let c = &c;
        let date = date.clone();
        async move {
            let mut request = tonic::Request::new(pb::ReserveTicketRequest {
                member_id: 901,
                reservation_date: date,
                request_id: String::new(),
            });
            request
                .metadata_mut()
                .insert("x-request-id", call_id.parse().unwrap());
            c.reservation().await.reserve_ticket(request).await
        }
    };
    let first = call("3f1c-a").await.unwrap().into_inner();
    let retried = call("3f1c-a").await.unwrap().into_inner();
    assert_eq!(first.id, retried.id, "a retry answers the first result");
    assert_eq!(
        retried.request_id, "",
        "the call's key is not the client's request_id"
    );
    let second = call("3f1c-b").await.unwrap_err();
    assert_eq!(second.code(), tonic::Code::AlreadyExists, "{second:?}");
    wait_state(&c, first.id, State::Confirmed).await;
    assert_eq!(count(&c.events("reservation").await, "TicketReserved"), 2);
}
