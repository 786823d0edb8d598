//! The gateway's edge under abuse, against the real gateway binary over real sockets
//! (README, "The edge under abuse"): tens of thousands of half-open connections, an
//! HTTP/2 rapid-reset burst, a closed-loop flood far above the in-flight limit, and the
//! per-call deadline. Each test prints what it measured (the gateway's RSS before, at its
//! peak and after; connections held; refusals). The per-address and per-subject rate
//! limits are off here, so what refuses is the edge.
//!
//! Memory is bounded generously (150 MiB; 300 MiB was seen with 19,000 half-open
//! connections before the edge had limits) and nothing asserts a latency: the machine
//! is 2 shared cores.
#![allow(clippy::unwrap_used)] // a test: a failed step should fail loudly

use bytes::Bytes;
use futures::StreamExt;
use parking_e2e::{
    channel, day, free_port, login, metrics_at, password_of, reserve, with_token, AuthChannel,
    Backend, Cluster, Svc,
};
use parking_proto::v1 as pb;
use pb::parking_lot_service_client::ParkingLotServiceClient;
use pb::reservation_status_service_client::ReservationStatusServiceClient;
use pb::ticket_reservation_service_client::TicketReservationServiceClient;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const MIB: u64 = 1024 * 1024;
/// The gateway's RSS must stay below this through every attack.
const RSS_BOUND: u64 = 150 * MIB;

/// Resident memory of a process, in bytes (`VmRSS` of /proc/<pid>/status).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// Samples a process's RSS every 50 ms and keeps the peak.
struct Peak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Peak {
    fn watch(pid: u32) -> Peak {
        let peak = Arc::new(AtomicU64::new(rss(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Peak { peak, stop }
    }

    fn get(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Peak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A sample's value on a /metrics page (0 when absent).
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A gateway with the rate limits off, /metrics on, and `env`; returns (port, metrics
/// port, pid).
async fn gateway(cluster: &mut Cluster, env: &[(&str, &str)]) -> (u16, u16, u32) {
    let metrics = free_port();
    let listen = format!("127.0.0.1:{metrics}");
    let mut all = vec![
        ("METRICS_LISTEN", listen.as_str()),
        ("RATE_LIMIT_PER_ADDR", "0"),
        ("RATE_LIMIT_PER_SUBJECT", "0"),
    ];
    all.extend_from_slice(env);
    let port = cluster.start_gateway_with(&all).await;
    let pid = *cluster.gateway_pids().last().unwrap();
    (port, metrics, pid)
}

async fn serving(health: &mut HealthClient<tonic::transport::Channel>) -> bool {
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|r| r.get_ref().status == ServingStatus::Serving as i32)
}

/// A token, retried while the gateway sheds the token endpoint (503).
async fn login_retrying(port: u16, name: &str) -> String {
    let form = serde_urlencoded::to_string([
        ("grant_type", "password"),
        ("username", name),
        ("password", &password_of(name)),
    ])
    .unwrap();
    for _ in 0..200 {
        let (status, _, body) = parking_e2e::http(
            port,
            http::Request::post("/oauth2/token")
                .header("content-type", "application/x-www-form-urlencoded"),
            form.clone(),
        )
        .await;
        if status == 200 {
            let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
            return answer["access_token"].as_str().unwrap().to_owned();
        }
        assert_eq!(status, 503, "login: {}", String::from_utf8_lossy(&body));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("login of {name} shed 200 times in a row");
}

/// Attempts until `call` is not shed (RESOURCE_EXHAUSTED): (attempts, answer).
async fn until_admitted<T, F, Fut>(mut call: F) -> (usize, Result<T, tonic::Status>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        match call().await {
            Err(s) if s.code() == tonic::Code::ResourceExhausted && attempts < 200 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return (attempts, other),
        }
    }
}

/// Half a request header: an HTTP/1.1 one, or 16 of the 24 bytes of the HTTP/2 preface
/// (a connection hyper alone never times out: it waits to learn the protocol).
fn half_header(i: usize) -> &'static [u8] {
    if i & 3 == 0 {
        b"PRI * HTTP/2.0\r\n"
    } else {
        b"POST /oauth2/token HTTP/1.1\r\nHost: gateway\r\nContent-Type: applic"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_timed_out_while_others_are_served() {
    // The gateway inherits this limit: both ends need a descriptor per connection.
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let wanted = 20_000usize;
    let target = wanted.min((nofile as usize).saturating_sub(600));
    let mut cluster = Cluster::start(Backend::Sqlite).await;
    let (port, metrics_port, pid) = gateway(&mut cluster, &[]).await;
    // Clients connected before the flood: once EDGE_MAX_CONNECTIONS are open, new ones
    // are refused until the half-open ones time out.
    let mut health = HealthClient::new(channel(port).await);
    assert!(serving(&mut health).await);
    let token = login(port, "3117").await;
    let employee = with_token(port, Some(&token)).await;
    let mut lot = ParkingLotServiceClient::new(employee.clone());
    let availability = || pb::GetDailyAvailabilityRequest { date: day(1) };
    lot.get_daily_availability(availability()).await.unwrap();
    let before = rss(pid);
    let peak = Peak::watch(pid);

    // A trickle of health checks and calls on the connections made before.
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let (stop, mut health, mut lot) = (stop.clone(), health.clone(), lot.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed, mut slowest) = (0u32, Vec::new(), Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let healthy = serving(&mut health).await;
                let call = lot.get_daily_availability(availability()).await;
                slowest = slowest.max(started.elapsed());
                match (healthy, call) {
                    (true, Ok(_)) => ok += 1,
                    (h, c) => failed.push(format!("health {h}, call {:?}", c.err())),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (ok, failed, slowest)
        })
    };
    // The open-connections gauge, sampled.
    let held_peak = Arc::new(AtomicU64::new(0));
    let gauge = {
        let (stop, held_peak) = (stop.clone(), held_peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let page = metrics_at(metrics_port).await;
                held_peak.fetch_max(
                    metric(&page, "edge_connections_open") as u64,
                    Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let started = Instant::now();
    let opened: Vec<Option<TcpStream>> = futures::stream::iter(0..target)
        .map(|i| async move {
            let connect = TcpStream::connect(("127.0.0.1", port));
            let mut socket = tokio::time::timeout(Duration::from_secs(10), connect)
                .await
                .ok()?
                .ok()?;
            // A refused connection may be closed before this lands: it still counts.
            let _ = socket.write_all(half_header(i)).await;
            Some(socket)
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let open_time = started.elapsed();
    let sockets: Vec<TcpStream> = opened.into_iter().flatten().collect();
    let count = sockets.len();

    // Every one of them must be closed by the gateway: refused at once, or timed out
    // (EDGE_HEADER_READ_TIMEOUT_MS, 5 s by default); none may stay.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let still_open = futures::stream::iter(sockets)
        .map(|mut socket| async move {
            let mut buf = [0u8; 512];
            loop {
                match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
                    Err(_) => return true,
                    Ok(Ok(0)) | Ok(Err(_)) => return false,
                    Ok(Ok(_)) => continue,
                }
            }
        })
        .buffer_unordered(4096)
        .filter(|open| std::future::ready(*open))
        .count()
        .await;
    let closed_after = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, slowest) = trickle.await.unwrap();
    gauge.await.unwrap();

    // Once they are gone, new clients get in again.
    let fresh = with_token(port, Some(&login(port, "6").await)).await;
    let reserved = TicketReservationServiceClient::new(fresh)
        .reserve_ticket(reserve(6, &day(1)))
        .await
        .unwrap();
    let page = metrics_at(metrics_port).await;
    let refused = metric(&page, "edge_connections_refused_total");
    let timed_out = metric(&page, "edge_connections_timed_out_total");
    // A login costs argon2id's memory (19 MiB): "after" and the peak include one.
    let after = rss(pid);
    let peak_rss = peak.get().max(after);
    drop(peak);
    println!(
        "half-open: RLIMIT_NOFILE {nofile}; {count} of {target} sockets opened (wanted \
         {wanted}) in {open_time:.1?}, each with half a request header; at most {} held at \
         once; {refused} refused at accept, {timed_out} timed out, {still_open} still open \
         {closed_after:.1?} after the first; gateway RSS before {}, peak {}, after {}; \
         trickle: {ok} health+call rounds answered, slowest {slowest:.2?}, failed {failed:?}; \
         reservation {} after the flood",
        held_peak.load(Ordering::Relaxed),
        mib(before),
        mib(peak_rss),
        mib(after),
        reserved.get_ref().id,
    );
    assert_eq!(still_open, 0, "every half-open connection is closed");
    assert!(count >= target * 9 / 10, "opened {count} of {target}");
    assert!(timed_out > 0.0, "the header-read deadline closed some");
    assert!(
        refused + timed_out >= count as f64,
        "each socket was refused or timed out: {refused} + {timed_out} < {count}"
    );
    assert!(failed.is_empty(), "trickle failures: {failed:?}");
    assert!(ok > 0, "the trickle was answered");
    assert!(peak_rss < RSS_BOUND, "peak RSS {}", mib(peak_rss));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_rapid_reset_burst_is_cut_off() {
    let mut cluster = Cluster::start(Backend::Sqlite).await;
    let (port, _, pid) = gateway(&mut cluster, &[]).await;
    let before = rss(pid);
    let peak = Peak::watch(pid);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let uri = format!("http://127.0.0.1:{port}/parking.v1.ParkingLotService/GetDailyAvailability");
    let (mut sent, mut stopped) = (0usize, None);
    for _ in 0..100_000 {
        let mut ready = match client.clone().ready().await {
            Ok(ready) => ready,
            Err(error) => {
                stopped = Some(error);
                break;
            }
        };
        let request = http::Request::post(&uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        match ready.send_request(request, false) {
            // HEADERS, then at once RST_STREAM: the server starts work it never finishes.
            Ok((_, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(error) => {
                stopped = Some(error);
                break;
            }
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(20), connection)
        .await
        .expect("the gateway closes the connection")
        .unwrap();
    let reason = ended.as_ref().err().and_then(h2::Error::reason);
    // Everybody else is still served.
    let mut health = HealthClient::new(channel(port).await);
    let healthy = serving(&mut health).await;
    let employee = with_token(port, Some(&login(port, "3117").await)).await;
    let call = ParkingLotServiceClient::new(employee)
        .get_daily_availability(pb::GetDailyAvailabilityRequest { date: day(1) })
        .await;
    let peak_rss = peak.get();
    drop(peak);
    println!(
        "rapid reset: {sent} HEADERS+RST_STREAM sent before the connection ended ({:?}; \
         sender stopped by {:?}); reason {reason:?}; gateway RSS before {}, peak {}, after {}; \
         health {healthy}, call from another client ok {}",
        ended.as_ref().err(),
        stopped,
        mib(before),
        mib(peak_rss),
        mib(rss(pid)),
        call.is_ok()
    );
    // The gateway sends GOAWAY ENHANCE_YOUR_CALM and closes. When our frames are still
    // unread in its socket then, the kernel answers the close with a reset that can
    // overtake the GOAWAY: the client then sees only a broken connection.
    let cut = reason == Some(h2::Reason::ENHANCE_YOUR_CALM)
        || ended.as_ref().err().is_some_and(h2::Error::is_io);
    assert!(
        cut,
        "GOAWAY ENHANCE_YOUR_CALM or a closed connection: {ended:?}"
    );
    assert!(sent < 100_000, "cut off before the burst was through");
    assert!(healthy, "health still answered");
    call.unwrap();
    assert!(peak_rss < RSS_BOUND, "peak RSS {}", mib(peak_rss));
}

/// One REST caller over HTTP/1.1 keep-alive.
async fn rest_sender(
    port: u16,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    shed: u64,
    shed_without_retry_after: u64,
    other: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.shed += other.shed;
        self.shed_without_retry_after += other.shed_without_retry_after;
        self.other.extend(other.other);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_far_above_capacity_is_shed_cleanly() {
    let mut cluster = Cluster::start(Backend::Sqlite).await;
    let (port, metrics_port, pid) = gateway(&mut cluster, &[("EDGE_MAX_IN_FLIGHT", "4")]).await;
    let token = login(port, "3117").await;
    let before = rss(pid);
    let peak = Peak::watch(pid);
    let flood = Duration::from_secs(6);
    let until = tokio::time::Instant::now() + flood;
    // 48 gRPC callers on 6 connections and 16 REST callers on their own connections,
    // each sending its next call as soon as the last is answered.
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let channel: AuthChannel = with_token(port, Some(&token)).await;
        for _ in 0..8 {
            let mut lot = ParkingLotServiceClient::new(channel.clone());
            callers.spawn(async move {
                let mut tally = Tally::default();
                while tokio::time::Instant::now() < until {
                    match lot
                        .get_daily_availability(pb::GetDailyAvailabilityRequest { date: day(1) })
                        .await
                    {
                        Ok(_) => tally.ok += 1,
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            tally.shed += 1;
                            if s.metadata().get("retry-after").is_none() {
                                tally.shed_without_retry_after += 1;
                            }
                        }
                        Err(s) => tally.other.push(format!("{:?}: {}", s.code(), s.message())),
                    }
                }
                ("grpc", tally)
            });
        }
    }
    for _ in 0..16 {
        let mut sender = rest_sender(port).await;
        let token = token.clone();
        callers.spawn(async move {
            use http_body_util::BodyExt;
            let mut tally = Tally::default();
            while tokio::time::Instant::now() < until {
                let request = http::Request::get(format!("/parkingLots/{}", day(1)))
                    .header("host", "gateway")
                    .header("authorization", format!("Bearer {token}"))
                    .body(http_body_util::Full::new(Bytes::new()))
                    .unwrap();
                let Ok(response) = sender.send_request(request).await else {
                    tally.other.push("connection lost".into());
                    break;
                };
                let (parts, body) = response.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                match parts.status.as_u16() {
                    200 => tally.ok += 1,
                    503 => {
                        tally.shed += 1;
                        if parts.headers.get("retry-after").is_none() {
                            tally.shed_without_retry_after += 1;
                        }
                    }
                    other => tally
                        .other
                        .push(format!("{other}: {}", String::from_utf8_lossy(&body))),
                }
            }
            ("rest", tally)
        });
    }
    // Meanwhile: health, /status, and a trickle of normal calls from a fresh login.
    let mut health = HealthClient::new(channel(port).await);
    let (mut rounds, mut unhealthy, mut status_refused, mut attempts) = (0, 0, 0, Vec::new());
    while tokio::time::Instant::now() < until {
        if !serving(&mut health).await {
            unhealthy += 1;
        }
        let (code, headers, _) =
            parking_e2e::http(port, http::Request::get("/status"), Bytes::new()).await;
        if code != 200 || headers.contains_key("retry-after") {
            status_refused += 1;
        }
        let fresh = with_token(port, Some(&login_retrying(port, "6").await)).await;
        let lot = ParkingLotServiceClient::new(fresh);
        let (tries, answer) = until_admitted(|| {
            let mut lot = lot.clone();
            async move {
                lot.get_daily_availability(pb::GetDailyAvailabilityRequest { date: day(2) })
                    .await
            }
        })
        .await;
        answer.unwrap();
        attempts.push(tries);
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (mut grpc, mut rest) = (Tally::default(), Tally::default());
    while let Some(joined) = callers.join_next().await {
        match joined.unwrap() {
            ("grpc", tally) => grpc.add(tally),
            (_, tally) => rest.add(tally),
        }
    }
    let peak_rss = peak.get();
    drop(peak);
    let page = metrics_at(metrics_port).await;
    println!(
        "flood ({flood:?}, EDGE_MAX_IN_FLIGHT 4, 48 gRPC + 16 REST callers): gRPC {} ok, {} \
         RESOURCE_EXHAUSTED ({} without retry-after), other {:?}; REST {} ok, {} 503 ({} \
         without Retry-After), other {:?}; edge_calls_shed_total {}; trickle: {rounds} rounds \
         of health + /status + login + call, {unhealthy} unhealthy, {status_refused} /status \
         refused, attempts per call {attempts:?}; gateway RSS before {}, peak {}, after {}",
        grpc.ok,
        grpc.shed,
        grpc.shed_without_retry_after,
        grpc.other,
        rest.ok,
        rest.shed,
        rest.shed_without_retry_after,
        rest.other,
        metric(&page, "edge_calls_shed_total"),
        mib(before),
        mib(peak_rss),
        mib(rss(pid)),
    );
    assert!(
        grpc.other.is_empty() && rest.other.is_empty(),
        "only OK or shed"
    );
    assert!(
        grpc.ok > 0 && rest.ok > 0,
        "calls within the limit are served"
    );
    assert!(grpc.shed > 0 && rest.shed > 0, "the excess is shed");
    assert_eq!(
        grpc.shed_without_retry_after + rest.shed_without_retry_after,
        0
    );
    assert_eq!(unhealthy, 0, "health is answered while shedding");
    assert_eq!(status_refused, 0, "/status is answered while shedding");
    assert!(rounds > 0);
    assert!(peak_rss < RSS_BOUND, "peak RSS {}", mib(peak_rss));
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_deadline_gets_the_edges_and_a_stream_does_not() {
    let mut cluster = Cluster::start(Backend::Sqlite).await;
    let (port, metrics_port, _) = gateway(&mut cluster, &[("EDGE_CALL_TIMEOUT_MS", "1500")]).await;
    let token = login(port, "3117").await;
    // A channel with no timeout of its own: the calls send no grpc-timeout.
    let bare = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_lazy();
    let bearer = parking_e2e::Bearer::new(Some(&token));
    let auth = tonic::service::interceptor::InterceptedService::new(bare, bearer);
    let mut reservations = TicketReservationServiceClient::new(auth.clone());
    let first = reservations
        .reserve_ticket(reserve(3117, &day(1)))
        .await
        .unwrap()
        .into_inner();
    let mut watch = ReservationStatusServiceClient::new(auth.clone())
        .watch_reservation_status(pb::WatchReservationStatusRequest {
            reservation_id: first.id,
        })
        .await
        .unwrap()
        .into_inner();

    // The reservation service stops answering (its process frozen, its socket open).
    let frozen = cluster.pids(Svc::Reservation);
    for pid in &frozen {
        signal(*pid, "-STOP");
    }
    let started = Instant::now();
    let unary = reservations
        .get_reservation(pb::GetReservationRequest { id: first.id })
        .await;
    let unary_took = started.elapsed();
    let started = Instant::now();
    let (rest_code, _, rest_body) = parking_e2e::http(
        port,
        http::Request::get(format!("/ticketReservations/{}", first.id))
            .header("authorization", format!("Bearer {token}")),
        Bytes::new(),
    )
    .await;
    let rest_took = started.elapsed();
    // A caller's own shorter deadline wins.
    let mut short = tonic::Request::new(pb::GetReservationRequest { id: first.id });
    short.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let own = reservations.get_reservation(short).await;
    let own_took = started.elapsed();
    for pid in &frozen {
        signal(*pid, "-CONT");
    }

    // The watch has been open for several call deadlines; it still delivers the
    // cancellation's update.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let opened_for = Instant::now();
    reservations
        .cancel_reservation(pb::CancelReservationRequest { id: first.id })
        .await
        .unwrap();
    let mut statuses = Vec::new();
    let cancelled = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(update) = watch.message().await.unwrap() {
            statuses.push(update.stage().as_str_name());
            if update.stage() == pb::ReservationStage::StageCancelRequested {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let page = metrics_at(metrics_port).await;
    println!(
        "deadline (EDGE_CALL_TIMEOUT_MS 1500): unary with no grpc-timeout {:?} after \
         {unary_took:.2?}; REST {rest_code} after {rest_took:.2?}; own 300 ms deadline {:?} \
         after {own_took:.2?}; edge_calls_deadline_exceeded_total {}; the watch saw {statuses:?} \
         up to {:.1?} after it opened",
        unary.as_ref().map_err(tonic::Status::code),
        own.as_ref().map_err(tonic::Status::code),
        metric(&page, "edge_calls_deadline_exceeded_total"),
        opened_for.elapsed() + unary_took + rest_took + own_took + Duration::from_secs(2),
    );
    assert_eq!(unary.unwrap_err().code(), tonic::Code::DeadlineExceeded);
    assert!(unary_took >= Duration::from_millis(1400), "{unary_took:?}");
    assert_eq!(rest_code, 504, "{}", String::from_utf8_lossy(&rest_body));
    // tonic's client ends its own expired call as CANCELLED ("Timeout expired").
    assert!(matches!(
        own.unwrap_err().code(),
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    ));
    assert!(own_took < Duration::from_millis(1400), "{own_took:?}");
    assert!(metric(&page, "edge_calls_deadline_exceeded_total") >= 2.0);
    assert!(
        cancelled,
        "the stream outlived the call deadline: {statuses:?}"
    );
}
