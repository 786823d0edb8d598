//! Logs and traces, set up the same way by every binary.
//!
//! - Logs: `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` writes one JSON object
//!   per line with `trace_id`, `span_id` and the `correlation_id` (a reservation id) of
//!   the span the line was logged in, so a log search and a trace view meet.
//! - Traces: every span is an OpenTelemetry span (W3C trace context, propagated through
//!   gRPC metadata and NATS headers by [`propagation`](crate::propagation)). When
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set they are exported over
//!   OTLP/gRPC (Jaeger, Tempo, the OpenTelemetry Collector); the SDK honours the standard
//!   `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`.
//!   [`Telemetry::shutdown`] flushes what is still buffered.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::fmt;
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt as tfmt, prelude::*, EnvFilter};

/// Owns the tracer provider; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: SdkTracerProvider,
    /// Whether spans leave the process.
    pub exporting: bool,
}

impl Telemetry {
    /// Sends what is still buffered and stops the exporter. Call after the service stops.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            // Nothing buffered is not an error worth a warning.
            tracing::debug!(%error, "tracer provider shutdown");
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()))
}

/// Installs the global subscriber and propagator. Call once, first thing in `main`,
/// inside the tokio runtime (the OTLP exporter runs on it).
pub fn init(service: &str) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_owned());
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    let mut export_error = None;
    let mut exporting = otlp_configured();
    if exporting {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(e) => {
                export_error = Some(e.to_string());
                exporting = false;
            }
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer(service.to_owned());
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn,async_nats=warn,h2=warn"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // RUST_LOG filters the log lines only: a quieter log must not thin out the traces,
    // which keep our own spans (info and up) and drop the transport crates' internals.
    let spans = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("h2", tracing::level_filters::LevelFilter::OFF)
        .with_target("hyper", tracing::level_filters::LevelFilter::OFF)
        .with_target("tower", tracing::level_filters::LevelFilter::OFF)
        .with_target("sqlx", tracing::Level::WARN)
        .with_target("sea_orm", tracing::Level::WARN)
        .with_target("async_nats", tracing::Level::WARN);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_error_records_to_exceptions(true)
        .with_filter(spans);
    let registry = tracing_subscriber::registry().with(otel);
    let result = if json {
        registry
            .with(
                tfmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonLine)
                    .with_filter(lines(filter)),
            )
            .try_init()
    } else {
        registry
            .with(tfmt::layer().with_target(false).with_filter(lines(filter)))
            .try_init()
    };
    if result.is_ok() {
        tracing::info!(service, exporting, "telemetry initialised");
    }
    if let Some(error) = export_error {
        tracing::error!(%error, "OTLP exporter not started; traces stay in this process");
    }
    Telemetry {
        provider,
        exporting,
    }
}

/// RUST_LOG decides which events become lines; our spans (info and up) stay visible to the
/// formatter whatever it says, so a warning still names its span and correlation id.
fn lines<S>(filter: EnvFilter) -> impl tracing_subscriber::layer::Filter<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    use tracing_subscriber::filter::{filter_fn, FilterExt};
    filter.or(filter_fn(|meta| {
        meta.is_span() && *meta.level() <= tracing::Level::INFO && !meta.target().starts_with("h2")
    }))
}

/// One JSON object per event: time, level, target, the event's fields, the trace and span
/// ids of the current span, and the nearest `correlation_id` of the spans around it.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = serde_json::Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), event.metadata().level().as_str().into());
        line.insert("target".into(), event.metadata().target().into());
        let mut visitor = JsonVisitor(&mut line);
        event.record(&mut visitor);
        // Ids from the OpenTelemetry layer, read before any span extension is borrowed.
        let context = tracing::Span::current().context();
        let span = context.span();
        let ids = span.span_context();
        if ids.is_valid() {
            line.insert("trace_id".into(), ids.trace_id().to_string().into());
            line.insert("span_id".into(), ids.span_id().to_string().into());
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                let parsed: serde_json::Value =
                    serde_json::from_str(fields.as_str()).unwrap_or_default();
                if let Some(id) = parsed.get("correlation_id") {
                    line.insert("correlation_id".into(), id.clone());
                    break;
                }
            }
            if let Some(leaf) = ctx.lookup_current() {
                line.insert("span".into(), leaf.name().into());
            }
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields into a JSON object.
struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}
