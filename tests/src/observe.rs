//! A test `tracing` subscriber and a test `metrics` recorder: what the
//! observability tests read spans, events and metrics back from.
//!
//! The recorder is process-wide (the `metrics` facade has one global
//! recorder) and never resets, so tests running at once in one binary keep
//! apart by their own labels (each test calls its own service). The span
//! capture is per thread: a `#[tokio::test]` runs on one thread, so each
//! test sees only its own spans.
//!
//! What `tracing` caches is not per thread: each callsite remembers, once,
//! whether any subscriber wants it, and a callsite first reached on one
//! thread while another thread is installing its subscriber can cache "no
//! one" and stay silent for that subscriber. So the tests that trace take
//! turns: [`capture`] and [`serial`] hold one process-wide lock for as long
//! as their guard lives.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

#[derive(Default)]
struct Cell {
    counter: AtomicU64,
    /// A gauge's value, as f64 bits.
    gauge: AtomicU64,
    samples: Mutex<Vec<f64>>,
}

impl metrics::CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.counter.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.counter.fetch_max(value, Ordering::Relaxed);
    }
}

impl metrics::GaugeFn for Cell {
    fn increment(&self, value: f64) {
        let _ = self
            .gauge
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((f64::from_bits(b) + value).to_bits())
            });
    }
    fn decrement(&self, value: f64) {
        self.increment(-value);
    }
    fn set(&self, value: f64) {
        self.gauge.store(value.to_bits(), Ordering::Relaxed);
    }
}

impl metrics::HistogramFn for Cell {
    fn record(&self, value: f64) {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(value);
    }
}

/// Every metric recorded in this process, never reset.
#[derive(Default)]
pub struct TestRecorder {
    cells: Mutex<HashMap<Key, Arc<Cell>>>,
    units: Mutex<HashMap<String, Unit>>,
}

impl TestRecorder {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        self.cells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<Arc<Cell>> {
        self.cells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(k, _)| {
                k.name() == name
                    && labels
                        .iter()
                        .all(|(lk, lv)| k.labels().any(|l| l.key() == *lk && l.value() == *lv))
            })
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// The sum of every counter `name` whose labels include `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.matching(name, labels)
            .iter()
            .map(|c| c.counter.load(Ordering::Relaxed))
            .sum()
    }

    /// The sum of every gauge `name` whose labels include `labels`.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .iter()
            .map(|c| f64::from_bits(c.gauge.load(Ordering::Relaxed)))
            .sum()
    }

    /// Every sample of every histogram `name` whose labels include `labels`.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.matching(name, labels)
            .iter()
            .flat_map(|c| c.samples.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// The label sets recorded for `name`, each sorted by key.
    pub fn label_sets(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        self.cells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|k| k.name() == name)
            .map(|k| {
                k.labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect()
            })
            .collect()
    }

    /// The unit a metric was described with.
    pub fn unit(&self, name: &str) -> Option<Unit> {
        self.units
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }

    fn describe(&self, key: KeyName, unit: Option<Unit>) {
        if let Some(unit) = unit {
            self.units
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.as_str().to_owned(), unit);
        }
    }
}

impl Recorder for &'static TestRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(key, unit);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(key, unit);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(key, unit);
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

/// The process-wide test recorder, installed as the global `metrics`
/// recorder on first use.
pub fn recorder() -> &'static TestRecorder {
    static RECORDER: OnceLock<&'static TestRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static TestRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(recorder).unwrap_or_else(|_| {
            panic!("another metrics recorder is installed in this test binary")
        });
        recorder
    })
}

/// A span as the capture saw it.
#[derive(Clone, Debug)]
pub struct CapturedSpan {
    /// The subscriber's id of the span.
    pub id: u64,
    /// Its name (`rpc.client`, `rpc.server`, …).
    pub name: String,
    /// Its target.
    pub target: String,
    /// The id of its parent span in the subscriber's tree.
    pub parent: Option<u64>,
    /// Every field recorded, as text.
    pub fields: BTreeMap<String, String>,
    /// Whether it has closed.
    pub closed: bool,
}

impl CapturedSpan {
    /// The field `name`, if recorded.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// An event as the capture saw it.
#[derive(Clone, Debug)]
pub struct CapturedEvent {
    /// Its target.
    pub target: String,
    /// Every field, the message under `message`.
    pub fields: BTreeMap<String, String>,
}

#[derive(Default)]
struct Store {
    spans: Vec<CapturedSpan>,
    events: Vec<CapturedEvent>,
}

/// What a [`capture`] saw, readable while it runs.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Store>>);

impl Captured {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every span so far, in the order they opened.
    pub fn spans(&self) -> Vec<CapturedSpan> {
        self.store().spans.clone()
    }

    /// The closed spans named `name` whose field `key` is `value`.
    pub fn closed(&self, name: &str, key: &str, value: &str) -> Vec<CapturedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.closed && s.name == name && s.field(key) == Some(value))
            .collect()
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<CapturedEvent> {
        self.store().events.clone()
    }
}

struct FieldText<'a>(&'a mut BTreeMap<String, String>);

impl Visit for FieldText<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

struct CaptureLayer(Captured);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for CaptureLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut FieldText(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.id().into_u64());
        self.0.store().spans.push(CapturedSpan {
            id: id.into_u64(),
            name: attrs.metadata().name().to_owned(),
            target: attrs.metadata().target().to_owned(),
            parent,
            fields,
            closed: false,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut store = self.0.store();
        if let Some(span) = store.spans.iter_mut().rev().find(|s| s.id == id.into_u64()) {
            values.record(&mut FieldText(&mut span.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut FieldText(&mut fields));
        self.0.store().events.push(CapturedEvent {
            target: event.metadata().target().to_owned(),
            fields,
        });
    }

    fn on_close(&self, id: Id, _: Context<'_, S>) {
        let mut store = self.0.store();
        if let Some(span) = store
            .spans
            .iter_mut()
            .rev()
            .find(|s| s.id == id.into_u64() && !s.closed)
        {
            span.closed = true;
        }
    }
}

/// What [`capture`] returns: while it lives, this thread's spans and events
/// are captured and no other tracing test runs.
pub struct Capture {
    // Dropped in this order: the subscriber, then the turn.
    _subscriber: tracing::subscriber::DefaultGuard,
    _turn: Turn,
}

/// One tracing test's turn (see the module's docs); from [`serial`].
pub struct Turn(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

/// Waits for this test's turn among the tests that trace, for a test that
/// runs the traced paths without a [`capture`] of its own.
pub fn serial() -> Turn {
    static TURNS: Mutex<()> = Mutex::new(());
    // A test that failed holding the lock poisons it; the next still runs.
    Turn(
        TURNS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

/// Captures every span and event on this thread (at every level) until the
/// guard is dropped, taking this test's turn among the tracing tests first.
pub fn capture() -> (Captured, Capture) {
    let turn = serial();
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(CaptureLayer(captured.clone()));
    let guard = tracing::subscriber::set_default(subscriber);
    // Callsites that cached "no one is interested" before this subscriber
    // existed ask again.
    tracing::callsite::rebuild_interest_cache();
    (
        captured,
        Capture {
            _subscriber: guard,
            _turn: turn,
        },
    )
}
