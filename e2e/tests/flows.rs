//! The flows of DESIGN.md end to end: real service processes, real gRPC sockets, real
//! JetStream, and each test once on SQLite and once on PostgreSQL.
#![allow(clippy::unwrap_used)]

use parking_e2e::{day, eventually, reserve, Backend, Cluster, Options, Payload, Svc};
use parking_proto::v1 as pb;
use pb::ReservationStage as Stage;
use pb::ReservationState as State;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Runs each scenario against both databases.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(parking_e2e::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(parking_e2e::Backend::Postgres).await })*
        }
    };
}

on_both_backends!(
    reserve_confirm_deliver_ship,
);

async fn state_of(c: &Cluster, id: i64) -> State {
    let r = c.reservation().await.get_reservation(pb::GetReservationRequest { id }).await.unwrap();
    r.into_inner().state()
}

async fn wait_state(c: &Cluster, id: i64, want: State) {
    eventually(WAIT, &format!("reservation {id} {want:?}"), || async move {
        (state_of(c, id).await == want).then_some(())
    })
    .await
}

async fn wait_stage(c: &Cluster, id: i64, want: Stage) -> pb::ReservationStatus {
    eventually(WAIT, &format!("status of {id} at {want:?}"), || async move {
        let s = c
            .status()
            .await
            .get_reservation_status(pb::GetReservationStatusRequest { reservation_id: id })
            .await
            .ok()?
            .into_inner();
        (s.stage() == want).then_some(s)
    })
    .await
}

async fn reserve_confirm_deliver_ship(backend: Backend) {
    let c = Cluster::start(backend).await;
    let date = day(3);
    let r = c.reservation().await.reserve_ticket(reserve(3117, &date)).await.unwrap().into_inner();
    assert_eq!(r.state(), State::Requested);
    assert_eq!((r.member_id, r.reservation_date.as_str()), (3117, date.as_str()));
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
            list.deliveries.into_iter().find(|d| d.reservation_id == r.id)
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
        .ship_ticket(pb::ShipTicketRequest { delivery_id: delivery.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shipped.state(), pb::DeliveryState::DeliveryShipped);

    let status = wait_stage(&c, r.id, Stage::StageShipped).await;
    assert!(status.parking_lot_id > 0, "parking_lot_id filled");
    assert_eq!(status.ticket_delivery_id, delivery.id);
    assert_eq!((status.member_id, status.reservation_date.as_str()), (3117, date.as_str()));
    assert_eq!(status.space_number, 1);
    let walk: Vec<Stage> = status.history.iter().map(|h| h.stage()).collect();
    assert_eq!(
        walk,
        [Stage::StageReserved, Stage::StageOccupied, Stage::StageDeliveryRequested, Stage::StageShipped]
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
    let _ = (Options::default(), Svc::Status);
}
