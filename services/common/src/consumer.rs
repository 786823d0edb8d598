//! Durable pull consumers, one per (context, policy). Replicas of a service bind the same
//! durable, so JetStream hands each event to exactly one of them (the consumer-group
//! behaviour the seed got from Kafka). A consumer that was down resumes where its durable
//! stopped. Delivery is at least once: the [`Runner`] records every event in the inbox in
//! the same transaction as its effects, so a redelivered event changes nothing.
//!
//! Events are handled in batches (what JetStream has ready, up to a bound): one
//! transaction and one commit per batch, acknowledgements sent without awaiting a reply.
//! A policy only says what a batch of events changes ([`Policy`]); the runner owns the
//! unit of work around it.

use crate::events::{self, EventContext};
use crate::inbox;
use crate::outbox::Outbox;
use crate::pb::{event_envelope::Payload, EventEnvelope};
use crate::unit::UnitOfWork;
use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::{FutureExt, StreamExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use sea_orm::DatabaseConnection;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// One decoded event as a policy sees it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The envelope (its payload moved to `payload`).
    pub envelope: EventEnvelope,
    pub payload: Payload,
    /// How many times JetStream has delivered this message (1 the first time).
    pub delivered: u64,
    /// The consume span of this event: events it causes are published under it, so one
    /// application stays one trace even when its events are handled in a batch.
    pub span: tracing::Span,
}

impl Event {
    /// The event's name, e.g. "Occupied".
    pub fn name(&self) -> &'static str {
        events::describe(&self.payload).0
    }

    /// A new event caused by this one, correlated by `reservation_id`, in this event's trace.
    pub fn follow_up(&self, reservation_id: i64, payload: Payload) -> EventEnvelope {
        self.span
            .in_scope(|| events::envelope(reservation_id, payload))
    }
}

/// Why a policy did not finish an event; it is redelivered later either way.
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

/// A policy reacting to events: what a batch of events changes, in the unit of work the
/// runner opened (whose inbox rows it already wrote). The events are new to this consumer
/// and in stream order. Nothing else: no transaction, inbox, commit or relay to handle.
#[async_trait::async_trait]
pub trait Policy: Send + Sync + 'static {
    /// Applies `events`. An error rolls back the whole batch (which is then retried one
    /// event at a time); say which event is at fault by failing alone.
    async fn apply(&self, work: &mut UnitOfWork, events: &[&Event]) -> Result<(), HandleError>;

    /// After the commit of applied events (e.g. to tell watchers).
    fn applied(&self, _events: &[&Event]) {}
}

/// A policy that must call another service before it may change anything (ParkingLot's
/// vacate calls CancelDelivery). `check` runs per event outside any transaction (a slow
/// call must not hold the database's locks); what it found reaches `apply`.
#[async_trait::async_trait]
pub trait CallingPolicy: Send + Sync + 'static {
    /// What `check` found out about one event.
    type Checked: Send + Sync;

    /// Runs before the transaction; an error settles this event alone (deferred, poison,
    /// failed) and leaves the rest of the batch to go on.
    async fn check(&self, event: &Event) -> Result<Self::Checked, HandleError>;

    /// As [`Policy::apply`], with what `check` found for each event.
    async fn apply(
        &self,
        work: &mut UnitOfWork,
        batch: &[(&Event, &Self::Checked)],
    ) -> Result<(), HandleError>;

    /// As [`Policy::applied`].
    fn applied(&self, _events: &[&Event]) {}
}

#[async_trait::async_trait]
impl<P: Policy> CallingPolicy for P {
    type Checked = ();

    async fn check(&self, _event: &Event) -> Result<(), HandleError> {
        Ok(())
    }

    async fn apply(
        &self,
        work: &mut UnitOfWork,
        batch: &[(&Event, &())],
    ) -> Result<(), HandleError> {
        let events: Vec<&Event> = batch.iter().map(|(event, _)| *event).collect();
        Policy::apply(self, work, &events).await
    }

    fn applied(&self, events: &[&Event]) {
        Policy::applied(self, events)
    }
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

/// Runs one policy on its durable consumer until shutdown, a batch at a time.
///
/// A batch is what JetStream has ready, up to `batch` messages: its events are checked
/// (calls to other services, outside any transaction), then applied in one unit of work
/// whose first statement records them in the inbox, committed once, then acknowledged
/// without a round trip per message. If the batch fails as a whole, each event is tried
/// alone, so one poison or deferred event never holds the rest hostage. Batches follow
/// each other, and events are applied in stream order, so the events of one reservation
/// keep their order within a replica.
pub struct Runner<P> {
    pub js: jetstream::Context,
    pub namespace: String,
    pub subscription: Subscription,
    pub policy: Arc<P>,
    /// The service's database and outbox: every batch is one [`UnitOfWork`] on them.
    pub db: DatabaseConnection,
    pub outbox: Outbox,
    /// Most events handled in one transaction.
    pub batch: usize,
    /// Most checks (calls to other services) in flight at once.
    pub concurrency: usize,
    pub metrics: ConsumerMetrics,
}

impl<P: CallingPolicy> Runner<P> {
    /// Binds the durable (again after errors) and handles batches until `shutdown`; the
    /// batch in hand is finished and acknowledged before it returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let durable = self.subscription.durable.clone();
        let batch = self.batch.max(1);
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match bind(
                &self.js,
                &self.namespace,
                &self.subscription,
                self.outbox.replicas(),
            )
            .await
            {
                Ok(consumer) => match consumer
                    .stream()
                    .max_messages_per_batch(batch)
                    .messages()
                    .await
                {
                    Ok(mut messages) => {
                        failures = 0;
                        tracing::info!(%durable, batch, "consuming");
                        // Errors in a row mean the stream or the durable is gone (a NATS
                        // that lost its state): end this pull and bind again.
                        let mut errors_in_a_row = 0u32;
                        while errors_in_a_row < 5 {
                            let first = tokio::select! {
                                next = messages.next() => next,
                                _ = shutdown.cancelled() => break,
                            };
                            let Some(first) = first else { break };
                            let mut taken = vec![first];
                            // Whatever else is already here joins the batch; nothing waits.
                            while taken.len() < batch {
                                match messages.next().now_or_never() {
                                    Some(Some(next)) => taken.push(next),
                                    _ => break,
                                }
                            }
                            let mut ready = Vec::with_capacity(taken.len());
                            for message in taken {
                                match message {
                                    Ok(message) => {
                                        errors_in_a_row = 0;
                                        ready.push(message);
                                    }
                                    Err(error) => {
                                        errors_in_a_row += 1;
                                        tracing::warn!(%error, %durable, "pull failed");
                                    }
                                }
                            }
                            if !ready.is_empty() {
                                self.handle_batch(ready).await;
                            }
                        }
                        if shutdown.is_cancelled() {
                            break;
                        }
                        tracing::warn!(%durable, "pull kept failing; binding again");
                    }
                    Err(error) => tracing::warn!(%error, %durable, "cannot pull"),
                },
                Err(error) => tracing::warn!(%error, %durable, "cannot bind consumer"),
            }
            failures = failures.saturating_add(1);
            let delay = Duration::from_millis(200 << failures.min(5));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// Decodes, checks, applies and acknowledges one batch of messages.
    async fn handle_batch(&self, messages: Vec<jetstream::Message>) {
        let durable = self.subscription.durable.as_str();
        let mut batch: Vec<(jetstream::Message, Event)> = Vec::with_capacity(messages.len());
        let mut repeats = Vec::new();
        let mut seen = HashSet::with_capacity(messages.len());
        for message in messages {
            match decode(&message, durable) {
                Ok(event) if seen.insert(event.envelope.event_id.clone()) => {
                    batch.push((message, event))
                }
                // The same event twice in one batch (redelivered meanwhile): once is enough.
                Ok(_) => repeats.push(message),
                Err(error) => {
                    // Redelivering a message nobody can read helps no one: stop it, loudly.
                    tracing::error!(%error, subject = %message.subject, durable, "undecodable event dropped");
                    ack(&message, AckKind::Term).await;
                    self.metrics.handled(durable, "poison");
                }
            }
        }
        let checks: Vec<_> = batch
            .iter()
            .map(|(_, event)| self.policy.check(event).instrument(event.span.clone()))
            .collect();
        let checks = futures::stream::iter(checks)
            .buffered(self.concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        let mut ready = Vec::with_capacity(batch.len());
        for ((message, event), checked) in batch.into_iter().zip(checks) {
            match checked {
                Ok(checked) => ready.push((message, event, checked)),
                Err(error) => self.settle(&message, &event, Err(error)).await,
            }
        }
        match self.apply(&ready).await {
            Ok(()) => {
                for (message, event, _) in &ready {
                    self.settle(message, event, Ok(())).await;
                }
            }
            Err(error) if ready.len() == 1 => {
                let (message, event, _) = &ready[0];
                self.settle(message, event, Err(error)).await;
            }
            // Which event is at fault? Each alone: the good ones commit, the bad one gets
            // its own outcome (poison, deferred, failed).
            Err(error) => {
                tracing::warn!(%error, durable, events = ready.len(), "batch failed; handling its events one by one");
                for one in ready.chunks(1) {
                    let outcome = self.apply(one).await;
                    self.settle(&one[0].0, &one[0].1, outcome).await;
                }
            }
        }
        for message in repeats {
            ack(&message, AckKind::Ack).await;
        }
    }

    /// One unit of work for `batch` (see [`apply_checked`]).
    async fn apply(
        &self,
        batch: &[(jetstream::Message, Event, P::Checked)],
    ) -> Result<(), HandleError> {
        let checked: Vec<(&Event, &P::Checked)> = batch
            .iter()
            .map(|(_, event, checked)| (event, checked))
            .collect();
        apply_checked(
            &*self.policy,
            &self.db,
            &self.outbox,
            &self.subscription.durable,
            &checked,
        )
        .await
        .map(|_| ())
    }

    /// Acknowledges (or not) one event by its outcome and counts it.
    async fn settle(
        &self,
        message: &jetstream::Message,
        event: &Event,
        outcome: Result<(), HandleError>,
    ) {
        let durable = self.subscription.durable.as_str();
        let _entered = event.span.enter();
        match outcome {
            Ok(()) => {
                ack(message, AckKind::Ack).await;
                self.metrics.handled(durable, "done");
                // First deliveries only: a redelivery the inbox already applied says
                // nothing about how late the view is.
                if let Some(at) = event
                    .envelope
                    .occurred_at
                    .as_ref()
                    .filter(|_| event.delivered == 1)
                {
                    let occurred = at.seconds as f64 + f64::from(at.nanos) / 1e9;
                    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
                    self.metrics
                        .lag
                        .get_or_create(&DurableLabels {
                            durable: durable.to_owned(),
                        })
                        .observe((now - occurred).max(0.0));
                }
            }
            Err(HandleError::Later { delay, reason }) => {
                tracing::info!(?delay, %reason, "deferred");
                ack(message, AckKind::Nak(Some(delay))).await;
                self.metrics.handled(durable, "deferred");
            }
            Err(HandleError::Poison(reason)) => {
                tracing::error!(%reason, "event refused for good");
                ack(message, AckKind::Term).await;
                self.metrics.handled(durable, "poison");
            }
            Err(HandleError::Failed(error)) => {
                let delay = backoff(event.delivered);
                tracing::warn!(%error, ?delay, "handler failed, will retry");
                ack(message, AckKind::Nak(Some(delay))).await;
                self.metrics.handled(durable, "failed");
            }
        }
    }
}

async fn bind(
    js: &jetstream::Context,
    namespace: &str,
    sub: &Subscription,
    replicas: usize,
) -> Result<jetstream::consumer::Consumer<pull::Config>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = crate::nats::ensure_stream(js, namespace, sub.context, replicas).await?;
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

/// The runner's unit of work for a batch of checked events: the inbox rows of all of them
/// in `durable`'s inbox first, the policy's effects on those not applied before, one
/// commit, then [`CallingPolicy::applied`]. Returns how many were new. Public so tests can
/// run a batch without JetStream.
pub async fn apply_checked<P: CallingPolicy>(
    policy: &P,
    db: &DatabaseConnection,
    outbox: &Outbox,
    durable: &str,
    batch: &[(&Event, &P::Checked)],
) -> Result<usize, HandleError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut work = UnitOfWork::begin(db, outbox).await?;
    let ids: Vec<&str> = batch
        .iter()
        .map(|(event, _)| event.envelope.event_id.as_str())
        .collect();
    let fresh = inbox::record_new(work.db(), durable, &ids).await?;
    let new: Vec<(&Event, &P::Checked)> = batch
        .iter()
        .filter(|(event, _)| fresh.contains(&event.envelope.event_id))
        .copied()
        .collect();
    if new.is_empty() {
        work.rollback().await?;
        return Ok(0);
    }
    if let Err(error) = policy.apply(&mut work, &new).await {
        work.rollback().await?;
        return Err(error);
    }
    work.commit().await?;
    let events: Vec<&Event> = new.into_iter().map(|(event, _)| event).collect();
    policy.applied(&events);
    Ok(events.len())
}

/// Decodes a message into an event with its consume span: a child of (and linked to) the
/// publish span whose context came in the headers, or of the envelope's own context when a
/// message has none (published before tracing existed).
fn decode(message: &jetstream::Message, durable: &str) -> Result<Event, events::DecodeError> {
    let delivered = message
        .info()
        .map(|i| i.delivered.max(1) as u64)
        .unwrap_or(1);
    let (envelope, payload) = events::decode(&message.payload)?;
    let span = tracing::info_span!(
        "consume",
        otel.name = %format!("{} process", message.subject),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.consumer.group.name = durable,
        event = events::describe(&payload).0,
        event_id = %envelope.event_id,
        correlation_id = %envelope.correlation_id,
        delivered
    );
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    let (traceparent, tracestate) = match header("traceparent") {
        tp if tp.is_empty() => (envelope.traceparent.clone(), envelope.tracestate.clone()),
        tp => (tp, header("tracestate")),
    };
    crate::propagation::adopt(
        &span,
        crate::propagation::from_pair(&traceparent, &tracestate),
    );
    Ok(Event {
        envelope,
        payload,
        delivered,
        span,
    })
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    // A publish to the message's reply subject, not awaited by the server: the message
    // comes back after ack_wait if it is lost, and the inbox makes that harmless.
    if let Err(error) = message.ack_with(kind).await {
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
