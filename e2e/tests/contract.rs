//! The public contract over real sockets: bad input gets a clear status and changes
//! nothing; reflection lets grpcurl work without .proto files; the status watch streams.
#![allow(clippy::unwrap_used)]

use futures::StreamExt;
use parking_e2e::{channel, day, eventually, reserve, yesterday, Backend, Cluster, Svc};
use parking_proto::v1 as pb;
use std::time::Duration;
use tonic::Code;

parking_e2e::on_both_backends!(
    bad_input_gets_a_clear_status_and_changes_nothing,
    watch_streams_every_stage
);

fn expect(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should mention {needle:?}",
        status.message()
    );
}

async fn bad_input_gets_a_clear_status_and_changes_nothing(backend: Backend) {
    let c = Cluster::start(backend).await;
    let mut res = c.reservation().await;
    let mut lot = c.parking_lot().await;
    let mut del = c.delivery().await;
    let date = day(3);

    expect(
        res.reserve_ticket(reserve(1, "13/07/2026")).await,
        Code::InvalidArgument,
        "YYYY-MM-DD",
    );
    expect(
        res.reserve_ticket(reserve(1, "2026-02-30")).await,
        Code::InvalidArgument,
        "not a day",
    );
    expect(
        res.reserve_ticket(reserve(1, &yesterday())).await,
        Code::InvalidArgument,
        "in the past",
    );
    expect(
        res.reserve_ticket(reserve(1, &day(400))).await,
        Code::InvalidArgument,
        "booking window",
    );
    expect(
        res.reserve_ticket(reserve(0, &date)).await,
        Code::InvalidArgument,
        "member_id",
    );
    expect(
        res.reserve_ticket(reserve(-4, &date)).await,
        Code::InvalidArgument,
        "member_id",
    );
    expect(
        res.get_reservation(pb::GetReservationRequest { id: 999_999 })
            .await,
        Code::NotFound,
        "999999",
    );
    expect(
        res.get_reservation(pb::GetReservationRequest { id: -1 })
            .await,
        Code::InvalidArgument,
        "id",
    );
    expect(
        res.cancel_reservation(pb::CancelReservationRequest { id: 999_999 })
            .await,
        Code::NotFound,
        "999999",
    );
    expect(
        res.list_reservations(pb::ListReservationsRequest {
            page_token: "bogus".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_token",
    );
    expect(
        lot.set_daily_capacity(pb::SetDailyCapacityRequest {
            date: date.clone(),
            capacity: -1,
        })
        .await,
        Code::InvalidArgument,
        "capacity",
    );
    expect(
        lot.set_daily_capacity(pb::SetDailyCapacityRequest {
            date: yesterday(),
            capacity: 3,
        })
        .await,
        Code::InvalidArgument,
        "past",
    );
    expect(
        lot.get_daily_availability(pb::GetDailyAvailabilityRequest {
            date: "2026-13-01".into(),
        })
        .await,
        Code::InvalidArgument,
        "not a day",
    );
    expect(
        del.ship_ticket(pb::ShipTicketRequest { delivery_id: 0 })
            .await,
        Code::InvalidArgument,
        "delivery_id",
    );
    expect(
        del.ship_ticket(pb::ShipTicketRequest {
            delivery_id: 424_242,
        })
        .await,
        Code::NotFound,
        "424242",
    );

    // One good reservation, then the refusals that need one.
    let r = res
        .reserve_ticket(reserve(77, &date))
        .await
        .unwrap()
        .into_inner();
    expect(
        res.reserve_ticket(reserve(77, &date)).await,
        Code::AlreadyExists,
        "one ticket per day",
    );
    eventually(Duration::from_secs(30), "order on the list", || {
        let mut del = del.clone();
        async move {
            let list = del
                .list_deliveries(pb::ListDeliveriesRequest::default())
                .await
                .ok()?
                .into_inner();
            (list.deliveries.len() == 1).then_some(())
        }
    })
    .await;
    let capacity_before = lot
        .get_daily_availability(pb::GetDailyAvailabilityRequest { date: date.clone() })
        .await
        .unwrap()
        .into_inner();
    expect(
        lot.set_daily_capacity(pb::SetDailyCapacityRequest {
            date: date.clone(),
            capacity: 0,
        })
        .await,
        Code::FailedPrecondition,
        "already occupied",
    );
    res.cancel_reservation(pb::CancelReservationRequest { id: r.id })
        .await
        .unwrap();
    expect(
        res.cancel_reservation(pb::CancelReservationRequest { id: r.id })
            .await,
        Code::FailedPrecondition,
        "already canceled",
    );
    let delivery = eventually(Duration::from_secs(30), "delivery cancelled", || {
        let mut del = del.clone();
        async move {
            let list = del
                .list_deliveries(pb::ListDeliveriesRequest::default())
                .await
                .ok()?
                .into_inner();
            list.deliveries
                .into_iter()
                .find(|d| d.state() == pb::DeliveryState::DeliveryCanceled)
        }
    })
    .await;
    expect(
        del.ship_ticket(pb::ShipTicketRequest {
            delivery_id: delivery.id,
        })
        .await,
        Code::FailedPrecondition,
        "cancelled",
    );

    // Nothing changed beyond the one reservation and its cancellation.
    let all = res
        .list_reservations(pb::ListReservationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.reservations.len(), 1);
    assert_eq!(all.reservations[0].state(), pb::ReservationState::Canceled);
    assert_eq!(
        capacity_before.capacity, 5,
        "the refused capacity change left it alone"
    );
    let list = del
        .list_deliveries(pb::ListDeliveriesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.deliveries.len(), 1);
    assert_eq!(
        list.deliveries[0].state(),
        pb::DeliveryState::DeliveryCanceled,
        "the refused ship left it cancelled"
    );
    let published = c.events("reservation").await;
    assert_eq!(
        published.len(),
        2,
        "one TicketReserved and one TicketReservationCanceled: {published:?}"
    );
}

async fn watch_streams_every_stage(backend: Backend) {
    let mut c = Cluster::start(backend).await;
    let r = c
        .reservation()
        .await
        .reserve_ticket(reserve(31, &day(2)))
        .await
        .unwrap()
        .into_inner();
    let mut watch = c
        .status()
        .await
        .watch_reservation_status(pb::WatchReservationStatusRequest {
            reservation_id: r.id,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = vec![];
    loop {
        let update = match tokio::time::timeout(Duration::from_secs(30), watch.next()).await {
            Err(_) => panic!("no update within 30 s; seen {seen:?}"),
            Ok(None) => panic!("the watch ended early; seen {seen:?}"),
            Ok(Some(Err(status))) => panic!("the watch failed: {status:?}; seen {seen:?}"),
            Ok(Some(Ok(update))) => update,
        };
        let stage = update.stage();
        if seen.last() != Some(&stage) {
            seen.push(stage);
        }
        if stage == pb::ReservationStage::StageDeliveryRequested {
            break;
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_by_key(|s| *s as i32);
    assert_eq!(seen, sorted, "stages only move forward");

    // The service stopping ends the watch with UNAVAILABLE (watch again, another replica
    // answers), never with OK, which would say the application's story is over.
    c.stop_service(Svc::Status).await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watch ended");
    match end {
        Some(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        other => panic!("the watch ended without UNAVAILABLE: {other:?}"),
    }
}

/// grpcurl's way in: list services and fetch descriptors by symbol via reflection v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_describes_every_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let c = Cluster::start(Backend::Sqlite).await;
    let expected = [
        (
            Svc::Reservation,
            "parking.v1.TicketReservationService",
            "ReserveTicket",
        ),
        (
            Svc::ParkingLot,
            "parking.v1.ParkingLotService",
            "SetDailyCapacity",
        ),
        (
            Svc::Delivery,
            "parking.v1.TicketDeliveryService",
            "CancelDelivery",
        ),
        (
            Svc::Status,
            "parking.v1.ReservationStatusService",
            "WatchReservationStatus",
        ),
    ];
    for (svc, service, method) in expected {
        let mut client = ServerReflectionClient::new(channel(c.port(svc)).await);
        let requests = [
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol(service.into()),
        ]
        .map(|m| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        });
        let mut responses = client
            .server_reflection_info(futures::stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            responses.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&service), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            responses.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected descriptors");
        };
        use prost::Message;
        let described = files.file_descriptor_proto.iter().any(|bytes| {
            let file = prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap();
            file.service.iter().any(|s| {
                format!("{}.{}", file.package(), s.name()) == service
                    && s.method.iter().any(|m| m.name() == method)
            })
        });
        assert!(described, "{service} with {method} described");
    }
}
