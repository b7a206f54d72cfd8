//! Log lines, text or JSON, each naming the request it was logged in.
//!
//! A request is named by a [`RequestLog`] in a task-local, not by a `tracing` span: with logs at
//! `info`, a span per request costs the registry a slot, the fmt layer a rendering of its fields
//! and every poll an enter and an exit, some 3 µs of a 25 µs cache hit
//! (`BENCH_ONLY=observe scripts/bench`), while the task-local costs a pointer swap per poll and
//! is read only when a line is written. The lines show it as the outermost span, `request`, so
//! they read as if it were one.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::sync::Arc;

use http::HeaderValue;
use opentelemetry::trace::TraceId;
use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

tokio::task_local! {
    static REQUEST: RequestLog;
}

/// What names a request in its log lines: fixed when it arrives, but for its subject, which the
/// core learns.
#[derive(Debug, Clone, Default)]
pub struct RequestLog {
    pub trace_id: Option<TraceId>,
    /// The caller's `x-request-id`, written up to 128 bytes.
    pub request_id: Option<HeaderValue>,
    /// Of a JSON or gRPC-Web request.
    pub http_method: Option<&'static str>,
    pub http_route: Option<&'static str>,
    pub rpc_method: Option<Arc<str>>,
    product_id: Cell<Option<i32>>,
    review_id: Cell<Option<i32>>,
}

/// Runs `future` as the request `log` names.
pub fn in_request<F: Future>(log: RequestLog, future: F) -> impl Future<Output = F::Output> {
    REQUEST.scope(log, future)
}

/// Runs `future` (to be spawned) in the current request, if any, and in the current span.
pub fn carried<F: Future>(future: F) -> impl Future<Output = F::Output> {
    use tracing::Instrument;
    let log = REQUEST.try_with(RequestLog::clone).unwrap_or_default();
    REQUEST.scope(log, future.instrument(tracing::Span::current()))
}

pub(super) fn set_product(id: i32) {
    let _ = REQUEST.try_with(|r| r.product_id.set(Some(id)));
}

pub(super) fn set_review(id: i32) {
    let _ = REQUEST.try_with(|r| r.review_id.set(Some(id)));
}

/// Whether a request is named: outside one, lines carry no `request`.
fn named(r: &RequestLog) -> bool {
    r.trace_id.is_some()
        || r.request_id.is_some()
        || r.http_route.is_some()
        || r.http_method.is_some()
        || r.rpc_method.is_some()
        || r.product_id.get().is_some()
        || r.review_id.get().is_some()
}

impl RequestLog {
    /// The caller's request id, up to 128 bytes.
    pub fn request_id(&self) -> Option<&str> {
        let id = self.request_id.as_ref()?.to_str().ok()?;
        // Visible ASCII (`to_str`): any byte is a boundary.
        Some(&id[..id.len().min(128)])
    }

    /// Calls `field` for each field that is set, in a fixed order.
    fn each(&self, mut field: impl FnMut(&str, Value<'_>)) {
        if let Some(m) = self.http_method {
            field("http.request.method", Value::Str(m));
        }
        if let Some(r) = self.http_route {
            field("http.route", Value::Str(r));
        }
        if let Some(m) = &self.rpc_method {
            field("rpc.method", Value::Str(m));
        }
        if let Some(id) = self.request_id() {
            field("request_id", Value::Str(id));
        }
        if let Some(t) = self.trace_id {
            field("trace_id", Value::Trace(t));
        }
        if let Some(id) = self.product_id.get() {
            field("product_id", Value::Int(id));
        }
        if let Some(id) = self.review_id.get() {
            field("review_id", Value::Int(id));
        }
    }
}

enum Value<'a> {
    Str(&'a str),
    Int(i32),
    Trace(TraceId),
}

/// Text lines: `<time> <LEVEL> request{…}:span{…}: target: message fields`, as
/// tracing-subscriber's default format writes them.
/// Colours the level when the layer writes ANSI escapes (on a terminal).
pub(super) struct TextLines;

impl<S, N> FormatEvent<S, N> for TextLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        SystemTime.format_time(&mut w)?;
        let level = meta.level();
        match (w.has_ansi_escapes(), level_colour(level)) {
            (true, colour) => write!(w, " \x1b[{colour}m{level:>5}\x1b[0m ")?,
            (false, _) => write!(w, " {level:>5} ")?,
        }
        let _ = REQUEST.try_with(|r| -> fmt::Result {
            if !named(r) {
                return Ok(());
            }
            w.write_str("request{")?;
            let mut first = true;
            let mut result = Ok(());
            r.each(|name, value| {
                let sep = if std::mem::take(&mut first) { "" } else { " " };
                result = result.and(match value {
                    Value::Str(s) => write!(w, "{sep}{name}={s}"),
                    Value::Int(i) => write!(w, "{sep}{name}={i}"),
                    Value::Trace(t) => write!(w, "{sep}{name}={t}"),
                });
            });
            result?;
            w.write_str("}:")
        });
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                w.write_str(span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(w, "{{{fields}}}")?;
                    }
                }
                w.write_char(':')?;
            }
        }
        if REQUEST.try_with(named).unwrap_or(false) || ctx.event_scope().is_some() {
            w.write_char(' ')?;
        }
        write!(w, "{}: ", meta.target())?;
        ctx.format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

fn level_colour(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 31,
        Level::WARN => 33,
        Level::INFO => 32,
        Level::DEBUG => 34,
        Level::TRACE => 35,
    }
}

/// JSON lines, in tracing-subscriber's JSON shape: `timestamp`, `level`, `fields` (the message
/// and the event's fields), `target`, `span` (the innermost) and `spans` (from the outermost,
/// the request first), each span an object of its `name` and fields.
pub(super) struct JsonLines;

impl<S> FormatEvent<S, AppendJsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, AppendJsonFields>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut out = String::with_capacity(256);
        out.push_str("{\"timestamp\":\"");
        SystemTime.format_time(&mut Writer::new(&mut out))?;
        let _ = write!(out, "\",\"level\":\"{}\",\"fields\":{{", meta.level());
        event.record(&mut JsonPairs {
            out: &mut out,
            first: true,
            skip_log: normalized.is_some(),
        });
        out.push_str("},\"target\":");
        json_string(&mut out, meta.target());
        // Each span's object, outermost first.
        let mut spans: Vec<String> = Vec::new();
        let _ = REQUEST.try_with(|r| {
            if named(r) {
                let mut span = String::from("{\"name\":\"request\"");
                r.each(|name, value| {
                    span.push(',');
                    json_string(&mut span, name);
                    span.push(':');
                    match value {
                        Value::Str(s) => json_string(&mut span, s),
                        Value::Int(i) => {
                            let _ = write!(span, "{i}");
                        }
                        Value::Trace(t) => {
                            let _ = write!(span, "\"{t}\"");
                        }
                    }
                });
                span.push('}');
                spans.push(span);
            }
        });
        if let Some(scope) = ctx.event_scope() {
            for s in scope.from_root() {
                let mut span = String::from("{\"name\":");
                json_string(&mut span, s.name());
                let ext = s.extensions();
                // The formatted fields are a JSON object: `{` and its pairs join this one.
                let fields = ext
                    .get::<FormattedFields<AppendJsonFields>>()
                    .map(|f| f.fields.as_str())
                    .and_then(|f| f.strip_prefix('{'))
                    .and_then(|f| f.strip_suffix('}'))
                    .unwrap_or("");
                if !fields.is_empty() {
                    span.push(',');
                    span.push_str(fields);
                }
                span.push('}');
                spans.push(span);
            }
        }
        if let Some(current) = spans.last() {
            let _ = write!(out, ",\"span\":{current},\"spans\":[{}]", spans.join(","));
        }
        out.push('}');
        writeln!(w, "{out}")
    }
}

/// The JSON log format's span fields, written straight into the span's JSON object and
/// appended to as a span learns more. Hand-written because tracing-subscriber's `JsonFields`
/// builds a map of `serde_json::Value`s for every span and, at every later record, parses the
/// span's fields and serialises them again.
pub(super) struct AppendJsonFields;

/// Writes fields as `"name":value` pairs of a JSON object.
struct JsonPairs<'a> {
    out: &'a mut String,
    first: bool,
    /// Leaves out the `log.*` fields a `log` record carries (its target, file and line), which
    /// the line has already.
    skip_log: bool,
}

impl JsonPairs<'_> {
    /// Starts the pair of `field`, unless it is left out.
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if self.skip_log && name.starts_with("log.") {
            return false;
        }
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        json_string(self.out, name.strip_prefix("r#").unwrap_or(name));
        self.out.push(':');
        true
    }
}

impl Visit for JsonPairs<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            json_string(self.out, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            let _ = write!(self.out, "{value}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            let _ = write!(self.out, "{value}");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.out.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            if value.is_finite() {
                let _ = write!(self.out, "{value}");
            } else {
                self.out.push_str("null");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            json_string(self.out, &format!("{value:?}"));
        }
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
    ) -> fmt::Result {
        let mut out = String::from("{");
        fields.record(&mut JsonPairs {
            out: &mut out,
            first: true,
            skip_log: false,
        });
        out.push('}');
        writer.write_str(&out)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        let out = &mut current.fields;
        if out.pop() != Some('}') {
            out.clear();
            out.push('{');
        }
        let first = out.ends_with('{');
        fields.record(&mut JsonPairs {
            out,
            first,
            skip_log: false,
        });
        out.push('}');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing_subscriber::layer::SubscriberExt;

    /// The lines `log` writes, in the format `json` or text, as a subscriber of that format.
    fn logged(json: bool, log: impl FnOnce()) -> Vec<String> {
        let lines = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = lines.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()));
        let layer = match json {
            true => layer
                .fmt_fields(AppendJsonFields)
                .event_format(JsonLines)
                .boxed(),
            false => layer.event_format(TextLines).boxed(),
        };
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log);
        let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    use tracing_subscriber::Layer as _;

    fn request() -> RequestLog {
        RequestLog {
            trace_id: Some(TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap()),
            request_id: Some(HeaderValue::from_str(&"r".repeat(200)).unwrap()),
            http_method: Some("POST"),
            http_route: Some("/reviews"),
            rpc_method: Some("CreateReview".into()),
            ..RequestLog::default()
        }
    }

    /// Logs inside a request that learns its subject, in a span whose fields come later, and
    /// outside any request or span.
    fn traffic() {
        REQUEST.sync_scope(request(), || {
            set_product(7);
            let span = tracing::info_span!(
                "call",
                route = tracing::field::Empty,
                text = "a \"quoted\" {brace} \\ tab\t\u{1}"
            );
            span.record("route", "/x");
            span.in_scope(|| tracing::info!(n = 3, "inside"));
            set_review(9);
            tracing::warn!("after");
        });
        tracing::info!("outside");
    }

    #[test]
    fn json_lines_name_the_request_first_and_join_later_span_fields() {
        let lines: Vec<serde_json::Value> = logged(true, traffic)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        let request = serde_json::json!({
            "name": "request", "http.request.method": "POST", "http.route": "/reviews",
            "rpc.method": "CreateReview", "request_id": "r".repeat(128),
            "trace_id": "0af7651916cd43dd8448eb211c80319c", "product_id": 7
        });
        let call = serde_json::json!({
            "name": "call", "route": "/x", "text": "a \"quoted\" {brace} \\ tab\t\u{1}"
        });
        assert_eq!(
            lines[0]["fields"],
            serde_json::json!({"message": "inside", "n": 3})
        );
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["target"], module_path!());
        assert_eq!(lines[0]["spans"], serde_json::json!([request, call]));
        assert_eq!(lines[0]["span"], call);
        let mut later = request.clone();
        later["review_id"] = 9.into();
        assert_eq!(lines[1]["spans"], serde_json::json!([later]));
        assert_eq!(lines[1]["span"], later);
        assert_eq!(lines[1]["level"], "WARN");
        assert!(lines[2].get("spans").is_none() && lines[2].get("span").is_none());
        assert!(lines[2]["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn text_lines_show_the_request_as_the_outermost_span() {
        let lines = logged(false, traffic);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        let request = format!(
            "request{{http.request.method=POST http.route=/reviews rpc.method=CreateReview \
             request_id={} trace_id=0af7651916cd43dd8448eb211c80319c product_id=7",
            "r".repeat(128)
        );
        let target = module_path!();
        let after_time = |line: &str| line.split_once(' ').unwrap().1.to_owned();
        assert_eq!(
            after_time(&lines[0]),
            format!(
                " INFO {request}}}:call{{text=\"a \\\"quoted\\\" {{brace}} \\\\ tab\\t\\u{{1}}\" \
                 route=\"/x\"}}: {target}: inside n=3"
            )
        );
        assert_eq!(
            after_time(&lines[1]),
            format!(" WARN {request} review_id=9}}: {target}: after")
        );
        assert_eq!(after_time(&lines[2]), format!(" INFO {target}: outside"));
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
