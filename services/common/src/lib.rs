//! What every parking-mesh service does the same way, so no service copies it.
//!
//! - [`config`]: the command-line / environment settings every service shares.
//! - [`db`]: connecting to SQLite or PostgreSQL through sea-orm and running migrations,
//!   plus the outbox and inbox tables every service carries.
//! - [`events`]: the event envelope, subjects and stream names on JetStream.
//! - [`outbox`]: the transactional outbox and the relay that publishes it.
//! - [`auth`]: tokens on every call: verifying them against the gateway's keys (servers)
//!   and a service's own token (callers).
//! - [`identity`]: the verified caller, and what each role may do.
//! - [`inbox`]: processed-event ids, written in the same transaction as a handler's effect.
//! - [`nats`]: connecting to JetStream and declaring streams.
//! - [`consumer`]: durable pull consumers shared by replicas, handling events in batches.
//! - [`unit`]: the unit of work: one transaction, its staged events, commit wakes the relay.
//! - [`grpc`]: serving a tonic service with health, reflection and graceful shutdown.
//! - [`calendar`]: calendar days in the car park's time zone and the booking window.
//! - [`metrics`]: the Prometheus registry served at /metrics.
//! - [`propagation`]: W3C trace context through gRPC metadata, outbox rows and NATS headers.
//! - [`observe`]: a server span and the RED series (calls by code, latency) per gRPC call.
//! - [`paging`]: page sizes and page tokens for list calls.
//! - [`runtime`]: the life of a service: database, JetStream, relay and policies beside the server.
//! - [`shutdown`]: SIGTERM / Ctrl-C as a cancellation token.
//! - [`telemetry`]: logs (JSON with trace ids) and OpenTelemetry traces (OTLP).
//! - [`tls`]: optional mutual TLS between services, and a local CA for one machine.
//! - `testing` (feature `testing`): databases, JetStream namespaces and batches for
//!   in-process tests.
#![forbid(unsafe_code)]

pub mod auth;
pub mod calendar;
pub mod config;
pub mod consumer;
pub mod db;
pub mod events;
pub mod grpc;
pub mod identity;
pub mod inbox;
pub mod metrics;
pub mod nats;
pub mod observe;
pub mod outbox;
pub mod paging;
pub mod propagation;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod unit;

pub use parking_proto::v1 as pb;
