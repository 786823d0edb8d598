//! Test support for in-process tests of the stores, policies and the consumer runner (the
//! `testing` feature; no service binary is spawned): a migrated database per test, on
//! SQLite in memory or on a fresh PostgreSQL database, a JetStream namespace of its own,
//! and the runner's unit of work for a batch of events without JetStream.
//!
//! - SQLite: `sqlite::memory:` through [`crate::db::connect`]; sqlx gives the pool one
//!   shared-cache in-memory database of its own, so every pooled connection sees the same
//!   tables and writers queue on the shared cache's lock as they would on a file's.
//! - PostgreSQL: a database named uniquely per test on the server at `TEST_POSTGRES_URL`
//!   (default `postgres://postgres:postgres@127.0.0.1:5432/postgres`), dropped when the
//!   [`TestDb`] is dropped (also when the test panics).
//! - JetStream at `NATS_URL` (default `nats://127.0.0.1:4222`): [`TestNats`] picks a
//!   namespace of its own and deletes its streams when dropped.

use crate::consumer::{CallingPolicy, ConsumerMetrics, Event, HandleError, Runner, Subscription};
use crate::events::{self, EventContext};
use crate::outbox::Outbox;
use crate::pb::{event_envelope::Payload, EventEnvelope};
use async_nats::jetstream;
use prost::Message;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use sea_orm_migration::{MigrationTrait, MigratorTrait};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on (an admin URL).
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// The NATS server (with JetStream) tests publish to.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A short name no other test uses: lower-case letters and digits, starting with `t`.
pub fn unique_name() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// Runs `future` to completion on a runtime of its own, on another thread: for clean-ups
/// in `Drop`, which may run inside (or outside) the test's runtime.
fn run_aside<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let thread = std::thread::spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(future),
            Err(error) => eprintln!("test clean-up skipped: {error}"),
        }
    });
    let _ = thread.join();
}

/// Only the shared tables (outbox and inbox), for tests of the shared library.
pub struct SharedMigrator;

impl MigratorTrait for SharedMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        crate::db::shared_migrations()
    }
}

/// A migrated database that exists for one test.
pub struct TestDb {
    pub db: DatabaseConnection,
    pub backend: Backend,
    /// The PostgreSQL database to drop at the end.
    postgres: Option<String>,
}

impl TestDb {
    /// A fresh database on `backend`, migrated with `M`, connected as services connect.
    pub async fn open<M: MigratorTrait>(backend: Backend) -> Self {
        let (url, postgres) = match backend {
            Backend::Sqlite => ("sqlite::memory:".to_owned(), None),
            Backend::Postgres => {
                let name = format!("pt_{}", unique_name());
                let admin = Database::connect(postgres_admin_url()).await.expect(
                    "PostgreSQL must be running for the postgres tests (TEST_POSTGRES_URL)",
                );
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create the test database");
                admin.close().await.ok();
                let admin_url = postgres_admin_url();
                let base = admin_url
                    .rsplit_once('/')
                    .map(|(base, _)| base.to_owned())
                    .expect("TEST_POSTGRES_URL ends with /<database>");
                (format!("{base}/{name}"), Some(name))
            }
        };
        // From here on a failure still drops the database.
        let mut test = Self {
            db: DatabaseConnection::Disconnected,
            backend,
            postgres,
        };
        test.db = crate::db::connect_and_migrate::<M>(&url)
            .await
            .expect("open and migrate the test database");
        test
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.postgres.take() else {
            return;
        };
        // Its connections go with it (FORCE), pooled or not.
        run_aside(async move {
            if let Ok(admin) = Database::connect(postgres_admin_url()).await {
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
                admin.close().await.ok();
            }
        });
    }
}

/// Declares each `async fn scenario(backend: Backend)` as two tests, one per database:
/// `sqlite::scenario` and `postgres::scenario`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::testing::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::testing::Backend::Postgres).await })*
        }
    };
}

/// An event as the runner hands it to a policy: a new envelope for `payload`, first delivery.
pub fn event(reservation_id: i64, payload: Payload) -> Event {
    let envelope = events::envelope(reservation_id, payload);
    as_event(envelope)
}

/// The event of an envelope (its payload moved out), first delivery.
pub fn as_event(mut envelope: EventEnvelope) -> Event {
    let payload = envelope
        .payload
        .take()
        .expect("a test envelope carries a payload");
    Event {
        envelope,
        payload,
        delivered: 1,
        span: tracing::Span::none(),
    }
}

/// What the runner does for one batch, without JetStream: each event checked, then the
/// runner's own unit of work ([`crate::consumer::apply_checked`]). Returns how many were
/// new (and applied).
pub async fn apply_batch<P: CallingPolicy>(
    db: &DatabaseConnection,
    outbox: &Outbox,
    durable: &str,
    policy: &P,
    batch: &[Event],
) -> Result<usize, HandleError> {
    let mut checked = Vec::with_capacity(batch.len());
    for event in batch {
        checked.push(policy.check(event).await?);
    }
    let batch: Vec<(&Event, &P::Checked)> = batch.iter().zip(&checked).collect();
    crate::consumer::apply_checked(policy, db, outbox, durable, &batch).await
}

/// A JetStream namespace of one test; its streams are deleted when it is dropped.
pub struct TestNats {
    pub js: jetstream::Context,
    pub namespace: String,
}

impl TestNats {
    /// Connects to `NATS_URL` under a new namespace.
    pub async fn connect() -> Self {
        let client = async_nats::connect(nats_url())
            .await
            .expect("NATS with JetStream must be running (NATS_URL)");
        Self {
            js: jetstream::new(client),
            namespace: unique_name(),
        }
    }

    /// Publishes `envelope` to its subject in this namespace, with `msg_id` as Nats-Msg-Id
    /// (None: no de-duplication), and waits for JetStream's ack.
    pub async fn publish(&self, envelope: &EventEnvelope, msg_id: Option<&str>) {
        let payload = envelope
            .payload
            .as_ref()
            .expect("a published envelope carries a payload");
        let (name, context) = events::describe(payload);
        let subject = context.subject(&self.namespace, name);
        self.publish_raw(&subject, envelope.encode_to_vec(), msg_id)
            .await;
    }

    /// Publishes raw bytes (say, something no consumer can decode) to `subject`.
    pub async fn publish_raw(&self, subject: &str, bytes: Vec<u8>, msg_id: Option<&str>) {
        let mut publish = jetstream::message::PublishMessage::build().payload(bytes.into());
        if let Some(id) = msg_id {
            publish = publish.message_id(id);
        }
        self.js
            .send_publish(subject.to_owned(), publish)
            .await
            .expect("publish")
            .await
            .expect("JetStream acknowledged the publish");
    }

    /// Waits until `durable` on the stream of `context` has nothing pending and nothing
    /// awaiting its acknowledgement (at most `within`); panics otherwise.
    pub async fn drained(&self, context: EventContext, durable: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let stream = context.stream(&self.namespace);
        let mut last = None;
        loop {
            if let Ok(stream) = self.js.get_stream(&stream).await {
                if let Ok(info) = stream.consumer_info(durable).await {
                    let state = (info.num_pending, info.num_ack_pending);
                    if state == (0, 0) {
                        return;
                    }
                    last = Some(state);
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{durable} not drained within {within:?}: (pending, ack pending) {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let names: Vec<String> = EventContext::ALL
            .into_iter()
            .map(|context| context.stream(&self.namespace))
            .collect();
        run_aside(async move {
            // A client of its own: the test's belongs to the test's runtime.
            if let Ok(client) = async_nats::connect(nats_url()).await {
                let js = jetstream::new(client);
                for name in names {
                    let _ = js.delete_stream(&name).await;
                }
            }
        });
    }
}

/// A policy running under the real [`Runner`] on a durable of a [`TestNats`] namespace,
/// with metrics of its own.
pub struct Running {
    registry: prometheus_client::registry::Registry,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestNats {
    /// Runs `policy` on `subscription` in this namespace, on `db` and `outbox`, as the
    /// services do (batches of 256, 4 checks in flight).
    pub fn run<P: CallingPolicy>(
        &self,
        subscription: Subscription,
        policy: Arc<P>,
        db: &DatabaseConnection,
        outbox: Outbox,
    ) -> Running {
        let metrics = ConsumerMetrics::default();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let runner = Runner {
            js: self.js.clone(),
            namespace: self.namespace.clone(),
            subscription,
            policy,
            db: db.clone(),
            outbox,
            batch: 256,
            concurrency: 4,
            metrics,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(runner.run(stop.clone()));
        Running {
            registry,
            stop,
            task,
        }
    }
}

impl Running {
    /// `consumer_events_total` of `outcome` (0 when absent).
    pub fn events(&self, outcome: &str) -> u64 {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            return 0;
        }
        text.lines()
            .find(|line| {
                line.starts_with("consumer_events_total{")
                    && line.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Cancels the runner and waits (at most 10 s) until it has stopped.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the runner stops when cancelled")
            .expect("the runner did not panic");
    }
}
