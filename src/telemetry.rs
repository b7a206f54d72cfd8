//! Logs and traces through `tracing`.
//!
//! Logs: human-readable lines by default, JSON lines when `REVIEWS_LOG_FORMAT=json`, filtered
//! by `RUST_LOG` (default `info`). A line logged inside a request carries the request's span:
//! its trace id, RPC or route, request id, and the product or review it is about.
//!
//! Traces: OpenTelemetry over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, configured by the standard variables
//! (`OTEL_SERVICE_NAME`, default `reviews`; `OTEL_TRACES_SAMPLER` and `_ARG`, default
//! parent-based always-on; `OTEL_BSP_*`; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
//! turn it off). Off, nothing is exported and the spans below the request (cache, database) are
//! not even created: their callsites are at debug level, which only the trace layer enables.

mod lines;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{filter_fn, FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use lines::{carried, in_request, RequestLog};
use lines::{AppendJsonFields, JsonLines, TextLines};

/// The name of the request's span, made only when spans are exported.
pub const REQUEST_SPAN: &str = "request";

/// Whether spans are exported: the request layer then takes the caller's trace context.
static TRACING: AtomicBool = AtomicBool::new(false);

pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// The trace pipeline, to flush at exit.
#[must_use = "shut it down at exit, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued (within the exporter's timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("traces: the last spans could not be exported: {e}");
            }
        }
    }
}

/// Names the product the current request is about, in its log lines and its exported span.
pub fn about_product(id: i32) {
    lines::set_product(id);
    if tracing_enabled() {
        tracing::Span::current().record("product_id", id);
    }
}

/// Names the review the current request is about, in its log lines and its exported span.
pub fn about_review(id: i32) {
    lines::set_review(id);
    if tracing_enabled() {
        tracing::Span::current().record("review_id", id);
    }
}

/// Whether the `OTEL_*` environment asks for exported traces.
fn otlp_configured(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs logging, and tracing when the environment asks for it. Call it from within the
/// tokio runtime: the trace exporter's connection and batches run on it.
pub fn init() -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or collector gets plain text.
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = if std::env::var("REVIEWS_LOG_FORMAT").as_deref() == Ok("json") {
        fmt.fmt_fields(AppendJsonFields)
            .event_format(JsonLines)
            .boxed()
    } else {
        fmt.event_format(TextLines).boxed()
    };
    // The request's exported span is not the logs': they name the request by its `RequestLog`.
    let not_request = filter_fn(|meta| !(meta.is_span() && meta.name() == REQUEST_SPAN))
        // No bound of its own: without one, the pair would lift every callsite's level to TRACE.
        .with_max_level_hint(LevelFilter::TRACE);
    let filter = filter.and(not_request);
    let (provider, failed) = if otlp_configured(|name| std::env::var(name).ok()) {
        match provider() {
            Ok(provider) => (Some(provider), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    // The service's own spans down to debug (cache and database calls), everything else's
    // from info.
    let traced = Targets::new()
        .with_target("reviews", LevelFilter::DEBUG)
        .with_default(LevelFilter::INFO);
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("reviews"))
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(traced)
    });
    // A second init (tests, embedding) keeps the first subscriber.
    let installed = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .is_ok();
    if let Some(e) = failed {
        tracing::warn!(error = %e, "traces: the OTLP exporter could not be built; not tracing");
    }
    if installed && provider.is_some() {
        TRACING.store(true, Ordering::Relaxed);
        tracing::info!("traces: exporting over OTLP");
    }
    Telemetry { provider }
}

fn provider() -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    // Endpoint, headers, timeout and compression from the OTEL_EXPORTER_OTLP_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("reviews");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    // The sampler and the batch settings come from OTEL_TRACES_SAMPLER and OTEL_BSP_*.
    let batches = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_resource(resource)
        .build())
}

#[cfg(test)]
mod tests {
    use super::otlp_configured;

    #[test]
    fn traces_are_on_only_with_an_endpoint_and_not_disabled() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(!otlp_configured(env(&[])));
        assert!(!otlp_configured(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
        assert!(otlp_configured(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4317"
        )])));
        assert!(otlp_configured(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4317"
        )])));
        for off in [
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert!(!otlp_configured(move |name: &str| match name {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4317".into()),
                n if n == off.0 => Some(off.1.into()),
                _ => None,
            }));
        }
    }
}
