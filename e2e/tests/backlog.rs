//! Falling behind is visible: the gateway's `GET /status` lists every durable consumer of
//! the cluster's streams (read from JetStream, not named in the gateway) with its pending
//! events, says "degraded" (200) while one is behind, and "down" (503) only while a
//! backend does not serve. Applications are taken meanwhile and settle once the consumer
//! is back.
#![allow(clippy::unwrap_used)]

use parking_e2e::{
    day, eventually, free_port, gateway_as, http, nats_url, reserve, Backend, Cluster, Svc,
};
use parking_proto::v1 as pb;
use serde_json::Value;
use std::time::Duration;

/// ParkingLot's durable that turns TicketReserved into Occupied / FullyOccupied.
const ALLOCATE: &str = "parking-lot-allocate";
const WAIT: Duration = Duration::from_secs(60);

/// `/status`: HTTP status and JSON body.
async fn status(port: u16) -> (u16, Value) {
    let (code, _, body) = http(port, http::Request::get("/status"), bytes::Bytes::new()).await;
    (code.as_u16(), serde_json::from_slice(&body).unwrap())
}

/// The consumer `durable` in the report's pipeline part.
fn consumer<'a>(report: &'a Value, durable: &str) -> Option<&'a Value> {
    report["pipeline"]["consumers"]
        .as_array()?
        .iter()
        .find(|c| c["durable"] == durable)
}

/// The names of the consumers the report says are behind.
fn behind(report: &Value) -> Vec<&str> {
    report["pipeline"]["behind"]
        .as_array()
        .map(|list| list.iter().filter_map(|c| c["durable"].as_str()).collect())
        .unwrap_or_default()
}

/// Waits until `/status` answers `code` and `check` accepts the report; returns it.
async fn wait_status(port: u16, code: u16, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(WAIT, what, || {
        let check = &check;
        async move {
            let (got, report) = status(port).await;
            (got == code && check(&report)).then_some(report)
        }
    })
    .await
}

/// A gateway that reads this cluster's streams; degraded above two pending events, and
/// (so that the count decides, not the clock) only at ten minutes of waiting.
async fn gateway(c: &mut Cluster) -> u16 {
    let namespace = c.namespace.clone();
    c.start_gateway_with(&[
        ("NATS_URL", &nats_url()),
        ("EVENT_NAMESPACE", &namespace),
        ("STATUS_BACKLOG_DEGRADED", "2"),
        ("STATUS_BACKLOG_MAX_AGE_SECS", "600"),
    ])
    .await
}

async fn state_of(c: &Cluster, id: i64) -> pb::ReservationState {
    c.reservation()
        .await
        .get_reservation(pb::GetReservationRequest { id })
        .await
        .unwrap()
        .into_inner()
        .state()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_consumer_shows_as_backlog_and_clears_when_it_is_back() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    // ParkingLot has bound its durable before it goes away.
    c.wait_consumer_idle("reservation", ALLOCATE).await;
    let port = gateway(&mut c).await;
    let report = wait_status(port, 200, "status ok with the durables listed", |r| {
        r["status"] == "ok" && consumer(r, ALLOCATE).is_some()
    })
    .await;
    assert_eq!(report["gateway"], "SERVING", "{report}");
    assert_eq!(report["backends"]["parking-lot"], "SERVING", "{report}");
    assert_eq!(report["pipeline"]["status"], "ok", "{report}");
    assert_eq!(report["reasons"], serde_json::json!([]), "{report}");
    // Every durable of every stream is listed, the status view's too.
    assert!(
        consumer(&report, "status-reservation").is_some(),
        "{report}"
    );
    assert!(
        consumer(&report, "reservation-settle").is_some(),
        "{report}"
    );

    // ParkingLot stopped: applications are still taken; its durable piles them up. The
    // answer is down (a backend does not serve), and the pipeline part says why it lags.
    c.stop_service(Svc::ParkingLot).await;
    let employee = gateway_as(port, "3117").await;
    let mut reservations =
        pb::ticket_reservation_service_client::TicketReservationServiceClient::new(employee);
    let mut ids = Vec::new();
    for offset in [3, 4, 5] {
        let r = reservations
            .reserve_ticket(reserve(3117, &day(offset)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.state(), pb::ReservationState::Requested);
        ids.push(r.id);
    }
    let report = wait_status(port, 503, "allocate 3 behind, parking-lot down", |r| {
        consumer(r, ALLOCATE).is_some_and(|a| a["pending"] == 3) && behind(r) == [ALLOCATE]
    })
    .await;
    assert_eq!(report["status"], "down", "{report}");
    assert_eq!(report["pipeline"]["status"], "degraded", "{report}");
    let reasons = report["reasons"].to_string();
    assert!(reasons.contains("parking-lot is not serving"), "{report}");
    assert!(reasons.contains(&format!("{ALLOCATE} on ")), "{report}");
    assert!(reasons.contains("3 events pending (limit 2)"), "{report}");

    // ParkingLot serving again but cut off from NATS: every backend serves, the pipeline
    // does not move. Degraded, 200, naming the durable and by how much; still taking
    // applications.
    c.start_without_nats(Svc::ParkingLot).await;
    let r = reservations
        .reserve_ticket(reserve(3117, &day(6)))
        .await
        .unwrap()
        .into_inner();
    ids.push(r.id);
    let report = wait_status(port, 200, "degraded: allocate 4 behind", |r| {
        r["status"] == "degraded"
            && consumer(r, ALLOCATE).is_some_and(|a| a["pending"] == 4)
            && behind(r) == [ALLOCATE]
    })
    .await;
    for backend in ["reservation", "parking-lot", "delivery", "status"] {
        assert_eq!(report["backends"][backend], "SERVING", "{report}");
    }
    let allocate = consumer(&report, ALLOCATE).unwrap();
    assert_eq!(allocate["behind"], true, "{report}");
    assert_eq!(
        allocate["stream"],
        format!("{}_RESERVATION", c.namespace.to_uppercase())
    );
    // The age of its oldest waiting event: the first application's, seconds ago.
    let age = allocate["oldest_age_seconds"].as_f64().unwrap();
    assert!((0.0..600.0).contains(&age), "{report}");
    assert_eq!(report["reasons"].as_array().unwrap().len(), 1, "{report}");
    assert!(
        report["reasons"][0]
            .as_str()
            .unwrap()
            .contains("4 events pending (limit 2)"),
        "{report}"
    );

    // ParkingLot back for real: the applications settle and /status is ok again.
    c.kill_service(Svc::ParkingLot).await;
    c.start_service(Svc::ParkingLot).await;
    let c = &c;
    for &id in &ids {
        eventually(WAIT, &format!("reservation {id} confirmed"), || async move {
            (state_of(c, id).await == pb::ReservationState::Confirmed).then_some(())
        })
        .await;
    }
    let report = wait_status(port, 200, "ok again", |r| r["status"] == "ok").await;
    assert_eq!(
        consumer(&report, ALLOCATE).unwrap()["pending"],
        0,
        "{report}"
    );
    assert!(behind(&report).is_empty(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_unreachable_is_degraded_not_down() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let namespace = c.namespace.clone();
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let port = c
        .start_gateway_with(&[("NATS_URL", &nowhere), ("EVENT_NAMESPACE", &namespace)])
        .await;
    let (code, report) = status(port).await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["status"], "degraded", "{report}");
    assert_eq!(report["pipeline"]["status"], "unknown", "{report}");
    assert!(
        report["pipeline"]["error"]
            .as_str()
            .unwrap()
            .contains("NATS"),
        "{report}"
    );
    assert_eq!(report["backends"]["reservation"], "SERVING", "{report}");
    // Applications are still taken: they settle when the pipeline catches up.
    let employee = gateway_as(port, "3117").await;
    let r = pb::ticket_reservation_service_client::TicketReservationServiceClient::new(employee)
        .reserve_ticket(reserve(3117, &day(2)))
        .await
        .unwrap()
        .into_inner();
    assert!(r.id > 0);
}
