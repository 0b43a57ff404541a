//! W3C trace context: the `traceparent` a call carries in its metadata, so
//! the spans of a call chain across nodes share one trace id.
//!
//! Owns parsing and formatting the header (pure functions, unit-tested) and
//! the trace context of the task serving a call, which the calls its handler
//! makes take as their parent. It never decides whether anything is traced:
//! [`super::call`] does, and only builds a context when a span is recorded.

use std::fmt;
use std::future::Future;

/// The metadata key the trace context travels under (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";

/// A W3C trace context: which trace a span belongs to, the span's own id,
/// and whether the trace is sampled.
///
/// ```
/// use plexus::observe::TraceContext;
/// let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let cx = TraceContext::parse(header.as_bytes()).unwrap();
/// assert_eq!(cx.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(cx.to_string(), header);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
}

/// A 128-bit trace id, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub u128);

/// A 64-bit span id, shown as 16 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub u64);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl TraceContext {
    /// A context with these ids. Zero ids are invalid in W3C trace context;
    /// [`TraceContext::parse`] refuses them.
    pub fn new(trace_id: TraceId, span_id: SpanId, sampled: bool) -> Self {
        TraceContext {
            trace_id,
            span_id,
            sampled,
        }
    }

    /// The start of a new trace: random trace and span ids, sampled.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: TraceId(nonzero(rand::random())),
            span_id: SpanId(nonzero(rand::random())),
            sampled: true,
        }
    }

    /// A child of this context: the same trace, a new random span id.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: SpanId(nonzero(rand::random())),
            ..*self
        }
    }

    /// The trace this span belongs to.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// This span's id (the parent id of the spans it starts).
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// Whether the trace is sampled (the `01` flag).
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// Parses a `traceparent` header value (version `00`, or a later version
    /// read as `00` as the W3C spec asks). `None` if it is malformed or has
    /// an all-zero id: the receiver then starts a new trace.
    pub fn parse(header: &[u8]) -> Option<TraceContext> {
        let header = std::str::from_utf8(header).ok()?.trim();
        let mut parts = header.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || !hex(version) {
            return None;
        }
        // Version 00 has exactly four fields; later versions may add more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        if !hex(trace) || !hex(span) || !hex(flags) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(TraceContext {
            trace_id: TraceId(trace_id),
            span_id: SpanId(span_id),
            sampled: flags & 1 == 1,
        })
    }

    /// The trace context of the call this task is serving, if one is traced:
    /// the context the calls its handler makes take as their parent.
    pub fn current() -> Option<TraceContext> {
        CURRENT.try_with(|cx| *cx).ok()
    }

    /// Runs `fut` with `self` as its [`TraceContext::current`]: for a task a
    /// handler spawns, so the calls it makes stay in the handler's trace.
    pub fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, fut)
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `f` (one poll of a served call's handler) with `cx` current.
pub(crate) fn poll_in<R>(cx: TraceContext, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(cx, f)
}

fn hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Ids are random; zero is reserved for "invalid".
fn nonzero<T: PartialEq + From<u8>>(v: T) -> T {
    if v == T::from(0) {
        T::from(1)
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_w3c_example() {
        let cx = TraceContext::parse(EXAMPLE.as_bytes()).expect("valid");
        assert_eq!(cx.trace_id(), TraceId(0x4bf92f3577b34da6a3ce929d0e0e4736));
        assert_eq!(cx.span_id(), SpanId(0x00f067aa0ba902b7));
        assert!(cx.sampled());
        assert_eq!(cx.to_string(), EXAMPLE);
    }

    #[test]
    fn unsampled_flag_round_trips() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let cx = TraceContext::parse(header.as_bytes()).expect("valid");
        assert!(!cx.sampled());
        assert_eq!(cx.to_string(), header);
    }

    #[test]
    fn refuses_malformed_headers() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert_eq!(TraceContext::parse(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(TraceContext::parse(&[0xff, 0xfe]), None);
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let header = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later";
        let cx = TraceContext::parse(header.as_bytes()).expect("readable");
        assert_eq!(cx.to_string(), EXAMPLE);
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_a_new_span() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.span_id(), root.span_id());
        assert_ne!(root.trace_id().0, 0);
    }

    #[tokio::test]
    async fn scope_sets_the_current_context() {
        assert_eq!(TraceContext::current(), None);
        let cx = TraceContext::new_root();
        let seen = cx.scope(async { TraceContext::current() }).await;
        assert_eq!(seen, Some(cx));
    }
}
