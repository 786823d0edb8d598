//! Connecting to NATS JetStream and declaring the streams. A service starts even while
//! NATS is down (the core takes applications 24/7): the client connects in the
//! background, and the relay and consumers retry until it is there.

use crate::events::EventContext;
use async_nats::jetstream::{self, stream};
use std::time::Duration;

/// A JetStream operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("cannot declare stream {stream}: {source}")]
    Stream {
        stream: String,
        source: jetstream::context::CreateStreamError,
    },
    #[error("stream {stream} not declared within {after:?} (electing a leader?)")]
    StreamTimeout { stream: String, after: Duration },
}

/// A JetStream context on a client that keeps reconnecting by itself. `url` may list
/// several servers of a cluster, comma-separated; the client also learns the others from
/// the one it reaches.
pub async fn connect(url: &str, name: &str) -> Result<jetstream::Context, NatsError> {
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(servers)
        .await?;
    Ok(jetstream::new(client))
}

/// How long declaring a stream may take. A replicated stream whose leader just died
/// answers nothing until its followers elect a new one; the client's own 10 s request
/// timeout would hold the relay (and its backlog) that long, while the caller's back-off
/// retries sooner.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(1);

/// Declares the stream of `context` with `replicas` copies (or finds it). Every side may
/// declare it, so a consumer started before its publisher still finds its stream; all of
/// a deployment's services are given the same STREAM_REPLICAS.
pub async fn ensure_stream(
    js: &jetstream::Context,
    namespace: &str,
    context: EventContext,
    replicas: usize,
) -> Result<stream::Stream, NatsError> {
    let name = context.stream(namespace);
    let declared = js.get_or_create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![context.stream_subjects(namespace)],
        storage: stream::StorageType::File,
        // The window in which JetStream drops a re-published event by its Nats-Msg-Id.
        duplicate_window: Duration::from_secs(120),
        // On a JetStream cluster: the stream survives losing all but a quorum of servers.
        num_replicas: replicas.max(1),
        ..Default::default()
    });
    match tokio::time::timeout(DECLARE_TIMEOUT, declared).await {
        Ok(declared) => declared.map_err(|source| NatsError::Stream {
            stream: name,
            source,
        }),
        Err(_) => Err(NatsError::StreamTimeout {
            stream: name,
            after: DECLARE_TIMEOUT,
        }),
    }
}
