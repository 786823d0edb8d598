//! The life of a service process: background tasks (relay, consumers) beside the gRPC
//! server, all stopped by one token, and the start-up errors a binary reports.

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
}

/// Background tasks of a service, stopped by the same token as its server.
pub struct Background {
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
}

impl Background {
    /// Tasks that stop when `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            tasks: JoinSet::new(),
            shutdown,
        }
    }

    /// The token tasks should watch.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Starts a task.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Cancels every task (if not yet) and waits until each has finished its in-flight work.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while let Some(result) = self.tasks.join_next().await {
            if let Err(error) = result {
                tracing::error!(%error, "background task panicked");
            }
        }
    }
}
