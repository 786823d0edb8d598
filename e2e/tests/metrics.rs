//! Every service's `/metrics` after real traffic through the gateway: the RED series per
//! method and code, outbox backlog and age, consumer pending / redelivered / lag, quota per
//! date, the mesh's series; and the alert rules and dashboard under k8s/observability/
//! name only series (and histogram buckets) that really exist.
#![allow(clippy::unwrap_used)]

use parking_e2e::{
    day, eventually, free_port, gateway_as, metrics_at, reserve, Backend, Cluster, Svc,
};
use parking_proto::v1 as pb;
use std::collections::BTreeSet;
use std::time::Duration;

/// `(series name with labels, value)` of every sample line.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.starts_with("HTTP/"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The value of the first series whose name and labels contain every one of `parts`.
fn value(text: &str, parts: &[&str]) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|(series, _)| parts.iter().all(|p| series.contains(p)))
        .map(|(_, v)| v)
}

/// Metric names used in a PromQL expression (recording-rule names excluded).
fn names_in(expr: &str) -> Vec<String> {
    // Drop label matchers and grouping clauses: what is left are functions and names.
    let mut text = String::new();
    let mut depth = 0;
    for c in expr.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ if depth == 0 => text.push(c),
            _ => {}
        }
    }
    let text = regex_lite_strip_by(&text);
    const PROMQL: [&str; 12] = [
        "sum",
        "rate",
        "max",
        "by",
        "and",
        "or",
        "histogram_quantile",
        "clamp_min",
        "min",
        "avg",
        "without",
        "e",
    ];
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| !t.is_empty() && !t.chars().next().unwrap().is_ascii_digit())
        .filter(|t| !PROMQL.contains(t) && !t.contains(':'))
        .filter(|t| !["5m", "1h", "1d", "3d"].contains(t))
        .map(str::to_owned)
        .collect()
}

/// Removes `by (...)` groups (label names, not metrics).
fn regex_lite_strip_by(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("by (") {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(')').map_or(rest.len(), |e| e + 1);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exposes_its_series_and_the_rules_use_only_those() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let gateway_metrics = free_port();
    let port = c
        .start_gateway_with(&[("METRICS_LISTEN", &format!("127.0.0.1:{gateway_metrics}"))])
        .await;
    let employee = gateway_as(port, "3117").await;
    let mut reservations =
        pb::ticket_reservation_service_client::TicketReservationServiceClient::new(employee);
    let date = day(4);
    let r = reservations
        .reserve_ticket(reserve(3117, &date))
        .await
        .unwrap()
        .into_inner();
    let missing = reservations
        .get_reservation(pb::GetReservationRequest { id: 999_999 })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // Wait until the status view has seen the delivery order and the samplers (quota,
    // JetStream consumers: every 5 s) have run.
    let (c, date) = (&c, date.as_str());
    eventually(
        Duration::from_secs(30),
        "events handled and quota sampled",
        || async move {
            let lot = c.metrics(Svc::ParkingLot).await;
            let status = c.metrics(Svc::Status).await;
            let reservation = c.metrics(Svc::Reservation).await;
            let occupied = value(&lot, &["parking_quota_occupied", date])?;
            let delivered = value(
                &status,
                &["consumer_events_total", "status-delivery", "done"],
            )?;
            let settled = value(&reservation, &["consumer_events_total", "outcome=\"done\""])?;
            // The JetStream sampler (every 5 s) has read the durables once.
            value(&lot, &["consumer_pending"])?;
            value(&lot, &["consumer_redelivered"])?;
            (occupied >= 1.0 && delivered >= 1.0 && settled >= 1.0).then_some(())
        },
    )
    .await;

    let reservation = c.metrics(Svc::Reservation).await;
    let reserve_ok = [
        "rpc_server_calls_total",
        "TicketReservationService/ReserveTicket",
        "code=\"OK\"",
    ];
    assert_eq!(value(&reservation, &reserve_ok), Some(1.0), "{reservation}");
    let not_found = [
        "rpc_server_calls_total",
        "GetReservation",
        "code=\"NOT_FOUND\"",
    ];
    assert_eq!(value(&reservation, &not_found), Some(1.0));
    let latency = ["rpc_server_duration_seconds_count", "ReserveTicket"];
    assert_eq!(value(&reservation, &latency), Some(1.0));
    let slo_bucket = [
        "rpc_server_duration_seconds_bucket",
        "ReserveTicket",
        "le=\"0.1\"",
    ];
    assert!(
        value(&reservation, &slo_bucket).is_some(),
        "the SLO's 100 ms bucket exists"
    );
    assert_eq!(value(&reservation, &["outbox_backlog"]), Some(0.0));
    assert_eq!(
        value(&reservation, &["outbox_oldest_age_seconds"]),
        Some(0.0)
    );
    assert!(value(&reservation, &["outbox_published_total"]).unwrap() >= 1.0);
    let settled = ["consumer_events_total", "outcome=\"done\""];
    assert!(value(&reservation, &settled).unwrap() >= 1.0);

    let lot = c.metrics(Svc::ParkingLot).await;
    assert_eq!(value(&lot, &["parking_quota_occupied", date]), Some(1.0));
    assert!(value(&lot, &["parking_quota_capacity", date]).unwrap() >= 1.0);
    assert!(value(&lot, &["consumer_pending"]).is_some(), "{lot}");
    assert!(value(&lot, &["consumer_redelivered"]).is_some());
    assert!(lot.contains("mesh_circuit_open"), "{lot}");

    let status = c.metrics(Svc::Status).await;
    let lag = ["consumer_lag_seconds_count", "status-reservation"];
    assert!(value(&status, &lag).unwrap() >= 1.0);
    let lag_bucket = [
        "consumer_lag_seconds_bucket",
        "status-reservation",
        "le=\"1.0\"",
    ];
    assert!(
        value(&status, &lag_bucket).is_some(),
        "the SLO's 1 s bucket exists"
    );
    let lag_sum = value(&status, &["consumer_lag_seconds_sum", "status-reservation"]).unwrap();
    assert!((0.0..30.0).contains(&lag_sum), "plausible lag: {lag_sum}");

    let gateway = metrics_at(gateway_metrics).await;
    assert_eq!(value(&gateway, &reserve_ok), Some(1.0), "{gateway}");
    let touched = ["mesh_retries_total", "host=\"reservation\""];
    assert_eq!(
        value(&gateway, &touched),
        Some(0.0),
        "mesh series exist at zero"
    );

    // Every series the rules and the dashboard name is one of these.
    let mut exposed = BTreeSet::new();
    for text in [
        &reservation,
        &lot,
        &status,
        &c.metrics(Svc::Delivery).await,
        &gateway,
    ] {
        for (series, _) in samples(text) {
            let name = series.split('{').next().unwrap().to_owned();
            exposed.insert(name);
        }
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            // Families with no sample yet (a counter never incremented) still exist.
            let name = line.split_whitespace().nth(2).unwrap();
            exposed.insert(format!("{name}_total"));
            exposed.insert(name.to_owned());
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/observability");
    let rules = std::fs::read_to_string(root.join("prometheus-rules.yaml")).unwrap();
    let dashboard = std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let rules: serde_json::Value = serde_yaml_ng::from_str(&rules).unwrap();
    let mut exprs = Vec::new();
    let mut recorded = BTreeSet::new();
    for group in rules["spec"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
            if let Some(name) = rule["record"].as_str() {
                recorded.insert(name.to_owned());
            }
        }
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    let mut checked = 0;
    for expr in &exprs {
        for name in names_in(expr) {
            let known = exposed.contains(&name)
                || ["_bucket", "_count", "_sum"].iter().any(|s| {
                    name.strip_suffix(s)
                        .is_some_and(|base| exposed.contains(base))
                });
            assert!(known, "{name} (in {expr}) is not exposed by any service");
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} names checked");
    for expr in &exprs {
        for token in expr.split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
            if token.starts_with("slo:") {
                assert!(recorded.contains(token), "{token} is never recorded");
            }
        }
    }
    assert!(r.id > 0);
}
