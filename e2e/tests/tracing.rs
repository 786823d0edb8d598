//! One application, one trace: an OTLP collector runs inside this test (a tonic server of
//! the OpenTelemetry collector protocol), every process exports to it, and the spans of a
//! reservation made through the gateway must form one tree across gRPC hops and JetStream:
//! gateway -> reservation -> publish TicketReserved -> parking-lot consume -> publish
//! Occupied -> delivery consume, with the status view's consume spans in it too; then the
//! manager's ShipTicket is a trace of its own: gateway -> delivery -> publish Shipped ->
//! status consume.
#![allow(clippy::unwrap_used)]

use parking_e2e::otlp::{Collector, Span};
use parking_e2e::{day, eventually, gateway_as, reserve, Backend, Cluster};
use parking_proto::v1 as pb;
use std::collections::HashMap;
use std::time::Duration;

/// The span of `service` named like `name` whose parent is `parent`.
fn child(trace: &[Span], service: &str, name: &str, parent: &Span) -> Span {
    trace
        .iter()
        .find(|s| s.service == service && s.name.contains(name) && s.parent == parent.span_id)
        .cloned()
        .unwrap_or_else(|| panic!("no {service} span {name:?} under {parent:?}; trace: {trace:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_is_one_trace_from_the_gateway_through_jetstream_to_delivery() {
    let (collector, endpoint) = Collector::start().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Export within 100 ms instead of the default 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut c = Cluster::start_with_env(Backend::Sqlite, &otel).await;
    let gw = c.start_gateway_with(&otel).await;
    let employee = gateway_as(gw, "3117").await;
    let manager = gateway_as(gw, "manager").await;
    let r = pb::ticket_reservation_service_client::TicketReservationServiceClient::new(employee)
        .reserve_ticket(reserve(3117, &day(2)))
        .await
        .unwrap()
        .into_inner();
    let find = |spans: &[Span], service: &str, name: &str| {
        spans
            .iter()
            .find(|s| s.service == service && s.name.contains(name))
            .cloned()
    };
    // Wait for the last hop: delivery consuming Occupied, and the status view's spans.
    let spans = eventually(Duration::from_secs(30), "the whole trace exported", || {
        let collector = collector.clone();
        async move {
            let spans = collector.spans();
            let root = find(&spans, "gateway", "TicketReservationService/ReserveTicket")?;
            let trace: Vec<Span> = spans
                .into_iter()
                .filter(|s| s.trace_id == root.trace_id)
                .collect();
            // Processes export on their own schedules: wait for every span asserted below
            // and for every parent of what has arrived (no orphan left waiting).
            let wanted = [
                ("reservation", "TicketReservationService/ReserveTicket"),
                ("reservation", "TicketReserved publish"),
                ("parking-lot", "TicketReserved process"),
                ("parking-lot", "Occupied publish"),
                ("delivery", "Occupied process"),
                ("delivery", "DeliveryRequested publish"),
                ("status", "DeliveryRequested process"),
                ("status", "TicketReserved process"),
                ("reservation", "Occupied process"),
            ];
            let all_there = wanted
                .iter()
                .all(|(svc, name)| find(&trace, svc, name).is_some());
            let ids: Vec<&[u8]> = trace.iter().map(|s| s.span_id.as_slice()).collect();
            let orphans = trace
                .iter()
                .filter(|s| s.span_id != root.span_id && !ids.contains(&s.parent.as_slice()))
                .count();
            (all_there && orphans == 0).then_some(trace)
        }
    })
    .await;

    let by_id: HashMap<&[u8], &Span> = spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let parent_of = |s: &Span| by_id.get(s.parent.as_slice()).copied();
    // One tree: a single root (the gateway's span), every other span's parent in the trace.
    let roots: Vec<&Span> = spans.iter().filter(|s| parent_of(s).is_none()).collect();
    assert_eq!(roots.len(), 1, "one root expected: {roots:#?}");
    assert_eq!(roots[0].service, "gateway");
    assert!(roots[0].name.contains("ReserveTicket"), "{:?}", roots[0]);

    // The chain, hop by hop.
    let hop = |service: &str, name: &str, parent: &Span| child(&spans, service, name, parent);
    let reservation = hop(
        "reservation",
        "TicketReservationService/ReserveTicket",
        roots[0],
    );
    let published = hop("reservation", "TicketReserved publish", &reservation);
    let allocated = hop("parking-lot", "TicketReserved process", &published);
    assert_eq!(
        allocated.links,
        vec![published.span_id.clone()],
        "consumer links to its producer"
    );
    let occupied = hop("parking-lot", "Occupied publish", &allocated);
    let delivery = hop("delivery", "Occupied process", &occupied);
    assert_eq!(delivery.links, vec![occupied.span_id.clone()]);
    let requested = hop("delivery", "DeliveryRequested publish", &delivery);
    hop("status", "DeliveryRequested process", &requested);
    hop("status", "TicketReserved process", &published);
    hop("reservation", "Occupied process", &occupied);

    // The manager ships the ticket: a trace of its own, gateway -> delivery -> publish
    // Shipped -> the status view.
    let delivery_id = eventually(Duration::from_secs(30), "the delivery order", || {
        let manager = manager.clone();
        async move {
            pb::ticket_delivery_service_client::TicketDeliveryServiceClient::new(manager)
                .list_deliveries(pb::ListDeliveriesRequest::default())
                .await
                .ok()?
                .into_inner()
                .deliveries
                .into_iter()
                .find(|d| d.reservation_id == r.id)
                .map(|d| d.id)
        }
    })
    .await;
    pb::ticket_delivery_service_client::TicketDeliveryServiceClient::new(manager)
        .ship_ticket(pb::ShipTicketRequest { delivery_id })
        .await
        .unwrap();
    let shipped = eventually(Duration::from_secs(30), "the ship trace exported", || {
        let collector = collector.clone();
        async move {
            let spans = collector.spans();
            let root = find(&spans, "gateway", "TicketDeliveryService/ShipTicket")?;
            let trace: Vec<Span> = spans
                .into_iter()
                .filter(|s| s.trace_id == root.trace_id)
                .collect();
            let all_there = find(&trace, "delivery", "TicketDeliveryService/ShipTicket").is_some()
                && find(&trace, "delivery", "Shipped publish").is_some()
                && find(&trace, "status", "Shipped process").is_some();
            all_there.then_some((root, trace))
        }
    })
    .await;
    let (root, trace) = shipped;
    let ship = child(
        &trace,
        "delivery",
        "TicketDeliveryService/ShipTicket",
        &root,
    );
    let published = child(&trace, "delivery", "Shipped publish", &ship);
    child(&trace, "status", "Shipped process", &published);
}
