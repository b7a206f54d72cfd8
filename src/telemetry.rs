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

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

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

/// Names the product the current request is about, in its span (and so in its log lines).
pub fn about_product(id: i32) {
    tracing::Span::current().record("product_id", id);
}

/// Names the review the current request is about, in its span (and so in its log lines).
pub fn about_review(id: i32) {
    tracing::Span::current().record("review_id", id);
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
        fmt.json().fmt_fields(AppendJsonFields).boxed()
    } else {
        fmt.boxed()
    };
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

/// The JSON log format's span fields, written straight into the span's JSON object and
/// appended to as a request's span learns more (its route, its product). Hand-written because
/// tracing-subscriber's `JsonFields` builds a map of `serde_json::Value`s for every span and,
/// at every later record, parses the span's fields and serialises them again: with the request
/// span it cost a JSON cache hit 15-20 % of its throughput (`BENCH_ONLY=observe scripts/bench`).
struct AppendJsonFields;

/// Writes fields as `"name":value` pairs of a JSON object.
struct JsonPairs<'a> {
    out: &'a mut String,
    first: bool,
}

impl JsonPairs<'_> {
    fn key(&mut self, field: &Field) {
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        let name = field.name();
        json_string(self.out, name.strip_prefix("r#").unwrap_or(name));
        self.out.push(':');
    }
}

impl Visit for JsonPairs<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        json_string(self.out, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            self.out.push_str("null");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        json_string(self.out, &format!("{value:?}"));
    }
}

/// `s` as a JSON string (RFC 8259: quote, backslash and control characters escaped).
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl<'writer> FormatFields<'writer> for AppendJsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut out = String::from("{");
        fields.record(&mut JsonPairs {
            out: &mut out,
            first: true,
        });
        out.push('}');
        writer.write_str(&out)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> std::fmt::Result {
        let out = &mut current.fields;
        if out.pop() != Some('}') {
            out.clear();
            out.push('{');
        }
        let first = out.ends_with('{');
        fields.record(&mut JsonPairs { out, first });
        out.push('}');
        Ok(())
    }
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
    use super::{otlp_configured, AppendJsonFields};
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn json_span_fields_recorded_later_join_the_object() {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .fmt_fields(AppendJsonFields)
                .with_writer(move || Sink(sink.clone())),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                route = tracing::field::Empty,
                id = tracing::field::Empty,
                text = "a \"quoted\" {brace} \\ tab\t\u{1}"
            );
            span.record("route", "/reviews");
            span.record("id", 7);
            span.in_scope(|| tracing::info!("inside"));
            let empty = tracing::info_span!("bare", later = tracing::field::Empty);
            empty.record("later", true);
            empty.in_scope(|| tracing::info!("inside bare"));
        });
        let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(
            lines[0]["span"],
            serde_json::json!({
                "name": "request", "route": "/reviews", "id": 7,
                "text": "a \"quoted\" {brace} \\ tab\t\u{1}"
            })
        );
        assert_eq!(
            lines[1]["span"],
            serde_json::json!({"name": "bare", "later": true})
        );
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

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
