//! One trace across three endpoints, printed as a tree — or exported as
//! OpenTelemetry's OTLP/JSON, the body a collector takes on `/v1/traces`.
//!
//! ```text
//! cargo run -p plexus-examples --bin trace
//! cargo run -p plexus-examples --bin trace -- --otlp-json > trace.json
//! ```
//!
//! A shop calls `orders.Orders/place` on the orders service, which calls
//! `stock.Stock/reserve` on the stock service once per item; the second
//! item is out of stock and rejected. Every call has a span on each side
//! (`rpc.client`, `rpc.server`, with the OpenTelemetry RPC fields), and the
//! `traceparent` each call carries in its metadata makes the six spans one
//! trace. This program collects them with a small `tracing-subscriber`
//! layer and prints them by trace id and parent span id (as a collector
//! would join them), not by the subscriber's own span tree, which ends at
//! each process's edge. With the `tracing-opentelemetry` crate instead of
//! this layer the same spans go to any OpenTelemetry exporter.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use plexus::{Connection, Reject, Server};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Takes orders.
#[plexus::service(package = "orders")]
pub trait Orders {
    /// Places an order for `items`; replies with what was reserved.
    async fn place(&self, items: Vec<String>) -> Result<Vec<String>, Reject>;
}

/// Holds the stock.
#[plexus::service(package = "stock")]
pub trait Stock {
    /// Reserves one `item`; rejects with 409 when none is left.
    async fn reserve(&self, item: String) -> Result<String, Reject>;
}

struct Shelf;

impl Stock for Shelf {
    async fn reserve(&self, item: String) -> Result<String, Reject> {
        if item == "umbrella" {
            return Err(Reject::new(409, "no umbrellas left"));
        }
        Ok(item)
    }
}

struct Desk {
    stock: StockClient,
}

impl Orders for Desk {
    async fn place(&self, items: Vec<String>) -> Result<Vec<String>, Reject> {
        // These calls run in the server span's trace context, so they are
        // its children: the runtime sets their `traceparent`.
        let mut reserved = Vec::new();
        for item in items {
            if let Ok(item) = self.stock.reserve(item).await {
                reserved.push(item);
            }
        }
        Ok(reserved)
    }
}

/// A closed span, as a collector would receive it.
#[derive(Clone, Debug, Default)]
struct Finished {
    name: String,
    fields: BTreeMap<String, String>,
    start: u128,
    end: u128,
}

impl Finished {
    fn field(&self, key: &str) -> &str {
        self.fields.get(key).map(String::as_str).unwrap_or("")
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Keeps every Plexus call span that closes.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Finished>>>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Collector {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut span = Finished {
            name: attrs.metadata().name().to_owned(),
            start: now_nanos(),
            ..Finished::default()
        };
        attrs.record(&mut Fields(&mut span.fields));
        if let Some(s) = ctx.span(id) {
            s.extensions_mut().insert(span);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(s) = ctx.span(id) {
            if let Some(span) = s.extensions_mut().get_mut::<Finished>() {
                values.record(&mut Fields(&mut span.fields));
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(s) = ctx.span(&id) else { return };
        let Some(mut span) = s.extensions_mut().remove::<Finished>() else {
            return;
        };
        span.end = now_nanos();
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(span);
    }
}

/// Prints the spans of each trace as a tree, joined by parent span id.
fn print_tree(spans: &[Finished]) {
    let mut traces: BTreeMap<&str, Vec<&Finished>> = BTreeMap::new();
    for s in spans {
        traces.entry(s.field("trace_id")).or_default().push(s);
    }
    for (trace, mut spans) in traces {
        spans.sort_by_key(|s| s.start);
        println!("trace {trace} ({} spans)", spans.len());
        let ids: Vec<&str> = spans.iter().map(|s| s.field("span_id")).collect();
        let roots: Vec<&Finished> = spans
            .iter()
            .copied()
            .filter(|s| !ids.contains(&s.field("parent_span_id")))
            .collect();
        for (i, root) in roots.iter().enumerate() {
            print_span(&spans, root, "", i + 1 == roots.len());
        }
    }
}

fn print_span(all: &[&Finished], span: &Finished, indent: &str, last: bool) {
    let (branch, more) = if last {
        ("└─", "   ")
    } else {
        ("├─", "│  ")
    };
    let side = if span.name == "rpc.client" {
        format!(
            "client → {}:{}",
            span.field("server.address"),
            span.field("server.port")
        )
    } else {
        "server".to_owned()
    };
    let outcome = match span.field("rpc.plexus.code") {
        "" => span.field("rpc.plexus.outcome").to_owned(),
        code => format!("{} {code}", span.field("rpc.plexus.outcome")),
    };
    let micros = span.end.saturating_sub(span.start) / 1_000;
    println!(
        "{indent}{branch} {} [{side}] span {} · {micros} µs · {outcome}",
        span.field("otel.name"),
        span.field("span_id"),
    );
    let children: Vec<&Finished> = all
        .iter()
        .copied()
        .filter(|c| c.field("parent_span_id") == span.field("span_id"))
        .collect();
    for (i, child) in children.iter().enumerate() {
        print_span(
            all,
            child,
            &format!("{indent}{more}"),
            i + 1 == children.len(),
        );
    }
}

/// The spans as one OTLP/JSON `ExportTraceServiceRequest`.
fn otlp_json(spans: &[Finished]) -> serde_json::Value {
    use serde_json::json;
    let spans: Vec<_> = spans
        .iter()
        .map(|s| {
            let attributes: Vec<_> = s
                .fields
                .iter()
                .filter(|(k, _)| {
                    !k.starts_with("otel.") && !k.ends_with("span_id") && *k != "trace_id"
                })
                .map(|(k, v)| match v.parse::<i64>() {
                    Ok(n) => json!({ "key": k, "value": { "intValue": n.to_string() } }),
                    Err(_) => json!({ "key": k, "value": { "stringValue": v } }),
                })
                .collect();
            let ok = s.field("otel.status_code") == "OK";
            let mut span = json!({
                "traceId": s.field("trace_id"),
                "spanId": s.field("span_id"),
                "name": s.field("otel.name"),
                // SPAN_KIND_SERVER = 2, SPAN_KIND_CLIENT = 3
                "kind": if s.name == "rpc.client" { 3 } else { 2 },
                "startTimeUnixNano": s.start.to_string(),
                "endTimeUnixNano": s.end.to_string(),
                "attributes": attributes,
                // STATUS_CODE_OK = 1, STATUS_CODE_ERROR = 2
                "status": { "code": if ok { 1 } else { 2 } },
            });
            if !s.field("parent_span_id").is_empty() {
                span["parentSpanId"] = json!(s.field("parent_span_id"));
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                { "key": "service.name", "value": { "stringValue": "plexus-trace-example" } }
            ] },
            "scopeSpans": [{ "scope": { "name": "plexus" }, "spans": spans }]
        }]
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let otlp = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--otlp-json") => true,
        Some(other) => {
            return Err(format!("unknown argument {other:?} (usage: trace [--otlp-json])").into())
        }
    };
    let collector = Collector::default();
    // Only the call spans (target `plexus::call`): the runtime's other
    // events are not part of this picture.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target(plexus::observe::CALL_TARGET, tracing::Level::INFO);
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(collector.clone().with_filter(filter)),
    )?;

    let stock = Server::bind("tcp://127.0.0.1:0")
        .serve(StockHandler::new(Shelf))
        .start()
        .await?;
    let to_stock = Connection::connect(&stock.local_url().to_string()).await?;
    let orders = Server::bind("tcp://127.0.0.1:0")
        .serve(OrdersHandler::new(Desk {
            stock: StockClient::new(to_stock),
        }))
        .start()
        .await?;
    let shop = OrdersClient::new(Connection::connect(&orders.local_url().to_string()).await?);
    let reserved = shop
        .place(vec!["kettle".to_owned(), "umbrella".to_owned()])
        .await?;

    // Every span has closed once the reply is here but the orders server's,
    // which closes as its answer goes out: wait (bounded) for all six.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let spans = loop {
        let spans = collector
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if spans.len() >= 6 || tokio::time::Instant::now() >= deadline {
            break spans;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    if otlp {
        println!("{}", otlp_json(&spans));
    } else {
        println!("the shop ordered a kettle and an umbrella; reserved: {reserved:?}\n");
        println!(
            "orders on {}, stock on {}\n",
            orders.local_url(),
            stock.local_url()
        );
        print_tree(&spans);
    }
    Ok(())
}
