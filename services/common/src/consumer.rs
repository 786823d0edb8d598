//! Durable pull consumers, one per (context, policy). Replicas of a service bind the same
//! durable, so JetStream hands each event to exactly one of them (the consumer-group
//! behaviour the seed got from Kafka). A consumer that was down resumes where its durable
//! stopped. Handlers must be idempotent (see [`crate::inbox`]): delivery is at least once.

use crate::events::{self, EventContext};
use crate::pb::{event_envelope::Payload, EventEnvelope};
use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// One decoded event as a handler sees it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The envelope (its payload moved to `payload`).
    pub envelope: EventEnvelope,
    pub payload: Payload,
    /// How many times JetStream has delivered this message (1 the first time).
    pub delivered: u64,
}

impl Event {
    /// The event's name, e.g. "Occupied".
    pub fn name(&self) -> &'static str {
        events::describe(&self.payload).0
    }
}

/// Why a handler did not finish an event; it is redelivered later either way.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// A dependency said "not now" (circuit open, delivery down): retry after `delay`.
    #[error("deferred for {delay:?}: {reason}")]
    Later { delay: Duration, reason: String },
    /// The event can never be handled (it breaks the contract): stop redelivering it.
    #[error("poison event: {0}")]
    Poison(String),
    /// Anything else (database busy, bug): retried with exponential back-off.
    #[error(transparent)]
    Failed(#[from] Box<dyn std::error::Error + Send + Sync>),
}

impl From<sea_orm::DbErr> for HandleError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Failed(Box::new(err))
    }
}

/// A policy reacting to events.
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Handles one event. `Ok` acknowledges it; an error has it redelivered.
    async fn handle(&self, event: &Event) -> Result<(), HandleError>;
}

/// Checks the day an event carries; an event breaking the contract is poison.
pub fn event_day(value: &str) -> Result<String, HandleError> {
    crate::calendar::parse_day("reservation_date", value)
        .map(crate::calendar::format_day)
        .map_err(|e| HandleError::Poison(e.to_string()))
}

/// Which events a policy follows and under which durable name.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The stream followed.
    pub context: EventContext,
    /// Durable consumer name, shared by replicas: `<service>-<policy>`.
    pub durable: String,
    /// Only this event name, or every event of the stream when `None`.
    pub event_name: Option<&'static str>,
}

/// Back-off for the n-th delivery of a failing message: 200 ms doubling to 30 s.
pub fn backoff(delivered: u64) -> Duration {
    let exp = delivered.saturating_sub(1).min(8) as u32;
    Duration::from_millis(200u64 << exp).min(Duration::from_secs(30))
}

/// Runs a policy until `shutdown`: declares stream and durable, then handles messages,
/// up to `concurrency` at once. In-flight messages finish before it returns.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurableLabels {
    durable: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    durable: String,
    outcome: &'static str,
}

/// Lag buckets in seconds: the SLO is reserve-to-view within 1 s.
const LAG_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 10.0, 60.0,
];

/// The policies' series, by durable consumer.
#[derive(Clone, Debug)]
pub struct ConsumerMetrics {
    pending: Family<DurableLabels, Gauge>,
    ack_pending: Family<DurableLabels, Gauge>,
    redelivered: Family<DurableLabels, Gauge>,
    handled: Family<OutcomeLabels, Counter>,
    lag: Family<DurableLabels, Histogram>,
}

impl Default for ConsumerMetrics {
    fn default() -> Self {
        Self {
            pending: Family::default(),
            ack_pending: Family::default(),
            redelivered: Family::default(),
            handled: Family::default(),
            lag: Family::new_with_constructor(|| Histogram::new(LAG_BUCKETS)),
        }
    }
}

impl ConsumerMetrics {
    /// Registers `consumer_pending`, `consumer_ack_pending`, `consumer_redelivered`,
    /// `consumer_events_total{outcome}` and `consumer_lag_seconds`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "consumer_pending",
            "Events in the stream the durable consumer has not been given yet",
            self.pending.clone(),
        );
        registry.register(
            "consumer_ack_pending",
            "Events given to the consumer and not yet acknowledged",
            self.ack_pending.clone(),
        );
        registry.register(
            "consumer_redelivered",
            "Events delivered more than once and not yet acknowledged",
            self.redelivered.clone(),
        );
        registry.register(
            "consumer_events",
            "Events handled, by outcome: done, deferred, failed, poison",
            self.handled.clone(),
        );
        registry.register_with_unit(
            "consumer_lag",
            "From the event's occurrence to its handling by this consumer",
            Unit::Seconds,
            self.lag.clone(),
        );
    }

    fn handled(&self, durable: &str, outcome: &'static str) {
        self.handled
            .get_or_create(&OutcomeLabels {
                durable: durable.to_owned(),
                outcome,
            })
            .inc();
    }
}

/// Reads the durable consumer's counts from JetStream every few seconds.
pub async fn sample(
    js: jetstream::Context,
    namespace: String,
    subscription: Subscription,
    metrics: ConsumerMetrics,
    shutdown: CancellationToken,
) {
    let labels = DurableLabels {
        durable: subscription.durable.clone(),
    };
    let stream = subscription.context.stream(&namespace);
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let info = async {
            js.get_stream(&stream)
                .await
                .ok()?
                .consumer_info(&subscription.durable)
                .await
                .ok()
        };
        if let Some(info) = info.await {
            let set = |family: &Family<DurableLabels, Gauge>, value: u64| {
                family
                    .get_or_create(&labels)
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            };
            set(&metrics.pending, info.num_pending);
            set(&metrics.ack_pending, info.num_ack_pending as u64);
            set(&metrics.redelivered, info.num_redelivered as u64);
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn run<H: EventHandler>(
    js: jetstream::Context,
    namespace: String,
    subscription: Subscription,
    handler: Arc<H>,
    concurrency: usize,
    metrics: ConsumerMetrics,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        match bind(&js, &namespace, &subscription).await {
            // Pull small batches: a prefetched message waits for a handler while its
            // ack_wait runs, and a long wait would have JetStream redeliver it meanwhile.
            Ok(consumer) => match consumer
                .stream()
                .max_messages_per_batch(concurrency.max(1) * 2)
                .messages()
                .await
            {
                Ok(messages) => {
                    failures = 0;
                    tracing::info!(durable = %subscription.durable, "consuming");
                    // Errors in a row mean the stream or the durable is gone (a NATS that
                    // lost its state): end this pull and bind again.
                    let mut errors_in_a_row = 0u32;
                    messages
                        .take_until(shutdown.cancelled())
                        .take_while(move |m| {
                            errors_in_a_row = if m.is_err() { errors_in_a_row + 1 } else { 0 };
                            futures::future::ready(errors_in_a_row < 5)
                        })
                        .for_each_concurrent(concurrency.max(1), |message| {
                            let handler = handler.clone();
                            let durable = subscription.durable.as_str();
                            let metrics = &metrics;
                            async move {
                                match message {
                                    Ok(message) => {
                                        handle_one(&*handler, durable, metrics, message).await
                                    }
                                    Err(error) => tracing::warn!(%error, durable, "pull failed"),
                                }
                            }
                        })
                        .await;
                    if shutdown.is_cancelled() {
                        break;
                    }
                    tracing::warn!(durable = %subscription.durable, "pull kept failing; binding again");
                }
                Err(error) => {
                    tracing::warn!(%error, durable = %subscription.durable, "cannot pull")
                }
            },
            Err(error) => {
                tracing::warn!(%error, durable = %subscription.durable, "cannot bind consumer")
            }
        }
        failures = failures.saturating_add(1);
        let delay = Duration::from_millis(200 << failures.min(5));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

async fn bind(
    js: &jetstream::Context,
    namespace: &str,
    sub: &Subscription,
) -> Result<jetstream::consumer::Consumer<pull::Config>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = crate::nats::ensure_stream(js, namespace, sub.context).await?;
    let filter_subject = sub
        .event_name
        .map(|name| sub.context.subject(namespace, name))
        .unwrap_or_default();
    let consumer = stream
        .get_or_create_consumer(
            &sub.durable,
            pull::Config {
                durable_name: Some(sub.durable.clone()),
                filter_subject,
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 1024,
                ..Default::default()
            },
        )
        .await?;
    Ok(consumer)
}

async fn handle_one<H: EventHandler + ?Sized>(
    handler: &H,
    durable: &str,
    metrics: &ConsumerMetrics,
    message: jetstream::Message,
) {
    let delivered = message
        .info()
        .map(|i| i.delivered.max(1) as u64)
        .unwrap_or(1);
    let (envelope, payload) = match events::decode(&message.payload) {
        Ok(decoded) => decoded,
        Err(error) => {
            // Redelivering a message nobody can read helps no one: stop it, loudly.
            tracing::error!(%error, subject = %message.subject, durable, "undecodable event dropped");
            ack(&message, AckKind::Term).await;
            metrics.handled(durable, "poison");
            return;
        }
    };
    let event = Event {
        envelope,
        payload,
        delivered,
    };
    let span = tracing::info_span!(
        "consume",
        otel.name = %format!("{} process", message.subject),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.consumer.group.name = durable,
        event = event.name(),
        event_id = %event.envelope.event_id,
        correlation_id = %event.envelope.correlation_id,
        delivered
    );
    // Child of (and linked to) the publish span whose context came in the headers; the
    // envelope's own context when a message has none (published before tracing existed).
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    let (traceparent, tracestate) = match header("traceparent") {
        tp if tp.is_empty() => (
            event.envelope.traceparent.clone(),
            event.envelope.tracestate.clone(),
        ),
        tp => (tp, header("tracestate")),
    };
    crate::propagation::adopt(
        &span,
        crate::propagation::from_pair(&traceparent, &tracestate),
    );
    async {
        match handler.handle(&event).await {
            Ok(()) => {
                ack(&message, AckKind::Ack).await;
                metrics.handled(durable, "done");
                // First deliveries only: a redelivery the inbox already applied says
                // nothing about how late the view is.
                if let Some(at) = event
                    .envelope
                    .occurred_at
                    .as_ref()
                    .filter(|_| delivered == 1)
                {
                    let occurred = at.seconds as f64 + f64::from(at.nanos) / 1e9;
                    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
                    metrics
                        .lag
                        .get_or_create(&DurableLabels {
                            durable: durable.to_owned(),
                        })
                        .observe((now - occurred).max(0.0));
                }
            }
            Err(HandleError::Later { delay, reason }) => {
                tracing::info!(?delay, %reason, "deferred");
                ack(&message, AckKind::Nak(Some(delay))).await;
                metrics.handled(durable, "deferred");
            }
            Err(HandleError::Poison(reason)) => {
                tracing::error!(%reason, "event refused for good");
                ack(&message, AckKind::Term).await;
                metrics.handled(durable, "poison");
            }
            Err(HandleError::Failed(error)) => {
                let delay = backoff(delivered);
                tracing::warn!(%error, ?delay, "handler failed, will retry");
                ack(&message, AckKind::Nak(Some(delay))).await;
                metrics.handled(durable, "failed");
            }
        }
    }
    .instrument(span)
    .await
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        // The message comes back after ack_wait; the inbox makes that harmless.
        tracing::warn!(%error, ?kind, "acknowledgement not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(4), Duration::from_millis(1600));
        assert_eq!(backoff(100), Duration::from_secs(30));
        assert_eq!(backoff(0), Duration::from_millis(200));
    }
}
