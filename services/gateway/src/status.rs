//! `GET /status`: the gateway's readiness, each backend's `grpc.health.v1` answer and the
//! event pipeline, as JSON.
//!
//! - `"status": "ok"` (200): every backend serves and no durable consumer is behind.
//! - `"status": "degraded"` (200): every backend serves, but a durable consumer of the
//!   deployment's streams is behind (more events pending than [`Thresholds::pending`], or
//!   its oldest waiting event older than [`Thresholds::oldest_age`]), a stream is missing,
//!   or NATS does not answer. Applications are still taken: they are durable and settle
//!   when the pipeline catches up. `"reasons"` says what is behind and by how much.
//! - `"status": "down"` (503): a backend does not serve (for load balancers and people).
//!
//! The pipeline is read from JetStream (the durables of `<NS>_RESERVATION`,
//! `<NS>_PARKINGLOT` and `<NS>_DELIVERY`, listed, never named here) at most once per
//! [`CACHE_FOR`], every read bounded by [`NATS_TIMEOUT`]: `/status` under load costs NATS
//! nothing more.

use async_nats::jetstream;
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use parking_common::events::EventContext;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// How long one reading of the pipeline is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(1);
/// The most one reading of the pipeline may take.
pub const NATS_TIMEOUT: Duration = Duration::from_secs(1);

/// The backends to ask, by name.
#[derive(Clone)]
pub struct Backends {
    /// The core: one not serving makes the gateway down.
    pub core: Vec<(&'static str, Channel)>,
    /// Services added later (community): shown, but the core runs the same without them,
    /// so they never change the verdict.
    pub optional: Vec<(&'static str, Channel)>,
}

async fn check(channel: Channel) -> String {
    let mut client = HealthClient::new(channel);
    let asked = client.check(HealthCheckRequest {
        service: String::new(),
    });
    match tokio::time::timeout(Duration::from_secs(1), asked).await {
        Ok(Ok(answer)) => ServingStatus::try_from(answer.get_ref().status)
            .map(|s| s.as_str_name().to_owned())
            .unwrap_or_else(|_| "UNKNOWN".to_owned()),
        Ok(Err(status)) => format!("UNAVAILABLE: {}", status.message()),
        Err(_) => "UNAVAILABLE: no answer within 1s".to_owned(),
    }
}

/// When a durable consumer counts as behind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// More events than this pending (waiting + unacknowledged).
    pub pending: u64,
    /// Its oldest unacknowledged event older than this.
    pub oldest_age: Duration,
}

/// One durable consumer as JetStream reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Durable {
    pub stream: String,
    pub durable: String,
    /// Events the consumer has not been given yet (`num_pending`).
    pub waiting: u64,
    /// Events given to it and not acknowledged yet (`num_ack_pending`).
    pub in_flight: u64,
    /// How long its oldest unacknowledged event has been in the stream (unknown: `None`).
    pub oldest_age: Option<Duration>,
}

impl Durable {
    /// Events not handled yet.
    pub fn pending(&self) -> u64 {
        self.waiting + self.in_flight
    }

    /// Whether it is behind by `thresholds`.
    pub fn is_behind(&self, thresholds: &Thresholds) -> bool {
        self.pending() > thresholds.pending
            || self
                .oldest_age
                .is_some_and(|age| age > thresholds.oldest_age)
    }

    fn to_json(&self, thresholds: &Thresholds) -> Value {
        json!({
            "stream": self.stream,
            "durable": self.durable,
            "pending": self.pending(),
            "waiting": self.waiting,
            "in_flight": self.in_flight,
            "oldest_age_seconds": self.oldest_age.map(|a| (a.as_secs_f64() * 1000.0).round() / 1000.0),
            "behind": self.is_behind(thresholds),
        })
    }
}

/// What the gateway saw of the event pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Pipeline {
    /// The durables of the streams found, and the streams not found.
    Seen {
        durables: Vec<Durable>,
        missing_streams: Vec<String>,
    },
    /// NATS did not answer (why).
    Unreachable(String),
}

/// The answer's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ok,
    Degraded,
    Down,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Degraded => "degraded",
            Self::Down => "down",
        }
    }
}

/// The decision and why (one line per backend down, durable behind, stream missing).
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub state: State,
    pub reasons: Vec<String>,
}

/// Decides `/status` from the backends' health answers (`name`, `SERVING` or why not) and
/// the pipeline: down when a backend does not serve, degraded when the pipeline is
/// behind or unknown, ok otherwise.
pub fn decide(
    backends: &[(String, String)],
    pipeline: &Pipeline,
    thresholds: &Thresholds,
) -> Verdict {
    let mut reasons = Vec::new();
    let mut down = false;
    for (name, answer) in backends {
        if answer != "SERVING" {
            down = true;
            reasons.push(format!("backend {name} is not serving: {answer}"));
        }
    }
    let behind = match pipeline {
        Pipeline::Unreachable(why) => {
            reasons.push(format!("event pipeline unknown: {why}"));
            true
        }
        Pipeline::Seen {
            durables,
            missing_streams,
        } => {
            for stream in missing_streams {
                reasons.push(format!(
                    "stream {stream} not found: no service has declared it, or NATS lost it"
                ));
            }
            let mut behind = !missing_streams.is_empty();
            for d in durables.iter().filter(|d| d.is_behind(thresholds)) {
                behind = true;
                let age = match d.oldest_age {
                    Some(age) => format!(
                        ", oldest waiting {:.1} s (limit {} s)",
                        age.as_secs_f64(),
                        thresholds.oldest_age.as_secs_f64()
                    ),
                    None => String::new(),
                };
                reasons.push(format!(
                    "consumer {} on {} is behind: {} events pending (limit {}){age}",
                    d.durable,
                    d.stream,
                    d.pending(),
                    thresholds.pending
                ));
            }
            behind
        }
    };
    let state = if down {
        State::Down
    } else if behind {
        State::Degraded
    } else {
        State::Ok
    };
    Verdict { state, reasons }
}

/// Reads the durable consumers of the deployment's streams, at most once per
/// [`CACHE_FOR`]; concurrent callers share one reading.
pub struct PipelineWatch {
    js: jetstream::Context,
    namespace: String,
    streams: Vec<String>,
    thresholds: Thresholds,
    last: tokio::sync::Mutex<Option<(Instant, Arc<Pipeline>)>>,
}

impl PipelineWatch {
    pub fn new(js: jetstream::Context, namespace: &str, thresholds: Thresholds) -> Self {
        Self {
            js,
            namespace: namespace.to_owned(),
            streams: EventContext::ALL
                .iter()
                .map(|c| c.stream(namespace))
                .collect(),
            thresholds,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The latest reading (made now when the last one is older than [`CACHE_FOR`]) and
    /// its age.
    pub async fn view(&self) -> (Arc<Pipeline>, Duration) {
        let mut last = self.last.lock().await;
        if let Some((at, view)) = last.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return (view.clone(), at.elapsed());
            }
        }
        let view = match tokio::time::timeout(NATS_TIMEOUT, self.read()).await {
            Ok(Ok(view)) => view,
            Ok(Err(why)) => Pipeline::Unreachable(why),
            Err(_) => Pipeline::Unreachable(format!(
                "NATS did not answer within {}s",
                NATS_TIMEOUT.as_secs_f64()
            )),
        };
        let view = Arc::new(view);
        *last = Some((Instant::now(), view.clone()));
        (view, Duration::ZERO)
    }

    async fn read(&self) -> Result<Pipeline, String> {
        let read = self.streams.iter().map(|name| self.read_stream(name));
        let mut durables = Vec::new();
        let mut missing_streams = Vec::new();
        for (name, found) in self
            .streams
            .iter()
            .zip(futures_util::future::try_join_all(read).await?)
        {
            match found {
                Some(mut list) => durables.append(&mut list),
                None => missing_streams.push(name.clone()),
            }
        }
        Ok(Pipeline::Seen {
            durables,
            missing_streams,
        })
    }

    /// The durables of one stream; `None` when the stream does not exist.
    async fn read_stream(&self, name: &str) -> Result<Option<Vec<Durable>>, String> {
        use jetstream::context::GetStreamErrorKind;
        let stream = match self.js.get_stream(name).await {
            Ok(stream) => stream,
            Err(e) => {
                if let GetStreamErrorKind::JetStream(inner) = e.kind() {
                    if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND {
                        return Ok(None);
                    }
                }
                return Err(format!("NATS: stream {name}: {e}"));
            }
        };
        let consumers: Vec<_> = stream
            .consumers()
            .try_collect()
            .await
            .map_err(|e| format!("NATS: consumers of {name}: {e}"))?;
        let mut durables = Vec::new();
        // Ephemeral consumers (ordered readers, tools) are nobody's backlog.
        for info in consumers
            .into_iter()
            .filter(|i| i.config.durable_name.is_some())
        {
            let waiting = info.num_pending;
            let in_flight = info.num_ack_pending as u64;
            let oldest_age = if waiting + in_flight > 0 {
                oldest_unacked(&stream, &info).await
            } else {
                None
            };
            durables.push(Durable {
                stream: name.to_owned(),
                durable: info.name,
                waiting,
                in_flight,
                oldest_age,
            });
        }
        durables.sort_by(|a, b| a.durable.cmp(&b.durable));
        Ok(Some(durables))
    }

    /// Answers `/status`.
    pub async fn report(self: Arc<Self>, backends: Backends) -> Response {
        let checks = |list: Vec<(&'static str, Channel)>| {
            futures_util::future::join_all(
                list.into_iter()
                    .map(|(name, channel)| async move { (name.to_owned(), check(channel).await) }),
            )
        };
        let (results, optional, (pipeline, age)) = tokio::join!(
            checks(backends.core),
            checks(backends.optional),
            self.view()
        );
        let verdict = decide(&results, &pipeline, &self.thresholds);
        let map = |list: Vec<(String, String)>| {
            list.into_iter()
                .map(|(name, answer)| (name, Value::String(answer)))
                .collect::<serde_json::Map<String, Value>>()
        };
        let body = json!({
            "status": verdict.state.as_str(),
            "gateway": "SERVING",
            "backends": map(results),
            "optional_backends": map(optional),
            "pipeline": self.pipeline_json(&pipeline, age),
            "reasons": verdict.reasons,
        });
        let code = match verdict.state {
            State::Down => http::StatusCode::SERVICE_UNAVAILABLE,
            State::Ok | State::Degraded => http::StatusCode::OK,
        };
        (
            code,
            [(http::header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }

    fn pipeline_json(&self, pipeline: &Pipeline, age: Duration) -> Value {
        let t = &self.thresholds;
        let mut out = json!({
            "namespace": self.namespace,
            "read_ms_ago": age.as_millis() as u64,
            "thresholds": {
                "pending": t.pending,
                "oldest_age_seconds": t.oldest_age.as_secs_f64(),
            },
        });
        match pipeline {
            Pipeline::Unreachable(why) => {
                out["status"] = "unknown".into();
                out["error"] = why.clone().into();
            }
            Pipeline::Seen {
                durables,
                missing_streams,
            } => {
                let behind = durables.iter().filter(|d| d.is_behind(t));
                let degraded = behind.clone().next().is_some() || !missing_streams.is_empty();
                out["status"] = if degraded { "degraded" } else { "ok" }.into();
                out["behind"] = behind.map(|d| d.to_json(t)).collect::<Vec<_>>().into();
                out["consumers"] = durables
                    .iter()
                    .map(|d| d.to_json(t))
                    .collect::<Vec<_>>()
                    .into();
                out["missing_streams"] = missing_streams.clone().into();
            }
        }
        out
    }
}

/// The age of a consumer's oldest unacknowledged event: the first message at or after
/// its ack floor + 1 that its filter takes (one message get; unknown if that fails).
async fn oldest_unacked(
    stream: &jetstream::stream::Stream,
    info: &jetstream::consumer::Info,
) -> Option<Duration> {
    let filter = match (
        info.config.filter_subject.as_str(),
        info.config.filter_subjects.as_slice(),
    ) {
        ("", [one]) => one.clone(),
        ("", _) => ">".to_owned(),
        (one, _) => one.to_owned(),
    };
    let message = stream
        .get_first_raw_message_by_subject(filter, info.ack_floor.stream_sequence + 1)
        .await
        .ok()?;
    let stored = message.time.unix_timestamp_nanos();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos() as i128;
    Some(Duration::from_nanos(
        u64::try_from((now - stored).max(0)).unwrap_or(u64::MAX),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Thresholds = Thresholds {
        pending: 1000,
        oldest_age: Duration::from_secs(5),
    };

    fn serving() -> Vec<(String, String)> {
        ["reservation", "parking-lot", "delivery", "status"]
            .iter()
            .map(|n| (n.to_string(), "SERVING".to_owned()))
            .collect()
    }

    fn durable(name: &str, waiting: u64, in_flight: u64, age_ms: Option<u64>) -> Durable {
        Durable {
            stream: "PARKING_RESERVATION".into(),
            durable: name.into(),
            waiting,
            in_flight,
            oldest_age: age_ms.map(Duration::from_millis),
        }
    }

    fn seen(durables: Vec<Durable>) -> Pipeline {
        Pipeline::Seen {
            durables,
            missing_streams: vec![],
        }
    }

    #[test]
    fn ok_when_serving_and_nothing_behind() {
        let pipeline = seen(vec![
            durable("parking-lot-allocate", 0, 0, None),
            // Busy but within both limits: 1000 pending is not over 1000.
            durable("status-reservation", 990, 10, Some(4_900)),
        ]);
        let verdict = decide(&serving(), &pipeline, &LIMITS);
        assert_eq!(verdict.state, State::Ok, "{verdict:?}");
        assert!(verdict.reasons.is_empty());
    }

    #[test]
    fn degraded_when_pending_over_the_limit_naming_the_consumer_and_how_far() {
        let pipeline = seen(vec![
            durable("parking-lot-allocate", 1200, 1, Some(100)),
            durable("status-reservation", 0, 0, None),
        ]);
        let verdict = decide(&serving(), &pipeline, &LIMITS);
        assert_eq!(verdict.state, State::Degraded);
        assert_eq!(verdict.reasons.len(), 1, "{verdict:?}");
        let reason = &verdict.reasons[0];
        assert!(reason.contains("parking-lot-allocate"), "{reason}");
        assert!(
            reason.contains("1201 events pending (limit 1000)"),
            "{reason}"
        );
    }

    #[test]
    fn degraded_when_the_oldest_waiting_event_is_too_old() {
        let pipeline = seen(vec![durable("reservation-settle", 1, 0, Some(5_001))]);
        let verdict = decide(&serving(), &pipeline, &LIMITS);
        assert_eq!(verdict.state, State::Degraded);
        assert!(
            verdict.reasons[0].contains("oldest waiting 5.0 s"),
            "{verdict:?}"
        );
    }

    #[test]
    fn degraded_not_down_when_nats_does_not_answer_or_a_stream_is_missing() {
        let verdict = decide(
            &serving(),
            &Pipeline::Unreachable("NATS did not answer within 1s".into()),
            &LIMITS,
        );
        assert_eq!(verdict.state, State::Degraded);
        assert!(verdict.reasons[0].contains("within 1s"), "{verdict:?}");
        let missing = Pipeline::Seen {
            durables: vec![],
            missing_streams: vec!["PARKING_DELIVERY".into()],
        };
        let verdict = decide(&serving(), &missing, &LIMITS);
        assert_eq!(verdict.state, State::Degraded);
        assert!(verdict.reasons[0].contains("PARKING_DELIVERY"));
    }

    #[test]
    fn down_when_a_backend_does_not_serve_whatever_the_pipeline() {
        let mut backends = serving();
        backends[1].1 = "UNAVAILABLE: no answer within 1s".into();
        for pipeline in [
            seen(vec![]),
            seen(vec![durable("parking-lot-allocate", 5000, 0, Some(60_000))]),
            Pipeline::Unreachable("down".into()),
        ] {
            let verdict = decide(&backends, &pipeline, &LIMITS);
            assert_eq!(verdict.state, State::Down, "{pipeline:?}");
            assert!(verdict.reasons[0].contains("parking-lot is not serving"));
        }
    }
}
