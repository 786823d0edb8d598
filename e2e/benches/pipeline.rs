//! Benchmark of the whole event pipeline under the load users put on it (run: `make bench`;
//! it starts the release binaries of every service, so NATS and PostgreSQL must be up).
//!
//! For each database (SQLite, then PostgreSQL) one cluster with the gateway in front of it
//! (rate limits out of the way, capacity 1,000,000 a day so the quota is not what is
//! measured) takes, through the gateway with an admin's JWT:
//!
//! - **open-loop steps**: ReserveTicket at a fixed offered rate (100 ... 4000 calls/s), each
//!   call spawned on a smooth ticker whatever the answers, spread over [`CONNECTIONS`]
//!   HTTP/2 connections; every call a new application (a unique member, a day 1..=29 ahead).
//!   Per step: the answered rate, errors by code, ReserveTicket p50/p99 (from the moment
//!   the call was due), the reserve -> view lag p50/p99 on a sample of at most
//!   `PIPELINE_SAMPLES` calls a second (from ReserveTicket's answer until
//!   WatchReservationStatus first shows a stage beyond RESERVED; the watch is a server
//!   stream, so the sampler does not poll the system it measures), how many sampled views
//!   did not arrive within 10 s, and how long after the step the backlog was back to
//!   zero (the step's last applications watched the same way, then JetStream's consumers
//!   confirmed with nothing pending or unacknowledged). The next step starts only then,
//!   or after [`DRAIN_CAP`];
//! - **a closed loop on REST**: 1000 HTTP/1.1 connections, each POSTing
//!   /ticketReservations as fast as it is answered, for 10 s.
//!
//! The ceiling of the machine and the client: the same steps against an in-process tonic
//! server whose ReserveTicket answers at once with a fixed reservation.
//!
//! The knee: the highest offered rate whose view lag p99 is at most 1 s and whose backlog
//! is back to zero within 5 s of the step's end.
//!
//! Prints markdown tables and writes them to `bench/results/pipeline-<date>.md`, and a plot
//! of the p99s to `bench/results/pipeline.png`. Settings (environment):
//! `PIPELINE_RATES` (comma list of calls/s), `PIPELINE_STEP_SECS`, `PIPELINE_SAMPLES`
//! (sampled views a second), `PIPELINE_BACKENDS` (`sqlite,postgres`),
//! `PIPELINE_REST_CONNECTIONS`, `PIPELINE_REST_SECS` (0: no closed loop),
//! `PIPELINE_REPORT`, `PIPELINE_PLOT`, `PIPELINE_FONT` (a TTF for the plot's text),
//! `PIPELINE_LOGS` (a folder to keep the services' logs in), `PIPELINE_CODE` (the label of
//! the code under test; default: this checkout's commit).
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use parking_e2e::{day, login, with_token, AuthChannel, Backend, Cluster, Options, Svc};
use parking_proto::v1 as pb;
use pb::reservation_status_service_client::ReservationStatusServiceClient as StatusClient;
use pb::ticket_reservation_service_client::TicketReservationServiceClient as ReserveClient;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// HTTP/2 connections the open-loop calls are spread over, as many users would be.
const CONNECTIONS: usize = 12;
/// A sampled view that has not left RESERVED by then is counted as lost.
const VIEW_WAIT: Duration = Duration::from_secs(10);
/// The longest wait for the backlog after a step.
const DRAIN_CAP: Duration = Duration::from_secs(60);
/// How often JetStream's consumers are asked whether they are idle, once the step's last
/// applications have settled (slow on purpose: the question itself is load).
const JS_POLL: Duration = Duration::from_millis(500);
/// The step's last applications, watched to see the backlog drain.
const TAIL: u64 = 5;
/// A call not answered by then is counted as a client timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The knee: view lag p99 and backlog drain at most these.
const KNEE_LAG: Duration = Duration::from_secs(1);
const KNEE_DRAIN: Duration = Duration::from_secs(5);
/// Days ahead the applications are spread over (inside the 30-day booking window).
const DAYS: i64 = 29;

struct Settings {
    rates: Vec<u32>,
    step: Duration,
    samples_per_sec: f64,
    backends: Vec<Backend>,
    rest_connections: usize,
    rest_time: Duration,
    report: PathBuf,
    plot: PathBuf,
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the e2e crate lives in the workspace")
            .join("bench/results");
        let rates = std::env::var("PIPELINE_RATES")
            .unwrap_or_else(|_| "100,250,500,1000,2000,4000".into())
            .split(',')
            .map(|r| {
                r.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|r| *r > 0)
                    .unwrap_or_else(|| panic!("PIPELINE_RATES: {r:?} is not a positive rate"))
            })
            .collect();
        let backends = std::env::var("PIPELINE_BACKENDS")
            .unwrap_or_else(|_| "sqlite,postgres".into())
            .split(',')
            .map(|b| match b.trim() {
                "sqlite" => Backend::Sqlite,
                "postgres" => Backend::Postgres,
                other => panic!("PIPELINE_BACKENDS: {other:?} is neither sqlite nor postgres"),
            })
            .collect();
        let date = chrono::Utc::now().format("%Y-%m-%d");
        Settings {
            rates,
            step: Duration::from_secs_f64(env_or("PIPELINE_STEP_SECS", 8.0)),
            samples_per_sec: env_or("PIPELINE_SAMPLES", 20.0),
            backends,
            rest_connections: env_or("PIPELINE_REST_CONNECTIONS", 1000),
            rest_time: Duration::from_secs_f64(env_or("PIPELINE_REST_SECS", 10.0)),
            report: std::env::var("PIPELINE_REPORT")
                .map(PathBuf::from)
                .unwrap_or_else(|_| root.join(format!("pipeline-{date}.md"))),
            plot: std::env::var("PIPELINE_PLOT")
                .map(PathBuf::from)
                .unwrap_or_else(|_| root.join("pipeline.png")),
        }
    }
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "PostgreSQL",
    }
}

// ---------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------

/// The connections one side is driven over.
#[derive(Clone)]
struct Pool {
    reserve: Vec<ReserveClient<AuthChannel>>,
    /// Empty for the ceiling: nothing behind it to watch.
    status: Vec<StatusClient<AuthChannel>>,
}

impl Pool {
    async fn new(port: u16, token: Option<&str>, watch: bool) -> Pool {
        let mut pool = Pool {
            reserve: Vec::new(),
            status: Vec::new(),
        };
        for _ in 0..CONNECTIONS {
            // Each channel is a connection of its own; the watches share it.
            let channel = with_token(port, token).await;
            if watch {
                pool.status.push(StatusClient::new(channel.clone()));
            }
            pool.reserve.push(ReserveClient::new(channel));
        }
        pool
    }
}

/// Unique members, and the days they apply for.
struct Applicants {
    next_member: AtomicI64,
    days: Vec<String>,
}

impl Applicants {
    fn new() -> Applicants {
        Applicants {
            next_member: AtomicI64::new(1),
            days: (1..=DAYS as u64).map(day).collect(),
        }
    }

    fn next(&self) -> (i64, String) {
        let member = self.next_member.fetch_add(1, Ordering::Relaxed);
        (member, self.days[(member % DAYS) as usize].clone())
    }
}

/// What a watch saw of one application.
enum Watched {
    /// The instant the view first showed a stage beyond RESERVED.
    Settled(Instant),
    /// Not by the deadline.
    Late,
    /// The watch itself failed (code).
    Failed(String),
}

/// Watches an application until its view leaves RESERVED, or `deadline`.
async fn watch(mut status: StatusClient<AuthChannel>, id: i64, deadline: Instant) -> Watched {
    let settled = async {
        let mut stream = status
            .watch_reservation_status(pb::WatchReservationStatusRequest { reservation_id: id })
            .await?
            .into_inner();
        while let Some(view) = stream.message().await? {
            if !matches!(
                view.stage(),
                pb::ReservationStage::StageUnspecified | pb::ReservationStage::StageReserved
            ) {
                return Ok(Some(Instant::now()));
            }
        }
        Ok::<_, tonic::Status>(None)
    };
    match tokio::time::timeout_at(deadline, settled).await {
        Ok(Ok(Some(at))) => Watched::Settled(at),
        Ok(Ok(None)) => Watched::Failed("stream ended".into()),
        Ok(Err(status)) => Watched::Failed(format!("{:?}", status.code())),
        Err(_) => Watched::Late,
    }
}

/// The role of one call in a step.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Plain,
    /// Its reserve -> view lag is measured.
    Sampled,
    /// One of the step's last: shows when the backlog drained.
    Tail,
}

/// What became of one call.
struct Call {
    /// How long after it was due the call was sent (the client falling behind).
    late: Duration,
    /// Sent -> answered, and when answered; the error's code otherwise.
    answer: Result<(Duration, Instant), (String, String)>,
    /// For sampled and tail calls that were answered.
    watched: Option<(Role, Instant, Watched)>,
}

async fn one_call(
    mut reserve: ReserveClient<AuthChannel>,
    status: Option<StatusClient<AuthChannel>>,
    applicants: Arc<Applicants>,
    due: Instant,
    role: Role,
    step_end: Instant,
) -> Call {
    let (member_id, reservation_date) = applicants.next();
    let request = pb::ReserveTicketRequest {
        member_id,
        reservation_date,
        request_id: String::new(),
    };
    let sent = Instant::now();
    let late = sent.saturating_duration_since(due);
    let answer = tokio::time::timeout(CALL_TIMEOUT, reserve.reserve_ticket(request)).await;
    let answered = Instant::now();
    let latency = answered - sent;
    let reservation = match answer {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => {
            return Call {
                late,
                answer: Err((format!("{:?}", status.code()), status.message().to_owned())),
                watched: None,
            }
        }
        Err(_) => {
            return Call {
                late,
                answer: Err((
                    "client timeout".into(),
                    format!("no answer within {CALL_TIMEOUT:?}"),
                )),
                watched: None,
            }
        }
    };
    let watched = match (status, role) {
        (Some(status), Role::Sampled) => Some((
            role,
            answered,
            watch(status, reservation.id, answered + VIEW_WAIT).await,
        )),
        (Some(status), Role::Tail) => Some((
            role,
            answered,
            watch(status, reservation.id, step_end + DRAIN_CAP).await,
        )),
        _ => None,
    };
    Call {
        late,
        answer: Ok((latency, answered)),
        watched,
    }
}

/// When the backlog was back to zero after a step.
#[derive(Clone, Copy)]
enum Drain {
    After(Duration),
    NotWithin(Duration),
    /// The step's last calls all failed: nothing to watch.
    Unknown,
}

impl Drain {
    fn within(&self, limit: Duration) -> bool {
        matches!(self, Drain::After(d) if *d <= limit)
    }

    fn text(&self) -> String {
        match self {
            Drain::After(d) => secs(*d),
            Drain::NotWithin(cap) => format!("> {}", secs(*cap)),
            Drain::Unknown => "n/a".into(),
        }
    }
}

/// The figures of one step.
struct Step {
    offered: u32,
    sent: u64,
    ok: u64,
    /// Answered (OK) within the step's own time, per second.
    answered_rate: f64,
    errors: BTreeMap<String, (u64, String)>,
    p50: Option<Duration>,
    p99: Option<Duration>,
    /// Lags of the sampled views; lost ones count as [`VIEW_WAIT`].
    lag_p50: Option<Duration>,
    lag_p99: Option<Duration>,
    samples: usize,
    lost: usize,
    drain: Drain,
    /// Messages JetStream still held (pending + unacknowledged) when we stopped waiting.
    js_pending: Option<u64>,
    /// The most any call was sent after it was due.
    behind: Duration,
    /// Where the time went during the step and its drain (None for the ceiling).
    breakdown: Option<Breakdown>,
}

/// What the services themselves measured over one step and its drain: each durable's
/// mean lag (the event's occurrence to its handling: the commit, the relay, JetStream and
/// the wait for a batch before it) and the CPU each process used. Read from /metrics and
/// /proc once before and once after: nothing is polled during the step.
#[derive(Debug, Clone, Default)]
struct Breakdown {
    /// durable -> (events handled, mean lag).
    lags: BTreeMap<String, (u64, Duration)>,
    /// process name -> CPU seconds.
    cpu: BTreeMap<String, f64>,
    /// The step and its drain, wall clock.
    wall: Duration,
}

/// Counters read at one moment: durable -> (lag sum in s, count), process -> CPU seconds.
#[derive(Debug, Clone, Default)]
struct Counters {
    lags: BTreeMap<String, (f64, u64)>,
    cpu: BTreeMap<String, f64>,
    at: Option<Instant>,
}

/// The processes a run is made of, by the name /proc gives them.
const PROCESSES: [&str; 7] = [
    "reservation",
    "parking-lot",
    "delivery",
    "status",
    "gateway",
    "nats-server",
    "postgres",
];

async fn counters(cluster: &Cluster) -> Counters {
    let mut lags: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for svc in Svc::ALL {
        let text = cluster.metrics(svc).await;
        for line in text.lines() {
            let (name, rest) = match line.split_once('{') {
                Some(split) => split,
                None => continue,
            };
            let sum = name == "consumer_lag_seconds_sum";
            if !sum && name != "consumer_lag_seconds_count" {
                continue;
            }
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let Some(durable) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("durable=\""))
                .map(|d| d.trim_end_matches('"').to_owned())
            else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let entry = lags.entry(durable).or_default();
            if sum {
                entry.0 += value;
            } else {
                entry.1 += value as u64;
            }
        }
    }
    Counters {
        lags,
        cpu: cpu_seconds(),
        at: Some(Instant::now()),
    }
}

/// CPU seconds used so far by each of [`PROCESSES`] (summed over processes of one name).
fn cpu_seconds() -> BTreeMap<String, f64> {
    // Linux's USER_HZ: clock ticks in /proc/<pid>/stat are 1/100 s.
    const TICKS: f64 = 100.0;
    let mut cpu = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return cpu;
    };
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ... utime stime: fields 14 and 15; comm may hold spaces.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let Some(name) = PROCESSES.iter().find(|p| comm == **p) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<f64>().ok()))
            .sum();
        *cpu.entry((*name).to_owned()).or_default() += ticks / TICKS;
    }
    cpu
}

impl Breakdown {
    fn between(before: &Counters, after: &Counters) -> Breakdown {
        let lags = after
            .lags
            .iter()
            .filter_map(|(durable, (sum, count))| {
                let (sum0, count0) = before.lags.get(durable).copied().unwrap_or_default();
                let n = count.saturating_sub(count0);
                (n > 0).then(|| {
                    let mean = ((sum - sum0) / n as f64).max(0.0);
                    (durable.clone(), (n, Duration::from_secs_f64(mean)))
                })
            })
            .collect();
        let cpu = after
            .cpu
            .iter()
            .map(|(name, secs)| {
                let before = before.cpu.get(name).copied().unwrap_or_default();
                (name.clone(), (secs - before).max(0.0))
            })
            .collect();
        let wall = match (before.at, after.at) {
            (Some(a), Some(b)) => b - a,
            _ => Duration::ZERO,
        };
        Breakdown { lags, cpu, wall }
    }
}

impl Step {
    fn knee_ok(&self) -> bool {
        self.lag_p99.is_some_and(|l| l <= KNEE_LAG)
            && self.lost == 0
            && self.drain.within(KNEE_DRAIN)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[at])
}

/// One open-loop step at `rate` calls/s. `cluster`: the cluster behind the pool (for the
/// backlog), or none for the ceiling.
async fn step(
    pool: &Pool,
    applicants: &Arc<Applicants>,
    rate: u32,
    length: Duration,
    samples_per_sec: f64,
    cluster: Option<&Cluster>,
) -> Step {
    let before = match cluster {
        Some(c) => Some(counters(c).await),
        None => None,
    };
    let total = (f64::from(rate) * length.as_secs_f64()).round().max(1.0) as u64;
    let sample_every = (f64::from(rate) / samples_per_sec).ceil().max(1.0) as u64;
    let watching = !pool.status.is_empty();
    let start = Instant::now();
    let end = start + length;
    let mut calls = Vec::with_capacity(total as usize);
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut issued = 0u64;
    while issued < total {
        ticker.tick().await;
        let due_now = ((start.elapsed().as_secs_f64() * f64::from(rate)) as u64 + 1).min(total);
        while issued < due_now {
            let i = issued;
            let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
            let role = if !watching {
                Role::Plain
            } else if i + TAIL >= total {
                Role::Tail
            } else if i.is_multiple_of(sample_every) {
                Role::Sampled
            } else {
                Role::Plain
            };
            let connection = (i as usize) % CONNECTIONS;
            let status = (role != Role::Plain).then(|| pool.status[connection].clone());
            calls.push(tokio::spawn(one_call(
                pool.reserve[connection].clone(),
                status,
                applicants.clone(),
                due,
                role,
                end,
            )));
            issued += 1;
        }
    }
    // The window the answered rate counts in: the step, or longer if the ticker fell behind.
    let window_end = end.max(Instant::now());
    let mut latencies = Vec::new();
    let mut in_window = 0u64;
    let mut errors: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut lags = Vec::new();
    let mut lost = 0;
    let mut tail_settled = Vec::new();
    let mut tail_late = false;
    let mut behind = Duration::ZERO;
    for call in futures::future::join_all(calls).await {
        let call = call.expect("a call task panicked");
        behind = behind.max(call.late);
        match call.answer {
            Ok((latency, answered)) => {
                latencies.push(latency);
                if answered <= window_end {
                    in_window += 1;
                }
            }
            Err((code, message)) => {
                errors.entry(code).or_insert((0, message)).0 += 1;
            }
        }
        match call.watched {
            Some((Role::Sampled, answered, Watched::Settled(at))) => lags.push(at - answered),
            Some((Role::Sampled, _, Watched::Late)) => {
                lost += 1;
                lags.push(VIEW_WAIT);
            }
            Some((Role::Tail, _, Watched::Settled(at))) => tail_settled.push(at),
            Some((Role::Tail, _, Watched::Late)) => tail_late = true,
            Some((_, _, Watched::Failed(code))) => {
                errors
                    .entry(format!("watch: {code}"))
                    .or_insert((0, "WatchReservationStatus failed".into()))
                    .0 += 1;
            }
            _ => {}
        }
    }
    latencies.sort();
    lags.sort();
    let mut drain = if tail_late {
        Drain::NotWithin(DRAIN_CAP)
    } else {
        match tail_settled.iter().max() {
            Some(last) => Drain::After(last.saturating_duration_since(end)),
            None => Drain::Unknown,
        }
    };
    let mut js_pending = None;
    if let Some(cluster) = cluster {
        // Confirm with JetStream: every durable with nothing pending or unacknowledged.
        // Asked again, slowly, only while it is not so and the cap has not passed.
        let mut first = true;
        loop {
            js_pending = backlog(cluster).await;
            let at = end.elapsed();
            if js_pending == Some(0) {
                drain = match drain {
                    Drain::After(d) if first => Drain::After(d),
                    Drain::NotWithin(cap) => Drain::NotWithin(cap),
                    // Nothing to watch, or JetStream was still busy when first asked.
                    _ => Drain::After(at),
                };
                break;
            }
            if at >= DRAIN_CAP {
                drain = Drain::NotWithin(DRAIN_CAP);
                break;
            }
            first = false;
            tokio::time::sleep(JS_POLL).await;
        }
    }
    let breakdown = match (cluster, &before) {
        (Some(c), Some(before)) => Some(Breakdown::between(before, &counters(c).await)),
        _ => None,
    };
    Step {
        breakdown,
        offered: rate,
        sent: total,
        ok: latencies.len() as u64,
        answered_rate: in_window as f64 / (window_end - start).as_secs_f64(),
        errors,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        lag_p50: percentile(&lags, 0.50),
        lag_p99: percentile(&lags, 0.99),
        samples: lags.len(),
        lost,
        drain,
        js_pending,
        behind,
    }
}

/// Messages the cluster's durable consumers have not finished: pending plus unacknowledged,
/// over every consumer of its three streams (one consumer-list request per stream).
async fn backlog(cluster: &Cluster) -> Option<u64> {
    let mut total = 0u64;
    for context in ["reservation", "parkinglot", "delivery"] {
        let name = format!("{}_{}", cluster.namespace, context).to_ascii_uppercase();
        let stream = cluster.js.get_stream(&name).await.ok()?;
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.ok()?;
            total += info.num_pending + info.num_ack_pending as u64;
        }
    }
    Some(total)
}

// ---------------------------------------------------------------------------------------
// The ceiling: ReserveTicket answered at once, in this process
// ---------------------------------------------------------------------------------------

struct Fixed;

#[tonic::async_trait]
impl pb::ticket_reservation_service_server::TicketReservationService for Fixed {
    async fn reserve_ticket(
        &self,
        _: tonic::Request<pb::ReserveTicketRequest>,
    ) -> Result<tonic::Response<pb::TicketReservation>, tonic::Status> {
        Ok(tonic::Response::new(pb::TicketReservation {
            id: 1,
            member_id: 1,
            reservation_date: "2030-01-01".into(),
            state: pb::ReservationState::Requested.into(),
            request_id: String::new(),
        }))
    }

    async fn cancel_reservation(
        &self,
        _: tonic::Request<pb::CancelReservationRequest>,
    ) -> Result<tonic::Response<pb::TicketReservation>, tonic::Status> {
        Err(tonic::Status::unimplemented("the ceiling only reserves"))
    }

    async fn get_reservation(
        &self,
        _: tonic::Request<pb::GetReservationRequest>,
    ) -> Result<tonic::Response<pb::TicketReservation>, tonic::Status> {
        Err(tonic::Status::unimplemented("the ceiling only reserves"))
    }

    async fn list_reservations(
        &self,
        _: tonic::Request<pb::ListReservationsRequest>,
    ) -> Result<tonic::Response<pb::ListReservationsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("the ceiling only reserves"))
    }
}

/// Starts the in-process server; returns its port and its task.
async fn start_fixed() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind the ceiling's server");
    let port = listener.local_addr().expect("its address").port();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(
                pb::ticket_reservation_service_server::TicketReservationServiceServer::new(Fixed),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .expect("the ceiling's server");
    });
    (port, server)
}

// ---------------------------------------------------------------------------------------
// Closed loop on REST
// ---------------------------------------------------------------------------------------

struct Rest {
    connections: usize,
    connect_errors: BTreeMap<String, u64>,
    statuses: BTreeMap<u16, u64>,
    /// Failed requests (no status): by kind.
    failures: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
    time: Duration,
    /// What was left of the steps' backlog, waited for before the closed loop began.
    before: Drain,
    drain: Drain,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn rest_connect(port: u16) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One POST /ticketReservations: its status.
async fn rest_post(
    sender: &mut Sender,
    port: u16,
    bearer: &str,
    applicants: &Applicants,
) -> Result<u16, String> {
    let (member, date) = applicants.next();
    let body = serde_json::json!({ "memberId": member, "reservationDate": date }).to_string();
    let request = http::Request::post("/ticketReservations")
        .header(http::header::HOST, format!("127.0.0.1:{port}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::AUTHORIZATION, bearer)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("request: {e}"))?;
    sender
        .ready()
        .await
        .map_err(|_| "connection closed".to_owned())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|_| "connection closed".to_owned())?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|_| "body cut off".to_owned())?;
    Ok(status)
}

async fn rest_closed_loop(
    cluster: &Cluster,
    port: u16,
    token: &str,
    applicants: &Arc<Applicants>,
    connections: usize,
    time: Duration,
) -> Rest {
    let before = wait_idle(cluster).await;
    let connected = futures::future::join_all((0..connections).map(|_| rest_connect(port))).await;
    let mut connect_errors = BTreeMap::new();
    let mut senders = Vec::new();
    for c in connected {
        match c {
            Ok(s) => senders.push(s),
            Err(e) => *connect_errors.entry(e).or_insert(0) += 1,
        }
    }
    let bearer: Arc<str> = format!("Bearer {token}").into();
    let start = Instant::now();
    let end = start + time;
    let workers = senders.into_iter().map(|mut sender| {
        let (bearer, applicants) = (bearer.clone(), applicants.clone());
        tokio::spawn(async move {
            let mut statuses = BTreeMap::new();
            let mut failures = BTreeMap::new();
            let mut latencies = Vec::new();
            while Instant::now() < end {
                let sent = Instant::now();
                let answer = tokio::time::timeout(
                    CALL_TIMEOUT,
                    rest_post(&mut sender, port, &bearer, &applicants),
                )
                .await
                .unwrap_or_else(|_| Err("client timeout".into()));
                match answer {
                    Ok(status) => {
                        latencies.push(sent.elapsed());
                        *statuses.entry(status).or_insert(0u64) += 1;
                    }
                    Err(kind) => {
                        *failures.entry(kind).or_insert(0u64) += 1;
                        // The connection is gone: a user would open another.
                        match rest_connect(port).await {
                            Ok(s) => sender = s,
                            Err(e) => {
                                *failures.entry(e).or_insert(0) += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
            }
            (statuses, failures, latencies)
        })
    });
    let mut rest = Rest {
        connections,
        connect_errors,
        statuses: BTreeMap::new(),
        failures: BTreeMap::new(),
        latencies: Vec::new(),
        time: Duration::ZERO,
        before,
        drain: Drain::Unknown,
    };
    for worker in futures::future::join_all(workers).await {
        let (statuses, failures, latencies) = worker.expect("a REST worker panicked");
        for (k, v) in statuses {
            *rest.statuses.entry(k).or_insert(0) += v;
        }
        for (k, v) in failures {
            *rest.failures.entry(k).or_insert(0) += v;
        }
        rest.latencies.extend(latencies);
    }
    rest.time = start.elapsed();
    rest.latencies.sort();
    rest.drain = wait_idle(cluster).await;
    rest
}

/// Waits until JetStream's durables are idle (asked every [`JS_POLL`]), at most
/// [`DRAIN_CAP`].
async fn wait_idle(cluster: &Cluster) -> Drain {
    let start = Instant::now();
    loop {
        if backlog(cluster).await == Some(0) {
            return Drain::After(start.elapsed());
        }
        if start.elapsed() >= DRAIN_CAP {
            return Drain::NotWithin(DRAIN_CAP);
        }
        tokio::time::sleep(JS_POLL).await;
    }
}

// ---------------------------------------------------------------------------------------
// One database
// ---------------------------------------------------------------------------------------

struct Run {
    backend: Backend,
    steps: Vec<Step>,
    rest: Option<Rest>,
    logs: Vec<LogSummary>,
}

async fn run_backend(settings: &Settings, backend: Backend) -> Run {
    let mut cluster = Cluster::prepare(
        backend,
        Options {
            max_parking: 1_000_000,
            ..Options::default()
        },
    )
    .await;
    for svc in Svc::ALL {
        cluster.set_env(svc, "RUST_LOG", "warn");
        cluster.start_service(svc).await;
    }
    let port = cluster
        .start_gateway_with(&[
            ("RUST_LOG", "warn"),
            ("RATE_LIMIT_PER_ADDR", "100000000"),
            ("RATE_LIMIT_BURST", "100000000"),
            ("RATE_LIMIT_PER_SUBJECT", "100000000"),
            ("RATE_LIMIT_SUBJECT_BURST", "100000000"),
        ])
        .await;
    let token = login(port, "admin").await;
    let pool = Pool::new(port, Some(&token), true).await;
    let applicants = Arc::new(Applicants::new());
    let name = backend_name(backend);
    // Warm-up: connections, database pages, the consumers' first fetches.
    step(
        &pool,
        &applicants,
        50,
        Duration::from_secs(2),
        10.0,
        Some(&cluster),
    )
    .await;
    println!("\n{name}: open loop through the gateway");
    println!("{}", step_header(true));
    let mut steps = Vec::new();
    for &rate in &settings.rates {
        let s = step(
            &pool,
            &applicants,
            rate,
            settings.step,
            settings.samples_per_sec,
            Some(&cluster),
        )
        .await;
        println!("{}", step_row(&s, true));
        steps.push(s);
    }
    println!("\n{}", breakdown_table(&steps));
    let rest = if settings.rest_time.is_zero() {
        None
    } else {
        let rest = rest_closed_loop(
            &cluster,
            port,
            &token,
            &applicants,
            settings.rest_connections,
            settings.rest_time,
        )
        .await;
        println!("\n{name}: closed loop on REST");
        println!("{}", rest_table(&rest));
        Some(rest)
    };
    let logs = log_summary(&cluster, backend);
    Run {
        backend,
        steps,
        rest,
        logs,
    }
}

/// What one log file said at WARN and ERROR.
struct LogSummary {
    file: String,
    warnings: usize,
    errors: usize,
    /// Distinct messages (fields left out), most frequent first: (count, message).
    messages: Vec<(usize, String)>,
}

/// A log line without its colours.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The message of a tracing line: after the level, the spans and the target, before the
/// fields.
fn message_of(line: &str) -> String {
    let after_level = [" WARN ", " ERROR "]
        .iter()
        .find_map(|level| line.split_once(level).map(|(_, rest)| rest))
        .unwrap_or(line)
        .trim_start();
    let rest = match after_level.rsplit_once("}: ") {
        Some((_, message)) => message,
        // `target: message`, or the message alone.
        None => match after_level.split_once(": ") {
            Some((target, message)) if !target.contains(' ') => message,
            _ => after_level,
        },
    };
    rest.split(' ')
        .take_while(|word| !word.contains('='))
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(160)
        .collect()
}

/// Warnings and errors in the services' logs, per process; the logs are copied to
/// `PIPELINE_LOGS` when set.
fn log_summary(cluster: &Cluster, backend: Backend) -> Vec<LogSummary> {
    let keep = std::env::var("PIPELINE_LOGS").ok().map(PathBuf::from);
    let mut summary = Vec::new();
    let mut logs = cluster.all_logs();
    logs.sort();
    for (file, text) in logs {
        if let Some(dir) = &keep {
            let dir = dir.join(backend_name(backend));
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(dir.join(&file), &text);
        }
        let (mut warnings, mut errors) = (0, 0);
        let mut messages: BTreeMap<String, usize> = BTreeMap::new();
        for line in text.lines().map(plain) {
            if line.contains(" WARN ") {
                warnings += 1;
            } else if line.contains(" ERROR ") {
                errors += 1;
            } else {
                continue;
            }
            *messages.entry(message_of(&line)).or_insert(0) += 1;
        }
        let mut messages: Vec<(usize, String)> =
            messages.into_iter().map(|(m, n)| (n, m)).collect();
        messages.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        messages.truncate(4);
        summary.push(LogSummary {
            file,
            warnings,
            errors,
            messages,
        });
    }
    summary
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

fn ms(d: Option<Duration>) -> String {
    match d {
        None => "-".into(),
        Some(d) if d < Duration::from_millis(10) => format!("{:.2} ms", d.as_secs_f64() * 1e3),
        Some(d) if d < Duration::from_secs(1) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
        Some(d) => secs(d),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn errors_text(errors: &BTreeMap<String, (u64, String)>) -> String {
    if errors.is_empty() {
        return "0".into();
    }
    errors
        .iter()
        .map(|(code, (n, _))| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn step_header(pipeline: bool) -> String {
    if pipeline {
        "| offered/s | sent | ok | answered/s | errors | ReserveTicket p50 | p99 | view lag p50 | p99 | views > 10 s | backlog zero after | JetStream left | client behind |\n\
         |---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
            .into()
    } else {
        "| offered/s | sent | ok | answered/s | errors | ReserveTicket p50 | p99 | client behind |\n|---:|---:|---:|---:|---|---:|---:|---:|"
            .into()
    }
}

fn step_row(s: &Step, pipeline: bool) -> String {
    let head = format!(
        "| {} | {} | {} | {:.0} | {} | {} | {} |",
        s.offered,
        s.sent,
        s.ok,
        s.answered_rate,
        errors_text(&s.errors),
        ms(s.p50),
        ms(s.p99)
    );
    if !pipeline {
        return format!("{head} {} |", ms(Some(s.behind)));
    }
    let censored = |d: Option<Duration>| match d {
        Some(d) if d >= VIEW_WAIT => format!(">= {}", secs(VIEW_WAIT)),
        other => ms(other),
    };
    format!(
        "{head} {} | {} | {} of {} | {} | {} | {} |",
        censored(s.lag_p50),
        censored(s.lag_p99),
        s.lost,
        s.samples,
        s.drain.text(),
        s.js_pending.map_or("?".into(), |n| n.to_string()),
        ms(Some(s.behind)),
    )
}

fn rest_table(r: &Rest) -> String {
    let answered: u64 = r.statuses.values().sum();
    let server_errors: u64 = r
        .statuses
        .iter()
        .filter(|(code, _)| **code >= 500)
        .map(|(_, n)| n)
        .sum();
    let histogram = r
        .statuses
        .iter()
        .map(|(code, n)| format!("{code}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let failures = r
        .failures
        .iter()
        .chain(r.connect_errors.iter())
        .map(|(kind, n)| format!("{kind}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "| connections | time | answered | answered/s | statuses | 5xx | no answer | p50 | p99 | backlog zero after |\n\
         |---:|---:|---:|---:|---|---:|---|---:|---:|---:|\n\
         | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
        r.connections,
        secs(r.time),
        answered,
        answered as f64 / r.time.as_secs_f64(),
        if histogram.is_empty() { "-".into() } else { histogram },
        server_errors,
        if failures.is_empty() { "0".into() } else { failures },
        ms(percentile(&r.latencies, 0.50)),
        ms(percentile(&r.latencies, 0.99)),
        r.drain.text(),
    )
}

fn knee_text(steps: &[Step]) -> String {
    match steps
        .iter()
        .filter(|s| s.knee_ok())
        .map(|s| s.offered)
        .max()
    {
        Some(rate) => {
            let below_failed: Vec<String> = steps
                .iter()
                .filter(|s| s.offered < rate && !s.knee_ok())
                .map(|s| s.offered.to_string())
                .collect();
            if below_failed.is_empty() {
                format!("{rate} calls/s")
            } else {
                format!(
                    "{rate} calls/s (though {} calls/s missed it)",
                    below_failed.join(", ")
                )
            }
        }
        None => "below the lowest rate measured".into(),
    }
}

/// Where the time went, per step: each durable's mean lag and each process's CPU use.
fn breakdown_table(steps: &[Step]) -> String {
    let mut durables: Vec<String> = steps
        .iter()
        .filter_map(|s| s.breakdown.as_ref())
        .flat_map(|b| b.lags.keys().cloned())
        .collect();
    durables.sort();
    durables.dedup();
    let mut out = String::from(
        "Where the time went (measured by the services over each step and its drain): \
         mean lag per durable consumer, from the event's occurrence (its use case's commit) \
         to its handling (so it holds the outbox relay, JetStream and the wait for a batch), \
         and CPU per process in cores (CPU seconds / wall seconds; the machine has 2).\n\n| offered/s |",
    );
    for d in &durables {
        let _ = write!(out, " {d} |");
    }
    for p in PROCESSES {
        let _ = write!(out, " {p} CPU |");
    }
    out.push_str("\n|---:|");
    for _ in 0..durables.len() + PROCESSES.len() {
        out.push_str("---:|");
    }
    out.push('\n');
    for step in steps {
        let Some(b) = &step.breakdown else { continue };
        let _ = write!(out, "| {} |", step.offered);
        for d in &durables {
            match b.lags.get(d) {
                Some((_, mean)) => {
                    let _ = write!(out, " {} |", ms(Some(*mean)));
                }
                None => out.push_str(" - |"),
            }
        }
        let wall = b.wall.as_secs_f64().max(1e-9);
        for p in PROCESSES {
            let _ = write!(out, " {:.2} |", b.cpu.get(p).copied().unwrap_or(0.0) / wall);
        }
        out.push('\n');
    }
    out
}

fn error_details(steps: &[Step]) -> String {
    let mut seen: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for s in steps {
        for (code, (n, message)) in &s.errors {
            seen.entry(code.clone()).or_insert((0, message.clone())).0 += n;
        }
    }
    seen.iter()
        .map(|(code, (n, message))| format!("- {code} ({n} in all), e.g. \"{message}\"\n"))
        .collect()
}

/// The code under test: `PIPELINE_CODE`, or the commit of this checkout.
fn git_revision() -> String {
    if let Ok(code) = std::env::var("PIPELINE_CODE") {
        return code;
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    // Only the code under test counts: this bench may be newer than the commit it measures.
    let changed = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        "../services",
        "../mesh",
        "../proto",
    ])
    .is_some_and(|s| !s.is_empty());
    if changed {
        format!("{head} with uncommitted changes under services/, mesh/ or proto/")
    } else {
        head
    }
}

/// The 1-minute load average (Linux), to judge how quiet the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn report(
    settings: &Settings,
    ceiling: &[Step],
    runs: &[Run],
    took: Duration,
    load: (String, String),
) -> String {
    let mut out = String::new();
    let rates: Vec<String> = settings.rates.iter().map(u32::to_string).collect();
    let _ = writeln!(
        out,
        "# Pipeline benchmark, {}\n\n\
         Code: `{}`. Release build, {} cores, everything (NATS, PostgreSQL, five services, \
         this client) on one machine. Open-loop steps of {} at {} calls/s, spread over {CONNECTIONS} \
         HTTP/2 connections to the gateway with an admin's JWT (rate limits off, capacity \
         1,000,000 a day, RUST_LOG=warn). Every call a new application. ReserveTicket \
         latency is from sending to the answer; \"client behind\" is the most any call was \
         sent after it was due (the client's own lag: 1 ms ticks). View lag: from ReserveTicket's answer \
         until WatchReservationStatus first shows a stage beyond RESERVED, on at most {} \
         sampled calls a second; a view that did not arrive within {} counts as {} in the \
         percentiles. Backlog zero: the step's last {TAIL} applications watched the same \
         way, then JetStream's durables asked (every {} while not idle, up to {} after the \
         step) for nothing pending or unacknowledged; \"JetStream left\" is what they still \
         held at the last answer. The next step starts only then. Knee: the highest offered \
         rate with view lag p99 <= {}, no view lost, and the backlog zero within {}.\n\n\
         The whole run took {}; 1-minute load average {} at its start, {} at its end \
         (the machine is shared: other work inflates the figures).\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        git_revision(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        secs(settings.step),
        rates.join(", "),
        settings.samples_per_sec,
        secs(VIEW_WAIT),
        secs(VIEW_WAIT),
        ms(Some(JS_POLL)),
        secs(DRAIN_CAP),
        secs(KNEE_LAG),
        secs(KNEE_DRAIN),
        secs(took),
        load.0,
        load.1,
    );
    for run in runs {
        let name = backend_name(run.backend);
        let _ = writeln!(out, "## {name}\n\n{}", step_header(true));
        for s in &run.steps {
            let _ = writeln!(out, "{}", step_row(s, true));
        }
        let _ = writeln!(out, "\n**Knee ({name}): {}**\n", knee_text(&run.steps));
        let _ = writeln!(out, "{}", breakdown_table(&run.steps));
        let details = error_details(&run.steps);
        if !details.is_empty() {
            let _ = writeln!(out, "Errors:\n{details}");
        }
        let noisy: Vec<_> = run
            .logs
            .iter()
            .filter(|l| l.warnings + l.errors > 0)
            .collect();
        if !noisy.is_empty() {
            let _ = writeln!(out, "Service logs ({name}, RUST_LOG=warn):\n");
            for log in noisy {
                let messages: Vec<String> = log
                    .messages
                    .iter()
                    .map(|(n, m)| format!("{n} x `{}`", m.replace('`', "'")))
                    .collect();
                let _ = writeln!(
                    out,
                    "- {}: {} warnings, {} errors: {}",
                    log.file,
                    log.warnings,
                    log.errors,
                    messages.join("; ")
                );
            }
            let _ = writeln!(out);
        }
        if let Some(rest) = &run.rest {
            let _ = writeln!(
                out,
                "Closed loop on REST ({name}): {} HTTP/1.1 connections each POSTing \
                 /ticketReservations as soon as the last was answered, for {} (begun once \
                 the steps' backlog was zero, after {} more; its own backlog asked of \
                 JetStream every {}):\n\n{}\n",
                rest.connections,
                secs(settings.rest_time),
                rest.before.text(),
                ms(Some(JS_POLL)),
                rest_table(rest)
            );
        }
    }
    let _ = writeln!(
        out,
        "## Ceiling\n\nThe same open-loop client against an in-process tonic server whose \
         ReserveTicket answers at once with a fixed reservation (no gateway, no token check, \
         no database): what this machine and this client can do at all.\n\n{}",
        step_header(false)
    );
    for s in ceiling {
        let _ = writeln!(out, "{}", step_row(s, false));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Plot
// ---------------------------------------------------------------------------------------

fn register_font() -> Result<(), String> {
    let candidates = std::env::var("PIPELINE_FONT").into_iter().chain(
        [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/System/Library/Fonts/Supplemental/Arial.ttf",
        ]
        .map(String::from),
    );
    for path in candidates {
        if let Ok(bytes) = std::fs::read(&path) {
            // Plotters keeps the font for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            return plotters::style::register_font(
                "sans-serif",
                plotters::style::FontStyle::Normal,
                bytes,
            )
            .map_err(|_| format!("{path} is not a font plotters can read"));
        }
    }
    Err("no TrueType font found (set PIPELINE_FONT)".into())
}

/// One line of the plot: label, colour, whether it is a view lag, points.
type Series = (String, plotters::style::RGBColor, bool, Vec<(f64, f64)>);

fn plot(path: &Path, ceiling: &[Step], runs: &[Run]) -> Result<(), String> {
    use plotters::prelude::*;
    register_font()?;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let rates = || {
        runs.iter()
            .flat_map(|r| &r.steps)
            .chain(ceiling)
            .map(|s| f64::from(s.offered))
    };
    let lo = rates().fold(f64::INFINITY, f64::min) * 0.8;
    let hi = rates().fold(0.0, f64::max) * 1.25;
    let root = BitMapBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "ReserveTicket p99 and reserve -> view lag p99 vs offered rate",
            ("sans-serif", 24),
        )
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((lo..hi).log_scale(), (0.05f64..100_000.0).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("offered rate (calls/s)")
        .y_desc("p99 (ms)")
        .x_labels(12)
        // 1, 2 and 5 times a power of ten only: the others crowd each other.
        .x_label_formatter(&|x| {
            let lead = x / 10f64.powf(x.log10().floor());
            if [1.0, 2.0, 5.0].iter().any(|l| (lead - l).abs() < 0.01) {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| {
            if *y < 1.0 {
                format!("{y}")
            } else {
                format!("{y:.0}")
            }
        })
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    let to_ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e3).max(0.05));
    let mut series: Vec<Series> = Vec::new();
    for (run, color) in runs.iter().zip([BLUE, RED, GREEN]) {
        let name = backend_name(run.backend);
        let points = |f: &dyn Fn(&Step) -> Option<Duration>| {
            run.steps
                .iter()
                .filter_map(|s| to_ms(f(s)).map(|v| (f64::from(s.offered), v)))
                .collect::<Vec<_>>()
        };
        series.push((
            format!("{name}: ReserveTicket p99"),
            color,
            false,
            points(&|s| s.p99),
        ));
        series.push((
            format!("{name}: view lag p99 (10 s: not within 10 s)"),
            color,
            true,
            points(&|s| s.lag_p99),
        ));
    }
    series.push((
        "ceiling (in-process, no work): ReserveTicket p99".into(),
        BLACK,
        false,
        ceiling
            .iter()
            .filter_map(|s| to_ms(s.p99).map(|v| (f64::from(s.offered), v)))
            .collect(),
    ));
    for (label, color, lag, points) in series {
        let line = ShapeStyle::from(&color).stroke_width(2);
        if lag {
            chart
                .draw_series(DashedLineSeries::new(points.clone(), 8, 5, line))
                .map_err(|e| err(&e))?
                .label(label)
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (8, 0)], line)
                        + PathElement::new(vec![(13, 0), (21, 0)], line)
                        + TriangleMarker::new((10, 0), 5, color.filled())
                });
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&p| TriangleMarker::new(p, 6, color.filled())),
                )
                .map_err(|e| err(&e))?;
        } else {
            chart
                .draw_series(LineSeries::new(points.clone(), line))
                .map_err(|e| err(&e))?
                .label(label)
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (21, 0)], line)
                        + Circle::new((10, 0), 4, color.filled())
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|e| err(&e))?;
        }
    }
    // The knee's bound on the view lag.
    let bound = KNEE_LAG.as_secs_f64() * 1e3;
    let grey = ShapeStyle::from(&RGBColor(120, 120, 120)).stroke_width(1);
    chart
        .draw_series(DashedLineSeries::new(
            vec![(lo, bound), (hi, bound)],
            4,
            4,
            grey,
        ))
        .map_err(|e| err(&e))?
        .label(format!("knee bound: view lag p99 {}", secs(KNEE_LAG)))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 21, y)], grey));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------

/// Raises the soft limit on open files to the hard one: the closed loop opens a thousand
/// connections.
fn raise_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if (n as usize) < 4096 => {
            eprintln!(
                "warning: only {n} open files allowed; the REST closed loop may fail to connect"
            )
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: could not raise the open-files limit: {e}"),
    }
}

#[tokio::main]
async fn main() {
    let began = std::time::Instant::now();
    let load_at_start = load_average();
    raise_file_limit();
    let settings = Settings::from_env();

    let (port, server) = start_fixed().await;
    let pool = Pool::new(port, None, false).await;
    let applicants = Arc::new(Applicants::new());
    step(&pool, &applicants, 50, Duration::from_secs(1), 1.0, None).await;
    println!("Ceiling: in-process ReserveTicket, no work behind it");
    println!("{}", step_header(false));
    let mut ceiling = Vec::new();
    for &rate in &settings.rates {
        let s = step(&pool, &applicants, rate, settings.step, 1.0, None).await;
        println!("{}", step_row(&s, false));
        ceiling.push(s);
    }
    server.abort();
    drop(pool);

    let mut runs = Vec::new();
    for &backend in &settings.backends {
        let run = run_backend(&settings, backend).await;
        println!(
            "\nKnee ({}): {}",
            backend_name(backend),
            knee_text(&run.steps)
        );
        runs.push(run);
    }

    let text = report(
        &settings,
        &ceiling,
        &runs,
        began.elapsed(),
        (load_at_start, load_average()),
    );
    if let Some(dir) = settings.report.parent() {
        std::fs::create_dir_all(dir).expect("create the results folder");
    }
    std::fs::write(&settings.report, &text).expect("write the report");
    println!("\n{text}");
    println!("report: {}", settings.report.display());
    match plot(&settings.plot, &ceiling, &runs) {
        Ok(()) => println!("plot: {}", settings.plot.display()),
        Err(e) => eprintln!("no plot: {e}"),
    }
}
