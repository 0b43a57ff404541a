//! Observability: a `tracing` span per call on each side, with the
//! OpenTelemetry RPC fields; W3C trace context in call metadata; metrics
//! through the [`metrics`](https://docs.rs/metrics) facade, named after the
//! OpenTelemetry RPC and gRPC conventions; connection, session and node
//! lifecycle events; and (feature `topology`) a live page of the mesh a
//! node sees.
//!
//! Owns deciding whether anything listens and recording what happened. It
//! never changes what a call does: a call observed and one not observed
//! send the same frames (but for the `traceparent` metadata entry) and end
//! the same way. Nothing is built when nothing listens: the call path asks
//! `active` — a level check against the installed `tracing` subscriber
//! and a look at the `metrics` recorder, a few nanoseconds together — and
//! runs exactly as it did before this module existed when it says no.
//!
//! Names, fields and units are listed in `docs/OBSERVABILITY.md`; the
//! constants below are the same names for code (tests, exporters, pages).
//!
//! Install a subscriber (`tracing-subscriber`) for spans and a recorder
//! (`metrics-exporter-prometheus`, say) for metrics, before the endpoints
//! and nodes start:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
//! tracing_subscriber::fmt()
//!     .with_env_filter("plexus::call=info,plexus::connection=info")
//!     .init();
//! // ... start endpoints and nodes; serve `prometheus.render()` somewhere.
//! # drop(prometheus);
//! # Ok(())
//! # }
//! ```

pub(crate) mod call;
pub(crate) mod lifecycle;
pub mod names;
#[cfg(feature = "topology")]
pub mod topology;
mod trace_context;

pub use trace_context::{SpanId, TraceContext, TraceId, TRACEPARENT};

/// The `tracing` target of the per-call spans.
pub const CALL_TARGET: &str = "plexus::call";
/// The `tracing` target of connection and session lifecycle events.
pub const CONNECTION_TARGET: &str = "plexus::connection";
/// The `tracing` target of node lifecycle events (discovery, liveness, links).
pub const NODE_TARGET: &str = "plexus::node";

/// Whether call spans are recorded: a subscriber is installed and its
/// filter takes `plexus::call` at `INFO`. With no subscriber this is one
/// comparison against tracing's global maximum level.
#[inline]
pub fn tracing_enabled() -> bool {
    tracing::enabled!(target: "plexus::call", tracing::Level::INFO)
}

/// Whether a `metrics` recorder is installed (globally, or on this thread).
///
/// The facade offers no query for this, so it looks at the recorder it
/// would record to: without one that is its no-op recorder, a type of size
/// zero. (A recorder of size zero of one's own, forwarding to a static,
/// would be taken for none: give it a field.)
#[inline]
pub fn metrics_enabled() -> bool {
    metrics::with_recorder(|r| std::mem::size_of_val(r) != 0)
}

/// Whether calls are observed at all: spans or metrics are listened to.
#[inline]
pub(crate) fn active() -> bool {
    tracing_enabled() || metrics_enabled()
}

/// `scheme://host:port` (or `scheme://path`) of a peer's address, split for
/// the `server.*`, `client.*` and `network.transport` attributes without
/// allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Address<'a> {
    /// OpenTelemetry's `network.transport`: `tcp` (also for `tls`, `ws`,
    /// `wss`), `quic`, `unix`, or `inproc`.
    pub(crate) transport: &'static str,
    pub(crate) host: &'a str,
    pub(crate) port: Option<u16>,
}

impl<'a> Address<'a> {
    pub(crate) fn parse(url: &'a str) -> Address<'a> {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let transport = match scheme.to_ascii_lowercase().as_str() {
            "tcp" | "tls" | "ws" | "wss" => "tcp",
            "quic" => "quic",
            "unix" => "unix",
            "inproc" => "inproc",
            _ => "unknown",
        };
        if transport == "unix" || transport == "inproc" {
            return Address {
                transport,
                host: rest,
                port: None,
            };
        }
        // Drop a path (ws://host:port/path) before splitting host and port.
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') => match p.parse::<u16>() {
                Ok(port) => (h, Some(port)),
                Err(_) => (authority, None),
            },
            _ => (authority, None),
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Address {
            transport,
            host,
            port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Address;

    #[test]
    fn addresses_split_into_transport_host_and_port() {
        let a = Address::parse("tcp://127.0.0.1:4000");
        assert_eq!(
            (a.transport, a.host, a.port),
            ("tcp", "127.0.0.1", Some(4000))
        );
        let a = Address::parse("wss://[::1]:4443/plexus");
        assert_eq!((a.transport, a.host, a.port), ("tcp", "::1", Some(4443)));
        let a = Address::parse("quic://localhost:4433");
        assert_eq!(
            (a.transport, a.host, a.port),
            ("quic", "localhost", Some(4433))
        );
        let a = Address::parse("unix:///tmp/x.sock");
        assert_eq!((a.transport, a.host, a.port), ("unix", "/tmp/x.sock", None));
        let a = Address::parse("inproc://bus (dialer #3)");
        assert_eq!(
            (a.transport, a.host, a.port),
            ("inproc", "bus (dialer #3)", None)
        );
    }
}
