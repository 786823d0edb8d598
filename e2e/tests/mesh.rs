//! The mesh end to end: parking-lot calls delivery through the in-process Istio policy.
//! Delivery is slowed by fault injection while cancellations flood in: the circuit opens
//! and parking-lot stops calling (it answers itself, fail-fast, and defers); delivery
//! recovers (the VirtualService loses its fault, reloaded from the file); every
//! cancellation then completes, no space is freed before its delivery is cancelled, and
//! none is freed twice.
#![allow(clippy::unwrap_used)]

use parking_e2e::{day, eventually, reserve, Backend, Cluster, Options, Payload, Svc};
use parking_proto::v1 as pb;
use std::collections::HashMap;
use std::time::Duration;

const RULE: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: delivery
spec:
  host: delivery
  trafficPolicy:
    connectionPool:
      http:
        http2MaxRequests: 4
        http1MaxPendingRequests: 2
    outlierDetection:
      consecutiveGatewayErrors: 2
      interval: 1s
      baseEjectionTime: 1s
      maxEjectionPercent: 100
"#;

const SLOW: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: delivery
spec:
  hosts: [delivery]
  http:
  - timeout: 2s
    retries:
      attempts: 1
      perTryTimeout: 300ms
      retryOn: gateway-error
    fault:
      delay:
        fixedDelay: 2s
        percentage:
          value: 100
    route:
    - destination:
        host: delivery
"#;

const HEALTHY: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: delivery
spec:
  hosts: [delivery]
  http:
  - timeout: 2s
    retries:
      attempts: 1
      perTryTimeout: 300ms
      retryOn: gateway-error
    route:
    - destination:
        host: delivery
"#;

/// The value of a series (summed over label sets that contain `labels`).
fn series(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_opens_under_a_slow_delivery_and_every_cancellation_completes() {
    const N: i64 = 10;
    let mut c = Cluster::prepare(
        Backend::Sqlite,
        Options {
            max_parking: N as i32,
            delivery_timeout_ms: 5000,
        },
    )
    .await;
    let rule = c.folder().join("delivery-destinationrule.yaml");
    let route = c.folder().join("delivery-virtualservice.yaml");
    std::fs::write(&rule, RULE).unwrap();
    std::fs::write(&route, HEALTHY).unwrap();
    let files = format!("{},{}", rule.display(), route.display());
    c.set_env(Svc::ParkingLot, "MESH_CONFIG", &files);
    for svc in [
        Svc::Delivery,
        Svc::Status,
        Svc::ParkingLot,
        Svc::Reservation,
    ] {
        c.start_service(svc).await;
    }

    let date = day(2);
    let mut ids = vec![];
    for member in 1..=N {
        ids.push(
            c.reservation()
                .await
                .reserve_ticket(reserve(member, &date))
                .await
                .unwrap()
                .into_inner()
                .id,
        );
    }
    eventually(
        Duration::from_secs(30),
        "every order on the manager's list",
        || async {
            let list = c
                .delivery()
                .await
                .list_deliveries(pb::ListDeliveriesRequest {
                    reservation_date: date.clone(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            (list.deliveries.len() == N as usize).then_some(())
        },
    )
    .await;

    // Delivery turns slow (2 s against a 300 ms try), then every application is cancelled.
    std::fs::write(&route, SLOW).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await; // the mesh re-reads files every second
    for id in &ids {
        c.reservation()
            .await
            .cancel_reservation(pb::CancelReservationRequest { id: *id })
            .await
            .unwrap();
    }

    // The circuit opens: endpoints ejected, calls answered by the mesh without calling.
    let opened = eventually(
        Duration::from_secs(30),
        "delivery circuit opens",
        || async {
            let text = c.metrics(Svc::ParkingLot).await;
            let ejections = series(&text, "mesh_ejections_total", "host=\"delivery\"");
            let fail_fast = series(&text, "mesh_fail_fast_total", "host=\"delivery\"");
            (ejections >= 1.0 && fail_fast >= 1.0).then_some(text)
        },
    )
    .await;
    assert!(
        series(&opened, "mesh_retries_total", "host=\"delivery\"") >= 1.0,
        "{opened}"
    );
    // Nothing was freed while delivery could not confirm.
    let lot = c
        .parking_lot()
        .await
        .get_daily_availability(pb::GetDailyAvailabilityRequest { date: date.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        lot.occupied, N as i32,
        "no space freed before its delivery is cancelled"
    );
    assert!(c
        .events("parkinglot")
        .await
        .iter()
        .all(|(s, _)| !s.ends_with(".Vacated")));

    // Delivery recovers.
    std::fs::write(&route, HEALTHY).unwrap();
    eventually(Duration::from_secs(90), "every space vacated", || async {
        let lot = c
            .parking_lot()
            .await
            .get_daily_availability(pb::GetDailyAvailabilityRequest { date: date.clone() })
            .await
            .ok()?
            .into_inner();
        (lot.occupied == 0).then_some(())
    })
    .await;

    // Each space freed once, and only after its delivery was cancelled.
    let canceled: HashMap<String, prost_types::Timestamp> = c
        .events("delivery")
        .await
        .into_iter()
        .filter(|(s, _)| s.ends_with(".DeliveryCanceled"))
        .map(|(_, e)| (e.correlation_id.clone(), e.occurred_at.unwrap()))
        .collect();
    let vacated: Vec<_> = c
        .events("parkinglot")
        .await
        .into_iter()
        .filter(|(_, e)| matches!(e.payload, Some(Payload::Vacated(_))))
        .collect();
    assert_eq!(vacated.len(), N as usize, "every space freed exactly once");
    assert_eq!(canceled.len(), N as usize, "every delivery cancelled");
    for (_, e) in &vacated {
        let freed = e.occurred_at.unwrap();
        let cancelled = &canceled[&e.correlation_id];
        assert!(
            (freed.seconds, freed.nanos) >= (cancelled.seconds, cancelled.nanos),
            "reservation {} freed before its delivery was cancelled",
            e.correlation_id
        );
    }
}
