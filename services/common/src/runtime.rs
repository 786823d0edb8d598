//! The life of a service process, the same for every service: open and migrate the
//! database, bind the gRPC port, connect to JetStream, run the outbox relay and the event
//! policies beside the gRPC server, and stop them all with one token.

use crate::config::{redact_url, AuthArgs, EventArgs};
use crate::consumer::{self, CallingPolicy, Subscription};
use crate::events::EventContext;
use crate::outbox::Outbox;
use crate::{db, grpc, nats};
use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Nats(#[from] crate::nats::NatsError),
    #[error(transparent)]
    Serve(#[from] crate::grpc::ServeError),
    #[error("{0}")]
    Auth(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Where a service listens and keeps its data.
#[derive(Debug, Clone)]
pub struct Endpoints<'a> {
    /// Service name, for logs and the NATS connection name.
    pub name: &'static str,
    pub listen: SocketAddr,
    pub database_url: &'a str,
    pub events: &'a EventArgs,
    /// How callers' tokens are checked.
    pub auth: &'a AuthArgs,
    /// mTLS for the gRPC server and the service's calls (none set: plain HTTP/2).
    pub tls: &'a crate::config::TlsArgs,
    /// Where `/metrics` is served (None: not served).
    pub metrics_listen: Option<SocketAddr>,
}

/// A started service: its database, JetStream and outbox, and the tasks beside its server.
pub struct Host {
    pub db: DatabaseConnection,
    pub js: async_nats::jetstream::Context,
    /// The service's outbox (unused by a service that publishes nothing).
    pub outbox: Outbox,
    /// Where services register their Prometheus series before `serve`.
    pub registry: prometheus_client::registry::Registry,
    /// The server's RED series (registered in `registry`).
    rpc_metrics: crate::observe::RpcMetrics,
    /// The policies' series (registered in `registry`).
    consumer_metrics: consumer::ConsumerMetrics,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    /// Checks the token of every call the server takes.
    verifier: Arc<crate::auth::Verifier>,
    /// The server's mTLS, if any.
    tls: Option<crate::tls::Tls>,
    /// Policies (consumers): stopped with the server.
    tasks: JoinSet<()>,
    /// The relay: stopped last, so what the last calls and handlers committed goes out.
    relay: Option<(tokio::task::JoinHandle<()>, CancellationToken)>,
    shutdown: CancellationToken,
    namespace: String,
    /// Most events per transaction, per consumer.
    batch: usize,
    /// Most calls to other services in flight, per consumer.
    concurrency: usize,
}

impl Host {
    /// Opens the database (migrating it with `M`), binds the port and connects to NATS.
    /// NATS may be down: the client connects in the background.
    pub async fn start<M: MigratorTrait>(
        at: Endpoints<'_>,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        tracing::info!(
            service = at.name,
            listen = %at.listen,
            database = %redact_url(at.database_url),
            nats = %redact_url(&at.events.nats_url),
            namespace = %at.events.event_namespace,
            "starting"
        );
        let verifier = crate::auth::Verifier::new(at.auth).map_err(StartError::Auth)?;
        verifier.prefetch();
        let tls = crate::tls::Tls::load(at.tls)?;
        let db = db::connect_and_migrate::<M>(at.database_url).await?;
        let listener = grpc::bind(at.listen).await?;
        let metrics_listener = match at.metrics_listen {
            Some(addr) => Some(grpc::bind(addr).await?),
            None => None,
        };
        let js = nats::connect(&at.events.nats_url, at.name).await?;
        let mut registry = prometheus_client::registry::Registry::default();
        let rpc_metrics = crate::observe::RpcMetrics::default();
        rpc_metrics.register(&mut registry);
        let replicas = usize::from(at.events.stream_replicas);
        let outbox = Outbox::new(&at.events.event_namespace).with_replicas(replicas);
        outbox.metrics.register(&mut registry);
        let consumer_metrics = consumer::ConsumerMetrics::default();
        consumer_metrics.register(&mut registry);
        Ok(Self {
            db,
            js,
            outbox,
            consumer_metrics,
            registry,
            rpc_metrics,
            listener,
            metrics_listener,
            verifier,
            tls,
            tasks: JoinSet::new(),
            relay: None,
            shutdown,
            namespace: at.events.event_namespace.clone(),
            batch: usize::from(at.events.consumer_batch),
            concurrency: at.events.consumer_concurrency,
        })
    }

    /// The service's mTLS (TLS_*), for its calls to other services too.
    pub fn tls(&self) -> Option<&crate::tls::Tls> {
        self.tls.as_ref()
    }

    /// Runs the outbox relay, publishing to the stream of `context`.
    pub fn relay(&mut self, context: EventContext) {
        self.tasks.spawn(crate::outbox::sample(
            self.db.clone(),
            self.outbox.metrics.clone(),
            self.shutdown.clone(),
        ));
        let relay = self.outbox.relay(self.db.clone(), self.js.clone(), context);
        let stop = CancellationToken::new();
        self.relay = Some((tokio::spawn(relay.run(stop.clone())), stop));
    }

    /// Runs an event policy on its durable consumer, in batches on this host's database.
    pub fn follow<P: CallingPolicy>(&mut self, subscription: Subscription, policy: Arc<P>) {
        self.tasks.spawn(consumer::sample(
            self.js.clone(),
            self.namespace.clone(),
            subscription.clone(),
            self.consumer_metrics.clone(),
            self.shutdown.clone(),
        ));
        let runner = consumer::Runner {
            js: self.js.clone(),
            namespace: self.namespace.clone(),
            subscription,
            policy,
            db: self.db.clone(),
            outbox: self.outbox.clone(),
            batch: self.batch,
            concurrency: self.concurrency,
            metrics: self.consumer_metrics.clone(),
        };
        self.tasks.spawn(runner.run(self.shutdown.clone()));
    }

    /// Runs a task of the service beside the server; it gets the shutdown token and is
    /// awaited like the policies.
    pub fn spawn<F>(&mut self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task(self.shutdown.clone()));
    }

    /// Serves `service` until shutdown, then waits for the relay and the policies to
    /// finish their in-flight work.
    pub async fn serve<S: crate::grpc::GrpcService>(
        mut self,
        service: S,
    ) -> Result<(), StartError> {
        if let Some(listener) = self.metrics_listener.take() {
            let registry = Arc::new(std::mem::take(&mut self.registry));
            self.tasks.spawn(crate::metrics::serve(
                listener,
                registry,
                self.shutdown.clone(),
            ));
        }
        let served = grpc::serve(
            self.listener,
            service,
            self.rpc_metrics.clone(),
            self.verifier.clone(),
            self.tls.as_ref(),
            self.shutdown.clone(),
        )
        .await;
        // A server that failed takes its tasks down with it.
        self.shutdown.cancel();
        while let Some(result) = self.tasks.join_next().await {
            if let Err(error) = result {
                tracing::error!(%error, "background task panicked");
            }
        }
        if let Some((relay, stop)) = self.relay.take() {
            stop.cancel();
            if let Err(error) = relay.await {
                tracing::error!(%error, "outbox relay panicked");
            }
        }
        served.map_err(Into::into)
    }
}
