//! The prod topology (`ProdCluster`: a 3-node JetStream cluster with streams replicated
//! three times, PostgreSQL, two replicas of every service, two gateways) under failure:
//! a NATS server and a replica of every service killed in the middle of a contended flow,
//! and a rolling restart of every process under steady load. Each prints its figures
//! (run with --no-capture to see them; docs/production.md keeps the measured ones).
//! The rolling restart's load is PROD_RATE calls/s (default 50), and PROD_DOWN_SECS keeps
//! each stopped replica down that long before it starts again (default 1).
#![allow(clippy::unwrap_used)]

use parking_common::identity::Role;
use parking_e2e::prod::{ProdCluster, ProdOptions};
use parking_e2e::{day, AuthChannel, Payload, Svc};
use parking_proto::v1 as pb;
use pb::ReservationStage as Stage;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

type Reservations =
    pb::ticket_reservation_service_client::TicketReservationServiceClient<AuthChannel>;
type Statuses = pb::reservation_status_service_client::ReservationStatusServiceClient<AuthChannel>;
type Deliveries = pb::ticket_delivery_service_client::TicketDeliveryServiceClient<AuthChannel>;

/// One gateway as one caller: the three clients over one channel.
#[derive(Clone)]
struct Gateway {
    reservations: Reservations,
    statuses: Statuses,
    deliveries: Deliveries,
}

async fn gateways(c: &ProdCluster, token: &str) -> Vec<Gateway> {
    let mut all = Vec::new();
    for g in 0..c.gateway_ports().len() {
        all.push(gateway(c, g, token).await);
    }
    all
}

async fn gateway(c: &ProdCluster, g: usize, token: &str) -> Gateway {
    let channel = c.gateway(g, token).await;
    Gateway {
        reservations: Reservations::new(channel.clone()),
        statuses: Statuses::new(channel.clone()),
        deliveries: Deliveries::new(channel),
    }
}

/// Connections an ingress keeps to each gateway in the load test: one HTTP/2 connection
/// carries at most 100 calls at once (EDGE_MAX_CONCURRENT_STREAMS); calls past that wait
/// in the client, and a GOAWAY fails the waiting ones (they never reached the gateway).
const CONNECTIONS_PER_GATEWAY: usize = 4;

fn secs(since: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(since).as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------------------
// 1. Failover

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Confirmed,
    Rejected,
}

#[derive(Debug, Clone)]
struct App {
    date: String,
    /// When the application was first sent, and when the gateway accepted it (s from t0).
    sent: f64,
    accepted: f64,
    settled: Option<f64>,
    outcome: Option<Outcome>,
    stage: Stage,
    cancel: bool,
    cancelled: bool,
    shipped: bool,
}

#[derive(Default)]
struct Flow {
    apps: HashMap<i64, App>,
    /// Failed attempts of calls through the gateways: (s from t0, call, code).
    failures: Vec<(f64, &'static str, Code)>,
    /// Every observed settlement (s from t0), in order.
    settlements: Vec<f64>,
    /// The watcher's rounds: (start, duration), s. A settlement is seen at most one round late.
    rounds: Vec<(f64, f64)>,
}

/// Reserve with a request id of its own, retried (same id: the first result) until
/// answered; alternates gateways between attempts as an ingress would.
async fn apply(
    gws: Vec<Gateway>,
    flow: Arc<Mutex<Flow>>,
    t0: Instant,
    i: usize,
    member: i64,
    date: String,
) {
    let request_id = uuid::Uuid::new_v4().to_string();
    let sent = secs(t0, Instant::now());
    for attempt in 0.. {
        let mut client = gws[(i + attempt) % gws.len()].reservations.clone();
        let call = client.reserve_ticket(pb::ReserveTicketRequest {
            member_id: member,
            reservation_date: date.clone(),
            request_id: request_id.clone(),
        });
        let answer = tokio::time::timeout(Duration::from_secs(10), call).await;
        match answer {
            Ok(Ok(r)) => {
                let id = r.into_inner().id;
                let accepted = secs(t0, Instant::now());
                flow.lock().unwrap().apps.insert(
                    id,
                    App {
                        date,
                        sent,
                        accepted,
                        settled: None,
                        outcome: None,
                        stage: Stage::StageUnspecified,
                        // A third of each day's applications, whatever their id.
                        cancel: (i / 3).is_multiple_of(3),
                        cancelled: false,
                        shipped: false,
                    },
                );
                return;
            }
            Ok(Err(status)) => {
                flow.lock().unwrap().failures.push((
                    secs(t0, Instant::now()),
                    "ReserveTicket",
                    status.code(),
                ));
            }
            Err(_) => flow.lock().unwrap().failures.push((
                secs(t0, Instant::now()),
                "ReserveTicket",
                Code::DeadlineExceeded,
            )),
        }
        assert!(
            secs(t0, Instant::now()) - sent < 90.0,
            "application of member {member} not accepted within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every status of a date, through a gateway.
async fn statuses_of(gw: &mut Gateway, date: &str) -> Result<Vec<pb::ReservationStatus>, Code> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = gw
            .statuses
            .list_reservation_statuses(pb::ListReservationStatusesRequest {
                member_id: 0,
                reservation_date: date.to_owned(),
                page_size: 200,
                page_token,
            })
            .await
            .map_err(|s| s.code())?
            .into_inner();
        all.extend(page.statuses);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// One round of the employees and the manager: reads the view of every date, notes what
/// settled, cancels the confirmed applications chosen for it and ships the others.
async fn watch_round(
    gws: &mut [Gateway],
    manager: &mut [Gateway],
    flow: &Mutex<Flow>,
    t0: Instant,
    dates: &[String],
    round: usize,
) {
    let n = gws.len();
    let mut to_cancel = Vec::new();
    let mut to_ship = HashSet::new();
    for (d, date) in dates.iter().enumerate() {
        let gw = &mut gws[(round + d) % n];
        let list = match statuses_of(gw, date).await {
            Ok(list) => list,
            Err(code) => {
                flow.lock().unwrap().failures.push((
                    secs(t0, Instant::now()),
                    "ListReservationStatuses",
                    code,
                ));
                continue;
            }
        };
        let now = secs(t0, Instant::now());
        let mut flow = flow.lock().unwrap();
        for s in list {
            let stage = s.stage();
            let Some(app) = flow.apps.get_mut(&s.reservation_id) else {
                continue;
            };
            app.stage = stage;
            let outcome = match stage {
                Stage::StageFullyOccupied => Some(Outcome::Rejected),
                Stage::StageUnspecified | Stage::StageReserved => None,
                _ => Some(Outcome::Confirmed),
            };
            if app.outcome.is_none() && outcome.is_some() {
                app.outcome = outcome;
                app.settled = Some(now);
                flow.settlements.push(now);
            }
            let app = flow.apps.get_mut(&s.reservation_id).unwrap();
            if app.outcome == Some(Outcome::Confirmed) {
                if app.cancel && !app.cancelled {
                    to_cancel.push(s.reservation_id);
                } else if !app.cancel && !app.shipped && stage == Stage::StageDeliveryRequested {
                    to_ship.insert(s.reservation_id);
                }
            }
        }
    }
    for id in to_cancel {
        let mut client = gws[(id as usize + round) % n].reservations.clone();
        let answer = client
            .cancel_reservation(pb::CancelReservationRequest { id })
            .await;
        let mut flow = flow.lock().unwrap();
        match answer {
            // FAILED_PRECONDITION: already cancelled (an earlier try got through).
            Ok(_) => flow.apps.get_mut(&id).unwrap().cancelled = true,
            Err(s) if s.code() == Code::FailedPrecondition => {
                flow.apps.get_mut(&id).unwrap().cancelled = true
            }
            Err(s) => flow
                .failures
                .push((secs(t0, Instant::now()), "CancelReservation", s.code())),
        }
    }
    if to_ship.is_empty() {
        return;
    }
    for (d, date) in dates.iter().enumerate() {
        let gw = &mut manager[(round + d) % n];
        let list = gw
            .deliveries
            .list_deliveries(pb::ListDeliveriesRequest {
                reservation_date: date.clone(),
                state: pb::DeliveryState::DeliveryRequested as i32,
                page_size: 200,
                ..Default::default()
            })
            .await;
        let Ok(list) = list else { continue };
        for delivery in list.into_inner().deliveries {
            if !to_ship.contains(&delivery.reservation_id) {
                continue;
            }
            let shipped = gw
                .deliveries
                .ship_ticket(pb::ShipTicketRequest {
                    delivery_id: delivery.id,
                })
                .await;
            if shipped.is_ok() {
                let mut flow = flow.lock().unwrap();
                flow.apps.get_mut(&delivery.reservation_id).unwrap().shipped = true;
            }
        }
    }
}

fn final_stage(app: &App) -> Option<Stage> {
    match app.outcome? {
        Outcome::Rejected => Some(Stage::StageFullyOccupied),
        Outcome::Confirmed if app.cancel => Some(Stage::StageVacated),
        Outcome::Confirmed => Some(Stage::StageShipped),
    }
}

/// What one kill did to the flow: the calls that failed, how long applications sent in
/// the `window` seconds after it took to be accepted and to settle, the longest pause
/// between two settlements.
fn stall_report(what: &str, at: f64, window: f64, flow: &Flow) -> String {
    let sent: Vec<&App> = flow
        .apps
        .values()
        .filter(|a| a.sent >= at && a.sent < at + window)
        .collect();
    let accept = sent.iter().map(|a| a.accepted - a.sent).fold(0.0, f64::max);
    let mut settle: Vec<f64> = sent
        .iter()
        .filter_map(|a| Some(a.settled? - a.sent))
        .collect();
    settle.sort_by(f64::total_cmp);
    let (settle_p50, settle) = (percentile(&settle, 0.5), percentile(&settle, 1.0));
    let failed = flow
        .failures
        .iter()
        .filter(|(t, _, _)| *t >= at && *t < at + window)
        .count();
    let mut marks: Vec<f64> = flow
        .settlements
        .iter()
        .copied()
        .filter(|t| *t >= at && *t < at + window)
        .collect();
    marks.insert(0, at);
    let gap = marks.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    let round = flow
        .rounds
        .iter()
        .filter(|(t, _)| *t >= at && *t < at + window)
        .map(|(_, d)| *d)
        .fold(0.0, f64::max);
    format!(
        "{what:<44} at {at:5.1} s: {failed:3} failed calls, slowest accept {accept:5.2} s, settle p50 {settle_p50:5.2} s max {settle:5.2} s, longest pause between settlements {gap:5.2} s (view read every {round:4.2} s at worst; {} applications sent in the next {window:.1} s)",
        sent.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_loses_nothing_applies_nothing_twice_and_holds_the_quota() {
    const CAPACITY: i32 = 20;
    const RATE: f64 = 10.0;
    const APPLICATIONS: usize = 340;
    let mut c = ProdCluster::start(ProdOptions {
        max_parking: CAPACITY,
        ..Default::default()
    })
    .await;
    let dates = [day(2), day(3), day(4)];
    let admin = gateways(&c, &c.token("admin", Role::Admin)).await;
    let manager = gateways(&c, &c.token("manager", Role::Manager)).await;
    let flow = Arc::new(Mutex::new(Flow::default()));
    let t0 = Instant::now();

    // Applications, open loop: each sent on time whatever happened to the ones before.
    let sender = {
        let (gws, flow, dates) = (admin.clone(), flow.clone(), dates.clone());
        tokio::spawn(async move {
            let mut calls = Vec::new();
            for i in 0..APPLICATIONS {
                tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / RATE)).into())
                    .await;
                let member = 10_000 + i as i64;
                let date = dates[i % dates.len()].clone();
                calls.push(tokio::spawn(apply(
                    gws.clone(),
                    flow.clone(),
                    t0,
                    i,
                    member,
                    date,
                )));
            }
            for call in calls {
                call.await.unwrap();
            }
        })
    };
    // The employees and the manager follow the view.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (mut gws, mut manager, flow, dates, done) = (
            admin.clone(),
            manager.clone(),
            flow.clone(),
            dates.clone(),
            done.clone(),
        );
        tokio::spawn(async move {
            let mut round = 0;
            while !done.load(Ordering::Relaxed) {
                let start = Instant::now();
                watch_round(&mut gws, &mut manager, &flow, t0, &dates, round).await;
                let took = start.elapsed().as_secs_f64();
                flow.lock().unwrap().rounds.push((secs(t0, start), took));
                round += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // The kills, in the middle of the flow, 14 s apart and then 7 s: the pipeline's
    // stall after losing a stream leader lasts up to 10 s, and the replicas' kill must not
    // fall inside it (its figures would be the NATS kill's).
    let at = |s: f64| tokio::time::sleep_until((t0 + Duration::from_secs_f64(s)).into());
    at(6.0).await;
    // The server leading the reservation stream: its followers must elect a new leader
    // before TicketReserved is stored again.
    let victim = c.stream_leader("reservation").await;
    let nats_killed = secs(t0, Instant::now());
    c.kill_nats(victim).await;
    at(20.0).await;
    let services_killed = secs(t0, Instant::now());
    for svc in Svc::ALL {
        c.kill_replica(svc, 1).await;
    }
    // And the second gateway: the client's calls in flight there fail and are sent again
    // to the first (an ingress's retry); the first one's keys stay up for the backends.
    c.kill_gateway(1).await;
    at(27.0).await;
    let restarted = secs(t0, Instant::now());
    for svc in Svc::ALL {
        c.start_replica(svc, 1).await;
    }
    c.start_gateway(1).await;
    let replicas_back = secs(t0, Instant::now());
    c.start_nats(victim).await;
    c.wait_nats_ready(victim).await;
    let nats_back = secs(t0, Instant::now());
    sender.await.unwrap();

    // Every application reaches its final stage.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending: Vec<(i64, App)> = {
            let flow = flow.lock().unwrap();
            flow.apps
                .iter()
                .filter(|(_, a)| final_stage(a) != Some(a.stage))
                .map(|(id, a)| (*id, a.clone()))
                .collect()
        };
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            c.base.dump_logs();
            panic!(
                "{} applications short of their final stage after 60 s, e.g. {:?}",
                pending.len(),
                &pending[..pending.len().min(5)]
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let settled_all = secs(t0, Instant::now());
    done.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    let flow = Arc::try_unwrap(flow).ok().unwrap().into_inner().unwrap();
    assert_eq!(
        flow.apps.len(),
        APPLICATIONS,
        "every application accepted once"
    );

    // The figures.
    let baseline = stall_report("before any kill (baseline)", 0.0, nats_killed, &flow);
    println!(
        "failover figures (capacity {CAPACITY}/day, {} dates, {RATE}/s applications):",
        dates.len()
    );
    println!("  {baseline}");
    println!(
        "  {}",
        stall_report(
            &format!("kill -9 nats-{victim} (leads the reservation stream)"),
            nats_killed,
            services_killed - nats_killed,
            &flow
        )
    );
    println!(
        "  {}",
        stall_report(
            "kill -9 the second replica of everything",
            services_killed,
            restarted - services_killed,
            &flow
        )
    );
    println!(
        "  {}",
        stall_report(
            &format!("restart those replicas, then nats-{victim}"),
            restarted,
            7.0,
            &flow
        )
    );
    println!(
        "  the replicas healthy again {:.1} s after their restart began; nats-{victim} current again {:.1} s after its start; all {} applications final at {settled_all:.1} s",
        replicas_back - restarted,
        nats_back - replicas_back,
        flow.apps.len()
    );
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for (_, call, code) in &flow.failures {
        *codes.entry(format!("{call} {code:?}")).or_default() += 1;
    }
    println!("  failed call attempts (each retried until answered): {codes:?}");

    // Nothing applied twice: every event once in its stream, one decision per application.
    let reservation_events = c.events("reservation").await;
    let lot_events = c.events("parkinglot").await;
    let delivery_events = c.events("delivery").await;
    for (name, events) in [
        ("reservation", &reservation_events),
        ("parkinglot", &lot_events),
        ("delivery", &delivery_events),
    ] {
        let mut seen = HashSet::new();
        for (_, e) in events.iter() {
            assert!(
                seen.insert(e.event_id.clone()),
                "event {} twice in {name}",
                e.event_id
            );
        }
    }
    let mut reserved: HashMap<i64, usize> = HashMap::new();
    let mut canceled: HashMap<i64, usize> = HashMap::new();
    for (_, e) in &reservation_events {
        match &e.payload {
            Some(Payload::TicketReserved(r)) => *reserved.entry(r.reservation_id).or_default() += 1,
            Some(Payload::TicketReservationCanceled(r)) => {
                *canceled.entry(r.reservation_id).or_default() += 1
            }
            _ => {}
        }
    }
    for (id, app) in &flow.apps {
        assert_eq!(reserved.get(id), Some(&1), "TicketReserved of {id} once");
        let cancels = canceled.get(id).copied().unwrap_or(0);
        let want = usize::from(app.cancel && app.outcome == Some(Outcome::Confirmed));
        assert_eq!(cancels, want, "TicketReservationCanceled of {id}");
    }
    assert_eq!(
        reserved.len(),
        flow.apps.len(),
        "no application that was not accepted"
    );

    // The quota, exact: in the order the days' lock gave (occurred_at), a day never holds
    // more than its capacity, no space is held twice, and what is held at the end is
    // exactly the confirmed applications not cancelled.
    let mut decided: HashMap<i64, usize> = HashMap::new();
    let mut vacated: HashSet<i64> = HashSet::new();
    let mut ordered: Vec<&pb::EventEnvelope> = lot_events.iter().map(|(_, e)| e).collect();
    ordered.sort_by_key(|e| e.occurred_at.map(|t| (t.seconds, t.nanos)));
    let mut held: HashMap<String, HashSet<i32>> = HashMap::new();
    for e in ordered {
        match &e.payload {
            Some(Payload::Occupied(o)) => {
                *decided.entry(o.reservation_id).or_default() += 1;
                let app = &flow.apps[&o.reservation_id];
                assert_eq!(
                    app.outcome,
                    Some(Outcome::Confirmed),
                    "{} occupied",
                    o.reservation_id
                );
                assert!(
                    (1..=CAPACITY).contains(&o.space_number),
                    "space {}",
                    o.space_number
                );
                let day = held.entry(o.reservation_date.clone()).or_default();
                assert!(
                    day.insert(o.space_number),
                    "space {} of {} handed out while held",
                    o.space_number,
                    o.reservation_date
                );
                assert!(
                    day.len() <= CAPACITY as usize,
                    "{} over capacity",
                    o.reservation_date
                );
            }
            Some(Payload::FullyOccupied(f)) => {
                *decided.entry(f.reservation_id).or_default() += 1;
                assert_eq!(
                    flow.apps[&f.reservation_id].outcome,
                    Some(Outcome::Rejected)
                );
            }
            Some(Payload::Vacated(v)) => {
                assert!(
                    vacated.insert(v.reservation_id),
                    "{} vacated twice",
                    v.reservation_id
                );
                assert!(
                    flow.apps[&v.reservation_id].cancel,
                    "{} vacated",
                    v.reservation_id
                );
                let day = held.entry(v.reservation_date.clone()).or_default();
                assert!(
                    day.remove(&v.space_number),
                    "vacated space {} not held",
                    v.space_number
                );
            }
            _ => {}
        }
    }
    for id in flow.apps.keys() {
        assert_eq!(
            decided.get(id),
            Some(&1),
            "one Occupied or FullyOccupied for {id}"
        );
    }
    let mut lot = pb::parking_lot_service_client::ParkingLotServiceClient::new(
        c.gateway(0, &c.token("admin", Role::Admin)).await,
    );
    let mut summary = Vec::new();
    for date in &dates {
        let kept = flow
            .apps
            .values()
            .filter(|a| &a.date == date && a.outcome == Some(Outcome::Confirmed) && !a.cancel)
            .count();
        let availability = lot
            .get_daily_availability(pb::GetDailyAvailabilityRequest { date: date.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            availability.occupied as usize, kept,
            "{date}: occupied == confirmed and kept"
        );
        assert_eq!(
            held[date].len(),
            kept,
            "{date}: Occupied minus Vacated == confirmed and kept"
        );
        let confirmed = flow
            .apps
            .values()
            .filter(|a| &a.date == date && a.outcome == Some(Outcome::Confirmed))
            .count();
        summary.push(format!(
            "{date}: {} applications, {confirmed} confirmed ({} cancelled and vacated), {kept} held of {CAPACITY}",
            flow.apps.values().filter(|a| &a.date == date).count(),
            confirmed - kept
        ));
    }
    println!("  {}", summary.join("; "));
}

// ---------------------------------------------------------------------------------------
// 2. Zero downtime

#[derive(Debug, Clone)]
struct Call {
    start: f64,
    latency: f64,
    kind: &'static str,
    code: Code,
    /// Which gateway, and the status message of a failure.
    gateway: usize,
    message: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_answers_every_call() {
    // Calls per second, half ReserveTicket, half GetReservationStatus (PROD_RATE to change).
    let rate: u32 = std::env::var("PROD_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(50);
    let down = Duration::from_secs_f64(
        std::env::var("PROD_DOWN_SECS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(1.0),
    );
    let mut c = ProdCluster::start(ProdOptions {
        max_parking: 10_000,
        ..Default::default()
    })
    .await;
    let dates: Vec<String> = (2..7).map(day).collect();
    let token = c.token("admin", Role::Admin);
    let mut pools = Vec::new();
    for g in 0..c.gateway_ports().len() {
        let mut pool = Vec::new();
        for _ in 0..CONNECTIONS_PER_GATEWAY {
            pool.push(gateway(&c, g, &token).await);
        }
        pools.push(pool);
    }
    // A gateway being restarted is out of rotation first, as a Service's endpoints drop a
    // terminating pod (the ingress sends it nothing new).
    let rotation: Arc<[AtomicBool; 2]> = Arc::new([AtomicBool::new(true), AtomicBool::new(true)]);
    let calls = Arc::new(Mutex::new(Vec::<Call>::new()));
    let reserved = Arc::new(Mutex::new(Vec::<(f64, i64)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reopened = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let load = {
        let reopened = reopened.clone();
        let (pools, rotation, calls, reserved, stop, dates) = (
            pools.clone(),
            rotation.clone(),
            calls.clone(),
            reserved.clone(),
            stop.clone(),
            dates.clone(),
        );
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for k in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep_until((t0 + Duration::from_secs(k) / rate).into()).await;
                let mut g = (k as usize) % pools.len();
                if !rotation[g].load(Ordering::Relaxed) {
                    g = (g + 1) % pools.len();
                }
                let pool = &pools[g];
                let mut gw = pool[(k as usize / pools.len()) % pool.len()].clone();
                let now = secs(t0, Instant::now());
                // The status of an application accepted at least two seconds ago.
                let known = {
                    let reserved = reserved.lock().unwrap();
                    let i = reserved.partition_point(|(t, _)| *t <= now - 2.0);
                    (i > 0).then(|| reserved[(k as usize / 2) % i].1)
                };
                let date = dates[(k as usize) % dates.len()].clone();
                let (calls, reserved, reopened) =
                    (calls.clone(), reserved.clone(), reopened.clone());
                tasks.push(tokio::spawn(async move {
                    let start = Instant::now();
                    let (kind, answer) = match known.filter(|_| k % 2 == 1) {
                        // One in five status reads is a watch (a server stream): its
                        // first message is the current status.
                        Some(id) if k % 10 == 5 => {
                            let mut statuses = gw.statuses.clone();
                            let reopened = reopened.clone();
                            // A watch its server ends (drained on SIGTERM) before its first
                            // message is opened again once, as a watching client does.
                            let answer = async move {
                                for attempt in 0..2 {
                                    let mut stream = statuses
                                        .watch_reservation_status(
                                            pb::WatchReservationStatusRequest {
                                                reservation_id: id,
                                            },
                                        )
                                        .await?
                                        .into_inner();
                                    if let Some(first) = stream.message().await? {
                                        return Ok(first);
                                    }
                                    if attempt == 0 {
                                        reopened.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                Err(tonic::Status::unavailable(
                                    "the watch ended twice before its first message",
                                ))
                            };
                            let answer = tokio::time::timeout(Duration::from_secs(10), answer)
                                .await
                                .unwrap_or_else(|_| {
                                    Err(tonic::Status::deadline_exceeded(
                                        "no first message in 10 s",
                                    ))
                                });
                            ("WatchReservationStatus", answer.map(|_| ()))
                        }
                        Some(id) => {
                            let answer = gw
                                .statuses
                                .get_reservation_status(pb::GetReservationStatusRequest {
                                    reservation_id: id,
                                    ..Default::default()
                                })
                                .await;
                            ("GetReservationStatus", answer.map(|_| ()))
                        }
                        None => {
                            let answer = gw
                                .reservations
                                .reserve_ticket(parking_e2e::reserve(100_000 + k as i64, &date))
                                .await;
                            match answer {
                                Ok(r) => {
                                    let at = secs(t0, Instant::now());
                                    let mut reserved = reserved.lock().unwrap();
                                    let i = reserved.partition_point(|(t, _)| *t <= at);
                                    reserved.insert(i, (at, r.into_inner().id));
                                    ("ReserveTicket", Ok(()))
                                }
                                Err(s) => ("ReserveTicket", Err(s)),
                            }
                        }
                    };
                    let (code, message) = match answer {
                        Ok(()) => (Code::Ok, String::new()),
                        Err(s) => (s.code(), s.message().to_owned()),
                    };
                    calls.lock().unwrap().push(Call {
                        start: secs(t0, start),
                        latency: start.elapsed().as_secs_f64(),
                        kind,
                        code,
                        gateway: g,
                        message,
                    });
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        })
    };

    // Warm up, then every replica of every service in turn, then the gateways.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let began = secs(t0, Instant::now());
    let mut steps = Vec::new();
    let mut mesh_report = Vec::new();
    for svc in Svc::ALL {
        for i in 0..c.options.replicas {
            let at = secs(t0, Instant::now());
            let stopped = c.stop_replica(svc, i).await;
            // A replica that takes longer to come back (PROD_DOWN_SECS: migrations, a cold
            // node) stays in the gateways' endpoint lists all the while.
            tokio::time::sleep(down).await;
            c.start_replica(svc, i).await;
            steps.push((
                format!("{}-{i}", svc.binary()),
                at,
                stopped,
                secs(t0, Instant::now()),
            ));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // What the gateways' mesh did: retries and fail-fast answers per backend host.
    for g in 0..c.gateway_ports().len() {
        let text = c.gateway_metrics(g).await;
        let mesh: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("mesh_retries_total") || l.starts_with("mesh_fail_fast_total")
            })
            .collect();
        mesh_report.push(format!(
            "  gateway-{g} (backends' restarts): {}",
            mesh.join(", ")
        ));
    }
    for g in 0..c.gateway_ports().len() {
        rotation[g].store(false, Ordering::Relaxed);
        // The endpoint's removal reaches the ingress before the signal (preStop).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let at = secs(t0, Instant::now());
        let stopped = c.stop_gateway(g).await;
        c.start_gateway(g).await;
        rotation[g].store(true, Ordering::Relaxed);
        steps.push((
            format!("gateway-{g}"),
            at,
            stopped,
            secs(t0, Instant::now()),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let ended = secs(t0, Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    let calls = calls.lock().unwrap().clone();
    let failed: Vec<&Call> = calls
        .iter()
        .filter(|c| c.code != Code::Ok && (c.code != Code::NotFound || c.kind == "ReserveTicket"))
        .collect();
    let not_found = calls
        .iter()
        .filter(|c| c.code == Code::NotFound && c.kind != "ReserveTicket")
        .count();
    let mut during: Vec<f64> = calls
        .iter()
        .filter(|c| c.start >= began && c.start < ended)
        .map(|c| c.latency)
        .collect();
    during.sort_by(f64::total_cmp);
    let mut before: Vec<f64> = calls
        .iter()
        .filter(|c| c.start < began)
        .map(|c| c.latency)
        .collect();
    before.sort_by(f64::total_cmp);
    println!(
        "rolling restart figures ({rate} calls/s through two gateways: ReserveTicket, GetReservationStatus, one in ten a WatchReservationStatus):"
    );
    println!(
        "  {} calls, {} failed, {not_found} status reads NOT_FOUND (view not there yet), {} watches opened again (ended by a draining replica before their first message); restart took {:.1} s",
        calls.len(),
        failed.len(),
        reopened.load(Ordering::Relaxed),
        ended - began
    );
    println!(
        "  latency before: p50 {:.0} ms, p99 {:.0} ms; during the restart ({} calls): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&before, 0.5) * 1e3,
        percentile(&before, 0.99) * 1e3,
        during.len(),
        percentile(&during, 0.5) * 1e3,
        percentile(&during, 0.99) * 1e3,
        percentile(&during, 1.0) * 1e3,
    );
    for line in &mesh_report {
        println!("{line}");
    }
    for (name, at, stopped, back) in &steps {
        let failed_here = failed
            .iter()
            .filter(|c| c.start + c.latency >= *at && c.start + c.latency < *back + 1.0)
            .count();
        println!(
            "  {name:<14} SIGTERM at {at:5.1} s, exited after {:4.2} s, healthy again at {back:5.1} s, {failed_here} calls failed meanwhile",
            stopped.as_secs_f64()
        );
    }
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for call in &failed {
        *codes
            .entry(format!("{} {:?}", call.kind, call.code))
            .or_default() += 1;
    }
    for call in calls
        .iter()
        .filter(|c| c.code == Code::NotFound && c.kind != "ReserveTicket")
        .take(5)
    {
        println!(
            "  not found: {} at {:.2} s through gateway-{}: {}",
            call.kind, call.start, call.gateway, call.message
        );
    }
    for call in failed.iter().take(12) {
        println!(
            "  failed: {} at {:.2} s through gateway-{} after {:.2} s: {:?} {}",
            call.kind, call.start, call.gateway, call.latency, call.code, call.message
        );
    }
    assert!(
        failed.is_empty(),
        "calls failed during the rolling restart: {codes:?}"
    );
}
