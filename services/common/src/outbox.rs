//! The transactional outbox. A use case writes its aggregate change and its event rows in
//! one database transaction (a [`crate::unit::UnitOfWork`] stages them and writes them at
//! commit); the commit wakes the [`Relay`], which publishes unsent rows to JetStream with
//! `Nats-Msg-Id = event_id` and marks them sent. A crash between commit and publish loses
//! nothing: the row is still unsent at restart. A crash between publish and marking
//! re-publishes, and JetStream drops the duplicate by its message id.
//!
//! The relay keeps a whole batch of publish acks in flight and marks the batch sent in one
//! statement: awaiting each ack in turn is more than ten times slower.

use crate::events::{self, EventContext};
use crate::pb::EventEnvelope;
use async_nats::jetstream::{self, message::PublishMessage};
use prost::Message;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{LockBehavior, LockType};
use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, ConnectionTrait, DbBackend, QueryOrder, QuerySelect,
    TransactionTrait,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// One event waiting to be (or already) published.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Also the Nats-Msg-Id, so JetStream de-duplicates a re-publish.
    #[sea_orm(unique)]
    pub event_id: String,
    pub subject: String,
    /// The encoded EventEnvelope.
    pub payload: Vec<u8>,
    /// W3C trace context of the use case, sent as a NATS header.
    pub traceparent: Option<String>,
    pub created_at: DateTimeUtc,
    /// Null until JetStream acknowledged the publish.
    pub sent_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Rows published per round; also the publish acks kept in flight.
const BATCH: u64 = 256;
/// How often the relay publishes from the table's start rather than from its cursor.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long sent rows are kept for inspection before they are purged.
const KEEP_SENT: Duration = Duration::from_secs(3600);

/// The relay's series: what waits to be published and for how long.
#[derive(Clone, Debug, Default)]
pub struct OutboxMetrics {
    backlog: prometheus_client::metrics::gauge::Gauge,
    oldest_age: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    published: prometheus_client::metrics::counter::Counter,
}

impl OutboxMetrics {
    /// Registers `outbox_backlog`, `outbox_oldest_age_seconds`, `outbox_published_total`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "outbox_backlog",
            "Committed events not yet acknowledged by JetStream",
            self.backlog.clone(),
        );
        registry.register_with_unit(
            "outbox_oldest_age",
            "Age of the oldest unsent event (0 when none waits)",
            prometheus_client::registry::Unit::Seconds,
            self.oldest_age.clone(),
        );
        registry.register(
            "outbox_published",
            "Events the relay published",
            self.published.clone(),
        );
    }
}

/// The write side of the outbox, cloned into every use case of a service.
#[derive(Clone, Debug)]
pub struct Outbox {
    /// Subject prefix of this deployment.
    namespace: Arc<str>,
    /// Copies of the stream, when the relay declares it.
    replicas: usize,
    /// Wakes the relay after a commit, so events go out at once instead of at the next poll.
    committed: Arc<Notify>,
    /// Read by Prometheus; written by the relay after each round.
    pub metrics: OutboxMetrics,
}

impl Outbox {
    /// An outbox publishing under `namespace`.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.into(),
            replicas: 1,
            committed: Arc::new(Notify::new()),
            metrics: OutboxMetrics::default(),
        }
    }

    /// The outbox of a deployment whose streams have `replicas` copies.
    pub fn with_replicas(self, replicas: usize) -> Self {
        Self { replicas, ..self }
    }

    /// Copies of the deployment's streams.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The namespace events are published under.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Writes the rows of `envelopes` in one statement; the unit of work calls it inside
    /// its transaction, just before commit.
    pub(crate) async fn write<C: ConnectionTrait>(
        &self,
        db: &C,
        envelopes: &[EventEnvelope],
    ) -> Result<(), DbErr> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let now = chrono::Utc::now();
        let mut rows = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let Some(payload) = envelope.payload.as_ref() else {
                return Err(DbErr::Custom(format!(
                    "event {} has no payload and cannot be published",
                    envelope.event_id
                )));
            };
            let (name, context) = events::describe(payload);
            rows.push(ActiveModel {
                id: NotSet,
                event_id: Set(envelope.event_id.clone()),
                subject: Set(context.subject(&self.namespace, name)),
                payload: Set(envelope.encode_to_vec()),
                traceparent: Set(
                    (!envelope.traceparent.is_empty()).then(|| envelope.traceparent.clone())
                ),
                created_at: Set(now),
                sent_at: Set(None),
            });
        }
        for chunk in rows.chunks(crate::db::ROWS_PER_STATEMENT) {
            Entity::insert_many(chunk.to_vec())
                .exec_without_returning(db)
                .await?;
        }
        Ok(())
    }

    /// Tells the relay that rows were committed.
    pub(crate) fn committed(&self) {
        self.committed.notify_one();
    }

    /// The relay of this outbox, publishing the events of `context`.
    pub fn relay(
        &self,
        db: DatabaseConnection,
        js: jetstream::Context,
        context: EventContext,
    ) -> Relay {
        Relay {
            outbox: self.clone(),
            db,
            js,
            context,
        }
    }
}

/// Publishes committed outbox rows to JetStream.
pub struct Relay {
    outbox: Outbox,
    db: DatabaseConnection,
    js: jetstream::Context,
    /// The context whose stream the rows go to (declared before the first publish).
    context: EventContext,
}

impl Relay {
    /// Runs until `shutdown`, then publishes what is left once more (bounded in time).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        let mut stream_ready = false;
        let mut last_purge = tokio::time::Instant::now();
        // Where the last round ended, so a round need not walk the index entries of rows
        // already sent (on PostgreSQL they stay until vacuum, and a busy outbox has many).
        // Once a second (by the clock: commits may wake the relay more often than its
        // timer) and after an error, it starts from the beginning instead.
        let mut cursor = Cursor::default();
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            if last_sweep.elapsed() >= SWEEP_EVERY {
                cursor.sweep();
                last_sweep = tokio::time::Instant::now();
            }
            let round = async {
                if !stream_ready {
                    crate::nats::ensure_stream(
                        &self.js,
                        &self.outbox.namespace,
                        self.context,
                        self.outbox.replicas,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    stream_ready = true;
                }
                self.drain(&mut cursor).await
            };
            let outcome = tokio::select! {
                r = round => Some(r),
                _ = shutdown.cancelled() => None,
            };
            let wait = match outcome {
                None => break,
                Some(Ok(published)) => {
                    failures = 0;
                    if published > 0 {
                        tracing::debug!(published, "outbox relayed");
                    }
                    if last_purge.elapsed() > Duration::from_secs(600) {
                        self.purge_sent().await;
                        last_purge = tokio::time::Instant::now();
                    }
                    // A poll now and then also picks up rows a replica sharing the
                    // database committed (its notify does not reach us).
                    Duration::from_secs(1)
                }
                Some(Err(error)) => {
                    // The stream may be what is missing (a NATS that lost its state).
                    stream_ready = false;
                    cursor.sweep();
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_millis(100 << failures.min(6));
                    tracing::warn!(%error, ?backoff, "outbox relay could not publish, retrying");
                    backoff
                }
            };
            tokio::select! {
                _ = self.outbox.committed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        // Last flush: what was committed before the signal goes out now if NATS is there.
        cursor.sweep();
        match tokio::time::timeout(Duration::from_secs(5), self.drain(&mut cursor)).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(published = n, "outbox flushed at shutdown"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "outbox rows left unsent at shutdown; they go out at the next start")
            }
            Err(_) => tracing::warn!("outbox flush timed out; rows go out at the next start"),
            _ => {}
        }
    }

    /// Publishes every unsent row from `cursor` on, a batch at a time. Returns how many
    /// went out.
    async fn drain(&self, cursor: &mut Cursor) -> Result<usize, String> {
        let mut total = 0;
        loop {
            let from = cursor.from();
            let (published, full, last) = match self.db.get_database_backend() {
                // Replicas sharing a PostgreSQL database each take rows no other relay holds
                // (FOR UPDATE SKIP LOCKED), kept locked until they are marked sent.
                DbBackend::Postgres => {
                    let txn = self.db.begin().await.map_err(|e| e.to_string())?;
                    let round = self.round(&txn, from).await;
                    match round {
                        Ok(done) => {
                            txn.commit().await.map_err(|e| e.to_string())?;
                            done
                        }
                        Err(error) => {
                            let _ = txn.rollback().await;
                            return Err(error);
                        }
                    }
                }
                // SQLite has one writer: a transaction held while publishing would stall
                // every use case of the service. Replicas sharing a file (tests only) may
                // publish a row twice; JetStream drops the second by its Nats-Msg-Id.
                _ => self.round(&self.db, from).await?,
            };
            cursor.advance(last);
            total += published;
            if !full {
                return Ok(total);
            }
        }
    }

    /// Publishes one batch of unsent rows with ids above `from`, with every publish ack in
    /// flight, then marks the acknowledged ones sent in one statement. Returns how many
    /// went out, whether the batch was full (more may wait) and the last id published.
    async fn round<C: ConnectionTrait>(
        &self,
        db: &C,
        from: i64,
    ) -> Result<(usize, bool, i64), String> {
        let mut unsent = Entity::find()
            .filter(Column::SentAt.is_null())
            .filter(Column::Id.gt(from))
            .order_by_asc(Column::Id)
            .limit(BATCH);
        if db.get_database_backend() == DbBackend::Postgres {
            unsent = unsent.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let rows = unsent.all(db).await.map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok((0, false, from));
        }
        let full = rows.len() as u64 == BATCH;
        let mut acks = Vec::with_capacity(rows.len());
        for row in &rows {
            // `header`, not `headers`: the latter would replace Nats-Msg-Id.
            let mut publish = PublishMessage::build()
                .payload(row.payload.clone().into())
                .message_id(row.event_id.as_str());
            // A producer span under the context the row was written in, open from the
            // send to JetStream's ack; its own context travels in the header for the
            // consumers. No context, no span: the event was not part of a trace.
            let span = match &row.traceparent {
                Some(_) => tracing::info_span!(
                    "publish",
                    otel.name = %format!("{} publish", row.subject),
                    otel.kind = "producer",
                    otel.status_code = tracing::field::Empty,
                    messaging.system = "nats",
                    messaging.destination.name = %row.subject,
                    messaging.message.id = %row.event_id,
                ),
                None => tracing::Span::none(),
            };
            if let Some(tp) = &row.traceparent {
                let _ = span.set_parent(crate::propagation::from_pair(tp, ""));
                let (traceparent, tracestate) = span.in_scope(crate::propagation::current);
                let traceparent = if traceparent.is_empty() {
                    tp.clone()
                } else {
                    traceparent
                };
                publish = publish.header("traceparent", traceparent.as_str());
                if !tracestate.is_empty() {
                    publish = publish.header("tracestate", tracestate.as_str());
                }
            }
            let sending = self
                .js
                .send_publish(row.subject.clone(), publish)
                .instrument(span.clone())
                .await;
            match sending {
                Ok(ack) => acks.push((row.id, ack, span)),
                Err(e) => {
                    // Keep order: stop at the first failure, mark what went out.
                    span.record("otel.status_code", "ERROR");
                    tracing::warn!(error = %e, event_id = %row.event_id, "publish failed");
                    break;
                }
            }
        }
        let attempted = acks.len();
        let mut sent = Vec::with_capacity(attempted);
        for (id, ack, span) in acks {
            match std::future::IntoFuture::into_future(ack)
                .instrument(span.clone())
                .await
            {
                Ok(_) => sent.push(id),
                Err(e) => {
                    span.record("otel.status_code", "ERROR");
                    tracing::warn!(error = %e, id, "publish not acknowledged")
                }
            }
        }
        if !sent.is_empty() {
            Entity::update_many()
                .col_expr(Column::SentAt, Expr::value(chrono::Utc::now()))
                .filter(Column::Id.is_in(sent.clone()))
                .exec(db)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.outbox.metrics.published.inc_by(sent.len() as u64);
        if sent.len() < rows.len() {
            return Err(format!(
                "{} of {} events not published",
                rows.len() - sent.len(),
                rows.len()
            ));
        }
        let last = sent.iter().copied().max().unwrap_or(from);
        Ok((sent.len(), full, last))
    }

    async fn purge_sent(&self) {
        let Ok(keep) = chrono::Duration::from_std(KEEP_SENT) else {
            return;
        };
        let cutoff = chrono::Utc::now() - keep;
        if let Err(error) = Entity::delete_many()
            .filter(Column::SentAt.lt(cutoff))
            .exec(&self.db)
            .await
        {
            tracing::warn!(%error, "cannot purge sent outbox rows");
        }
    }
}

/// Where the relay's next round starts. Ids are given at insert but transactions commit in
/// any order, so a row may commit below the last id published: rounds start a margin below
/// it, and a sweep (every second) starts from the beginning.
#[derive(Debug, Default)]
struct Cursor {
    last: i64,
}

impl Cursor {
    /// Rows committed this far below the last id published are still seen at once.
    const MARGIN: i64 = 4 * BATCH as i64;

    fn from(&self) -> i64 {
        (self.last - Self::MARGIN).max(0)
    }

    fn advance(&mut self, last: i64) {
        self.last = self.last.max(last);
    }

    fn sweep(&mut self) {
        self.last = 0;
    }
}

/// Unsent rows, for health and tests.
pub async fn backlog<C: ConnectionTrait>(db: &C) -> Result<u64, DbErr> {
    Entity::find()
        .filter(Column::SentAt.is_null())
        .count(db)
        .await
}

/// Measures the backlog every 5 s, apart from the relay's rounds, so the series stay fresh
/// while a round hangs or NATS is down (that is when they matter).
pub async fn sample(db: DatabaseConnection, metrics: OutboxMetrics, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let oldest = Entity::find()
            .filter(Column::SentAt.is_null())
            .order_by_asc(Column::Id)
            .one(&db)
            .await;
        match (backlog(&db).await, oldest) {
            (Ok(count), Ok(oldest)) => {
                metrics
                    .backlog
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
                let age = oldest.map_or(0.0, |row| {
                    (chrono::Utc::now() - row.created_at)
                        .num_milliseconds()
                        .max(0) as f64
                        / 1000.0
                });
                metrics.oldest_age.set(age);
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::debug!(%error, "outbox backlog not measured")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_starts_a_margin_below_the_last_id_and_sweeps_from_zero() {
        let mut cursor = Cursor::default();
        assert_eq!(cursor.from(), 0);
        cursor.advance(5000);
        assert_eq!(cursor.from(), 5000 - Cursor::MARGIN);
        // A round that published nothing newer does not move it back.
        cursor.advance(10);
        assert_eq!(cursor.from(), 5000 - Cursor::MARGIN);
        cursor.advance(100);
        cursor.sweep();
        assert_eq!(cursor.from(), 0);
    }
}
