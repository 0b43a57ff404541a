//! Observability: every call kind, a rejection, a timeout, a cancelled call
//! and a refused one leave a span on each side with the OpenTelemetry RPC
//! fields and the metrics named in docs/OBSERVABILITY.md; a call chain
//! across three endpoints is one trace; connections leave lifecycle events
//! and counts. Read back through a test subscriber and a test recorder.

use std::time::Duration;

use bytes::Bytes;
use plexus::observe::{names, TraceContext};
use plexus::{CallError, CallOptions, Connection, Reject, Router, Server};
use plexus_tests::observe::{capture, recorder, serial, Captured, CapturedSpan};
use plexus_tests::{bounded, eventually, until};

/// The closed span of `name` for `op`, once it has closed.
async fn span(captured: &Captured, name: &str, op: &str) -> CapturedSpan {
    eventually(&format!("{name} span of {op} closing"), || {
        captured.closed(name, "otel.name", op).into_iter().next()
    })
    .await
}

fn field<'a>(span: &'a CapturedSpan, name: &str) -> &'a str {
    span.field(name)
        .unwrap_or_else(|| panic!("span {} has no field {name}: {:?}", span.name, span.fields))
}

async fn serve(router: Router) -> (plexus::Server, Connection) {
    let server = Server::bind("tcp://127.0.0.1:0")
        .serve(router)
        .start()
        .await
        .expect("server starts");
    let conn = bounded(
        "connect",
        Connection::connect(&server.local_url().to_string()),
    )
    .await
    .expect("connects");
    (server, conn)
}

fn port_of(server: &plexus::Server) -> String {
    server
        .local_url()
        .port()
        .expect("a tcp url has a port")
        .to_string()
}

#[tokio::test]
async fn unary_call_has_a_span_on_each_side_with_the_rpc_fields_and_its_metrics() {
    let metrics = recorder();
    let (captured, _guard) = capture();
    let router = Router::new().unary("obs.Unary/echo", |ctx, body: Bytes| async move {
        // The handler runs in the server span's trace context.
        let current = TraceContext::current().expect("a traced call has a current context");
        assert_eq!(
            ctx.metadata("traceparent").map(|v| v.len()),
            Some(55),
            "the caller sent a traceparent"
        );
        Ok::<_, Reject>(Bytes::from(format!(
            "{}|{}",
            current.trace_id(),
            body.len()
        )))
    });
    let (server, conn) = serve(router).await;
    let reply = bounded(
        "the call",
        conn.call(
            "obs.Unary/echo",
            Bytes::from_static(b"ping!"),
            CallOptions::new(),
        ),
    )
    .await
    .expect("acked");

    let client = span(&captured, "rpc.client", "obs.Unary/echo").await;
    let served = span(&captured, "rpc.server", "obs.Unary/echo").await;
    for (s, kind) in [(&client, "client"), (&served, "server")] {
        assert_eq!(s.target, "plexus::call");
        assert_eq!(field(s, "otel.kind"), kind);
        assert_eq!(field(s, "rpc.system"), "plexus");
        assert_eq!(field(s, "rpc.service"), "obs.Unary");
        assert_eq!(field(s, "rpc.method"), "echo");
        assert_eq!(field(s, "network.transport"), "tcp");
        assert_eq!(field(s, "rpc.plexus.call_kind"), "unary");
        assert_eq!(field(s, "rpc.plexus.outcome"), "ok");
        assert_eq!(field(s, "otel.status_code"), "OK");
        assert_eq!(s.field("error.type"), None);
        assert_eq!(s.field("rpc.plexus.code"), None);
    }
    assert_eq!(field(&client, "server.address"), "127.0.0.1");
    assert_eq!(field(&client, "server.port"), port_of(&server));
    assert_eq!(field(&served, "client.address"), "127.0.0.1");
    assert_eq!(field(&client, "rpc.plexus.messages_sent"), "1");
    assert_eq!(field(&client, "rpc.plexus.messages_received"), "1");
    assert_eq!(field(&served, "rpc.plexus.messages_received"), "1");
    assert_eq!(field(&served, "rpc.plexus.messages_sent"), "1");
    // One trace: the server span is the client span's child.
    assert_eq!(field(&client, "trace_id"), field(&served, "trace_id"));
    assert_eq!(field(&served, "parent_span_id"), field(&client, "span_id"));
    assert_eq!(
        client.field("parent_span_id"),
        None,
        "a new trace starts here"
    );
    let text = String::from_utf8(reply.to_vec()).expect("utf-8");
    assert_eq!(text, format!("{}|5", field(&served, "trace_id")));

    let labels = [("rpc.service", "obs.Unary"), ("rpc.method", "echo")];
    let ok = [
        ("rpc.service", "obs.Unary"),
        ("rpc.system", "plexus"),
        ("rpc.plexus.outcome", "ok"),
    ];
    assert_eq!(metrics.counter(names::CLIENT_STARTED, &labels), 1);
    assert_eq!(metrics.counter(names::CLIENT_HANDLED, &ok), 1);
    assert_eq!(metrics.counter(names::SERVER_STARTED, &labels), 1);
    until("the server's count", || {
        metrics.counter(names::SERVER_HANDLED, &ok) == 1
    })
    .await;
    assert_eq!(metrics.histogram(names::CLIENT_DURATION, &ok).len(), 1);
    assert_eq!(metrics.histogram(names::SERVER_DURATION, &ok).len(), 1);
    assert_eq!(
        metrics.histogram(names::CLIENT_REQUEST_SIZE, &labels),
        vec![5.0]
    );
    assert_eq!(
        metrics.histogram(names::CLIENT_RESPONSE_SIZE, &labels),
        vec![reply.len() as f64]
    );
    assert_eq!(
        metrics.histogram(names::SERVER_REQUEST_SIZE, &labels),
        vec![5.0]
    );
    assert_eq!(
        metrics.histogram(names::SERVER_RESPONSE_SIZE, &labels),
        vec![reply.len() as f64]
    );
    assert_eq!(
        metrics.histogram(names::CLIENT_REQUESTS_PER_RPC, &labels),
        vec![1.0]
    );
    assert_eq!(
        metrics.histogram(names::SERVER_RESPONSES_PER_RPC, &labels),
        vec![1.0]
    );
    assert_eq!(
        metrics.unit(names::CLIENT_DURATION),
        Some(metrics::Unit::Seconds)
    );
    assert_eq!(
        metrics.unit(names::SERVER_REQUEST_SIZE),
        Some(metrics::Unit::Bytes)
    );
}

#[tokio::test]
async fn every_call_kind_records_its_kind_and_message_counts() {
    let metrics = recorder();
    let (captured, _guard) = capture();
    let router = Router::new()
        .oneway("obs.Kinds/wave", |_ctx, _body: Bytes| async {})
        .server_stream(
            "obs.Kinds/count",
            |_ctx, _body: Bytes, mut out| async move {
                for i in 0..3u8 {
                    out.send(Bytes::from(vec![i; 10]))
                        .await
                        .map_err(|e| Reject::new(500, e.to_string()))?;
                }
                Ok(())
            },
        )
        .client_stream("obs.Kinds/sum", |_ctx, mut inbound| async move {
            let mut total = 0;
            while let Some(Ok(m)) = inbound.recv().await {
                total += m.len();
            }
            Ok(Bytes::from(total.to_string()))
        })
        .bidi("obs.Kinds/echo", |_ctx, mut inbound, mut out| async move {
            while let Some(Ok(m)) = inbound.recv().await {
                out.send(m)
                    .await
                    .map_err(|e| Reject::new(500, e.to_string()))?;
            }
            Ok(())
        });
    let (_server, conn) = serve(router).await;

    bounded(
        "one-way",
        conn.oneway(
            "obs.Kinds/wave",
            Bytes::from_static(b"hi"),
            CallOptions::new(),
        ),
    )
    .await
    .expect("sent");
    let mut items = bounded(
        "server stream",
        conn.server_stream(
            "obs.Kinds/count",
            Bytes::from_static(b"3"),
            CallOptions::new(),
        ),
    )
    .await
    .expect("opened");
    let mut n = 0;
    while let Some(item) = bounded("an item", items.recv()).await {
        item.expect("an item");
        n += 1;
    }
    assert_eq!(n, 3);
    let (mut out, reply) = bounded(
        "client stream",
        conn.client_stream("obs.Kinds/sum", CallOptions::new()),
    )
    .await
    .expect("opened");
    out.send(Bytes::from_static(b"abc")).await.expect("sent");
    out.send(Bytes::from_static(b"de")).await.expect("sent");
    out.finish().await.expect("finished");
    assert_eq!(&bounded("the sum", reply).await.expect("acked")[..], b"5");
    let (mut out, mut inbound) = bounded("bidi", conn.bidi("obs.Kinds/echo", CallOptions::new()))
        .await
        .expect("opened");
    for m in [&b"x"[..], b"yy"] {
        out.send(Bytes::copy_from_slice(m)).await.expect("sent");
        bounded("an echo", inbound.recv())
            .await
            .expect("an echo")
            .expect("ok");
    }
    out.finish().await.expect("finished");
    assert!(bounded("the end", inbound.recv()).await.is_none());

    // (op, kind, client sent/received, server received/sent)
    let expected = [
        ("obs.Kinds/wave", "oneway", (1, 0), (1, 0)),
        ("obs.Kinds/count", "server_stream", (1, 3), (1, 3)),
        ("obs.Kinds/sum", "client_stream", (2, 1), (2, 1)),
        ("obs.Kinds/echo", "bidi", (2, 2), (2, 2)),
    ];
    for (op, kind, (c_sent, c_recv), (s_recv, s_sent)) in expected {
        let client = span(&captured, "rpc.client", op).await;
        let served = span(&captured, "rpc.server", op).await;
        for s in [&client, &served] {
            assert_eq!(field(s, "rpc.plexus.call_kind"), kind, "{op}");
            assert_eq!(field(s, "rpc.plexus.outcome"), "ok", "{op}");
        }
        assert_eq!(
            field(&client, "rpc.plexus.messages_sent"),
            c_sent.to_string(),
            "{op}"
        );
        assert_eq!(
            field(&client, "rpc.plexus.messages_received"),
            c_recv.to_string(),
            "{op}"
        );
        assert_eq!(
            field(&served, "rpc.plexus.messages_received"),
            s_recv.to_string(),
            "{op}"
        );
        assert_eq!(
            field(&served, "rpc.plexus.messages_sent"),
            s_sent.to_string(),
            "{op}"
        );
        assert_eq!(
            field(&served, "parent_span_id"),
            field(&client, "span_id"),
            "{op}"
        );
        let (service, method) = op.split_once('/').expect("an op id");
        let labels = [("rpc.service", service), ("rpc.method", method)];
        assert_eq!(
            metrics.histogram(names::CLIENT_REQUESTS_PER_RPC, &labels),
            vec![c_sent as f64],
            "{op}"
        );
        assert_eq!(
            metrics.histogram(names::CLIENT_RESPONSES_PER_RPC, &labels),
            vec![c_recv as f64],
            "{op}"
        );
        assert_eq!(
            metrics.histogram(names::SERVER_REQUESTS_PER_RPC, &labels),
            vec![s_recv as f64],
            "{op}"
        );
        assert_eq!(
            metrics.histogram(names::SERVER_RESPONSES_PER_RPC, &labels),
            vec![s_sent as f64],
            "{op}"
        );
    }
    let count = [("rpc.service", "obs.Kinds"), ("rpc.method", "count")];
    assert_eq!(
        metrics.histogram(names::CLIENT_RESPONSE_SIZE, &count),
        vec![10.0, 10.0, 10.0]
    );
    assert_eq!(
        metrics.histogram(names::SERVER_RESPONSE_SIZE, &count),
        vec![10.0, 10.0, 10.0]
    );
    let sum = [("rpc.service", "obs.Kinds"), ("rpc.method", "sum")];
    let mut sizes = metrics.histogram(names::SERVER_REQUEST_SIZE, &sum);
    sizes.sort_by(f64::total_cmp);
    assert_eq!(sizes, vec![2.0, 3.0]);
}

#[tokio::test]
async fn a_rejection_records_its_code_on_both_sides() {
    let metrics = recorder();
    let (captured, _guard) = capture();
    let router = Router::new().unary("obs.Reject/no", |_ctx, _body: Bytes| async {
        Err::<Bytes, _>(Reject::new(404, "no such user"))
    });
    let (_server, conn) = serve(router).await;
    let err = bounded(
        "the call",
        conn.call("obs.Reject/no", Bytes::new(), CallOptions::new()),
    )
    .await
    .expect_err("rejected");
    assert!(
        matches!(err, CallError::Rejected(ref r) if r.code() == 404),
        "{err}"
    );
    for name in ["rpc.client", "rpc.server"] {
        let s = span(&captured, name, "obs.Reject/no").await;
        assert_eq!(field(&s, "rpc.plexus.outcome"), "rejected", "{name}");
        assert_eq!(field(&s, "rpc.plexus.code"), "404", "{name}");
        assert_eq!(field(&s, "error.type"), "rejected", "{name}");
        assert_eq!(field(&s, "otel.status_code"), "ERROR", "{name}");
    }
    let rejected = [
        ("rpc.service", "obs.Reject"),
        ("rpc.plexus.outcome", "rejected"),
        ("rpc.plexus.code", "404"),
    ];
    assert_eq!(metrics.counter(names::CLIENT_HANDLED, &rejected), 1);
    until("the server's count", || {
        metrics.counter(names::SERVER_HANDLED, &rejected) == 1
    })
    .await;
}

// On tokio's paused clock over inproc:// the caller's deadline and the
// handler's pass at the same instant, so the server sees its own deadline
// (on a real clock the caller's cancel may arrive first, and the server
// rightly records `cancelled`).
#[tokio::test(start_paused = true)]
async fn a_timeout_records_deadline_exceeded_on_both_sides() {
    let metrics = recorder();
    let (captured, _guard) = capture();
    let server = Server::bind("inproc://observability-timeout")
        .serve(
            Router::new().unary("obs.Slow/wait", |_ctx, _body: Bytes| async {
                std::future::pending::<()>().await;
                Ok::<_, Reject>(Bytes::new())
            }),
        )
        .start()
        .await
        .expect("server starts");
    let conn = bounded(
        "connect",
        Connection::connect(&server.local_url().to_string()),
    )
    .await
    .expect("connects");
    let opts = CallOptions::new().timeout(Duration::from_millis(100));
    let err = bounded("the call", conn.call("obs.Slow/wait", Bytes::new(), opts))
        .await
        .expect_err("timed out");
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    for name in ["rpc.client", "rpc.server"] {
        let s = span(&captured, name, "obs.Slow/wait").await;
        assert_eq!(
            field(&s, "rpc.plexus.outcome"),
            "deadline_exceeded",
            "{name}"
        );
        assert_eq!(field(&s, "rpc.plexus.code"), "3", "{name}");
        assert_eq!(field(&s, "error.type"), "deadline_exceeded", "{name}");
        assert_eq!(field(&s, "network.transport"), "inproc", "{name}");
    }
    let timed_out = [
        ("rpc.service", "obs.Slow"),
        ("rpc.plexus.outcome", "deadline_exceeded"),
    ];
    assert_eq!(metrics.counter(names::CLIENT_HANDLED, &timed_out), 1);
    assert_eq!(metrics.counter(names::SERVER_HANDLED, &timed_out), 1);
    let waited = metrics.histogram(names::CLIENT_DURATION, &timed_out);
    assert_eq!(
        waited,
        vec![0.1],
        "the paused clock makes the duration exact"
    );
}

#[tokio::test]
async fn a_cancelled_call_records_cancelled_on_both_sides() {
    let metrics = recorder();
    let (captured, _guard) = capture();
    let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
    let entered_tx = std::sync::Mutex::new(Some(entered_tx));
    let router = Router::new().unary("obs.Cancel/wait", move |_ctx, _body: Bytes| {
        let tx = entered_tx.lock().expect("lock").take();
        async move {
            if let Some(tx) = tx {
                let _ = tx.send(());
            }
            std::future::pending::<()>().await;
            Ok::<_, Reject>(Bytes::new())
        }
    });
    let (_server, conn) = serve(router).await;
    let call = conn.call("obs.Cancel/wait", Bytes::new(), CallOptions::new());
    // Dropping the call's future once the handler runs cancels it.
    tokio::select! {
        _ = call => panic!("the call cannot end on its own"),
        _ = entered => {}
    }
    for name in ["rpc.client", "rpc.server"] {
        let s = span(&captured, name, "obs.Cancel/wait").await;
        assert_eq!(field(&s, "rpc.plexus.outcome"), "cancelled", "{name}");
        assert_eq!(field(&s, "rpc.plexus.code"), "4", "{name}");
    }
    let cancelled = [
        ("rpc.service", "obs.Cancel"),
        ("rpc.plexus.outcome", "cancelled"),
    ];
    assert_eq!(metrics.counter(names::CLIENT_HANDLED, &cancelled), 1);
    assert_eq!(metrics.counter(names::SERVER_HANDLED, &cancelled), 1);
}

#[tokio::test]
async fn a_call_to_no_such_operation_is_recorded_as_refused_by_the_server() {
    let metrics = recorder();
    let (captured, _guard) = capture();
    let (_server, conn) = serve(Router::new()).await;
    let err = bounded(
        "the call",
        conn.call("obs.Missing/op", Bytes::new(), CallOptions::new()),
    )
    .await
    .expect_err("no such operation");
    assert!(matches!(err, CallError::NoSuchOperation { .. }), "{err}");
    for name in ["rpc.client", "rpc.server"] {
        let s = span(&captured, name, "obs.Missing/op").await;
        assert_eq!(
            field(&s, "rpc.plexus.outcome"),
            "no_such_operation",
            "{name}"
        );
        assert_eq!(field(&s, "rpc.plexus.code"), "1", "{name}");
    }
    let missing = [
        ("rpc.service", "obs.Missing"),
        ("rpc.plexus.outcome", "no_such_operation"),
    ];
    assert_eq!(
        metrics.counter(names::SERVER_STARTED, &[("rpc.service", "obs.Missing")]),
        1
    );
    assert_eq!(metrics.counter(names::SERVER_HANDLED, &missing), 1);
    assert_eq!(metrics.counter(names::CLIENT_HANDLED, &missing), 1);
}

#[tokio::test]
async fn a_call_chain_across_three_endpoints_is_one_trace() {
    let (captured, _guard) = capture();
    let c = Server::bind("tcp://127.0.0.1:0")
        .serve(
            Router::new().unary("chain.C/leaf", |_ctx, body: Bytes| async move {
                Ok::<_, Reject>(body)
            }),
        )
        .start()
        .await
        .expect("C starts");
    let to_c = Connection::connect(&c.local_url().to_string())
        .await
        .expect("B reaches C");
    let b = Server::bind("tcp://127.0.0.1:0")
        .serve(
            Router::new().unary("chain.B/relay", move |_ctx, body: Bytes| {
                let to_c = to_c.clone();
                async move {
                    to_c.call("chain.C/leaf", body, CallOptions::new())
                        .await
                        .map_err(|e| Reject::new(502, e.to_string()))
                }
            }),
        )
        .start()
        .await
        .expect("B starts");
    let a = Connection::connect(&b.local_url().to_string())
        .await
        .expect("A reaches B");
    let reply = bounded(
        "the chain",
        a.call(
            "chain.B/relay",
            Bytes::from_static(b"x"),
            CallOptions::new(),
        ),
    )
    .await
    .expect("acked");
    assert_eq!(&reply[..], b"x");

    let a_client = span(&captured, "rpc.client", "chain.B/relay").await;
    let b_server = span(&captured, "rpc.server", "chain.B/relay").await;
    let b_client = span(&captured, "rpc.client", "chain.C/leaf").await;
    let c_server = span(&captured, "rpc.server", "chain.C/leaf").await;
    let trace = field(&a_client, "trace_id");
    assert_eq!(trace.len(), 32);
    for s in [&b_server, &b_client, &c_server] {
        assert_eq!(
            field(s, "trace_id"),
            trace,
            "{} of {}",
            s.name,
            field(s, "otel.name")
        );
    }
    assert_eq!(
        field(&b_server, "parent_span_id"),
        field(&a_client, "span_id")
    );
    assert_eq!(
        field(&b_client, "parent_span_id"),
        field(&b_server, "span_id")
    );
    assert_eq!(
        field(&c_server, "parent_span_id"),
        field(&b_client, "span_id")
    );
    // In the subscriber's tree too: B's call to C is a child of B serving.
    assert_eq!(b_client.parent, Some(b_server.id));
    assert_eq!(b_server.parent, None);
    let ids: std::collections::HashSet<_> = [&a_client, &b_server, &b_client, &c_server]
        .iter()
        .map(|s| field(s, "span_id").to_owned())
        .collect();
    assert_eq!(ids.len(), 4, "every span has its own id");
}

#[tokio::test]
async fn a_traceparent_the_caller_sets_becomes_the_parent() {
    let (captured, _guard) = capture();
    let router = Router::new().unary("obs.Parent/echo", |ctx, _body: Bytes| async move {
        Ok::<_, Reject>(ctx.metadata("traceparent").cloned().unwrap_or_default())
    });
    let (_server, conn) = serve(router).await;
    let upstream = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let opts = CallOptions::new().metadata("traceparent", upstream);
    let sent = bounded("the call", conn.call("obs.Parent/echo", Bytes::new(), opts))
        .await
        .expect("acked");
    let client = span(&captured, "rpc.client", "obs.Parent/echo").await;
    assert_eq!(
        field(&client, "trace_id"),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(field(&client, "parent_span_id"), "00f067aa0ba902b7");
    // The header that went out names the client span as the parent.
    let sent = TraceContext::parse(&sent).expect("a valid traceparent went out");
    assert_eq!(sent.span_id().to_string(), field(&client, "span_id"));
}

#[tokio::test]
async fn without_a_subscriber_no_span_is_made_and_no_traceparent_sent() {
    let _turn = serial();
    // No subscriber on this thread (the recorder may be on: metrics alone
    // send nothing extra).
    let router = Router::new().unary("obs.Quiet/meta", |ctx, _body: Bytes| async move {
        let header = ctx.metadata("traceparent").is_some();
        let current = TraceContext::current().is_some();
        Ok::<_, Reject>(Bytes::from(format!("{header}/{current}")))
    });
    let (_server, conn) = serve(router).await;
    assert!(!plexus::observe::tracing_enabled());
    let reply = bounded(
        "the call",
        conn.call("obs.Quiet/meta", Bytes::new(), CallOptions::new()),
    )
    .await
    .expect("acked");
    assert_eq!(&reply[..], b"false/false");
}

#[tokio::test]
async fn connections_leave_lifecycle_events_and_counts() {
    let metrics = recorder();
    let (captured, _guard) = capture();
    let refusing = Server::bind("tcp://127.0.0.1:0")
        .accept(|_req| Err("not today".to_owned()))
        .start()
        .await
        .expect("starts");
    let refused_before =
        metrics.counter(names::HANDSHAKES_REFUSED, &[("plexus.reason", "rejected")]);
    let err = bounded(
        "refused dial",
        Connection::connect(&refusing.local_url().to_string()),
    )
    .await
    .expect_err("refused");
    assert!(err.to_string().contains("not today"), "{err}");
    until("the refusal counted", || {
        metrics.counter(names::HANDSHAKES_REFUSED, &[("plexus.reason", "rejected")])
            > refused_before
    })
    .await;

    let (server, conn) = serve(Router::new()).await;
    let port = port_of(&server);
    let established = |captured: &Captured| {
        captured.events().into_iter().any(|e| {
            e.target == "plexus::connection"
                && e.fields.get("message").map(String::as_str) == Some("connection established")
                && e.fields.get("network.transport").map(String::as_str) == Some("tcp")
        })
    };
    until("connection established events", || established(&captured)).await;
    assert!(metrics.gauge(names::CONNECTIONS_OPEN, &[("network.transport", "tcp")]) >= 1.0);
    conn.close().await;
    until("connection closed event", || {
        captured.events().into_iter().any(|e| {
            e.target == "plexus::connection"
                && e.fields.get("plexus.reason").map(String::as_str) == Some("local")
                && e.fields
                    .get("network.peer.address")
                    .is_some_and(|a| a.ends_with(&format!(":{port}")))
        })
    })
    .await;
    assert!(metrics.counter(names::CONNECTIONS_CLOSED, &[("plexus.reason", "local")]) >= 1);
    assert_eq!(metrics.unit(names::CONNECTIONS_OPEN), None);
}

mod nodes {
    //! Node lifecycle events, the peers-by-state gauge, pub/sub drops and
    //! pipeline redeliveries, on nodes that find each other on loopback.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use plexus::discovery::Static;
    use plexus::observe::names;
    use plexus::patterns::{Overflow, Pipeline, Publisher, Subscriber, TopicClient};
    use plexus::Reject;
    use plexus::{node::NodeBuilder, Node};
    use plexus_tests::observe::{capture, recorder, serial, Captured};
    use plexus_tests::{bounded, until};

    /// Work for the pipeline.
    #[plexus::service(package = "obs")]
    pub trait Work {
        /// Does job `id`; replies with it.
        async fn run(&self, id: u64) -> Result<u64, Reject>;
    }

    struct Worker {
        hangs: bool,
        started: Arc<AtomicUsize>,
    }

    impl Work for Worker {
        async fn run(&self, id: u64) -> Result<u64, Reject> {
            self.started.fetch_add(1, Ordering::SeqCst);
            if self.hangs {
                std::future::pending::<()>().await;
            }
            Ok(id)
        }
    }

    /// A pub/sub event.
    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    pub struct Beat {
        /// Its number.
        pub n: u64,
    }

    plexus::topic! {
        /// Beats for the drop test.
        pub struct Tick in "obs" => Beat;
    }

    fn builder(name: &str, peers: Vec<String>) -> NodeBuilder {
        Node::builder(name)
            .listen("tcp://127.0.0.1:0")
            .group("observed")
            .discovery(Static::new(peers))
            .reconcile_interval(Duration::from_millis(50))
    }

    fn node_event(captured: &Captured, node: &str, event: &str) -> bool {
        captured.events().into_iter().any(|e| {
            e.target == "plexus::node"
                && e.fields.get("plexus.node").map(String::as_str) == Some(node)
                && e.fields.get("plexus.event").map(String::as_str) == Some(event)
        })
    }

    #[tokio::test]
    async fn node_events_and_the_peers_by_state_gauge_follow_a_peer_leaving() {
        let metrics = recorder();
        let (captured, _guard) = capture();
        // On a private loopback beacon group, where a graceful leave is
        // announced (a static list only notices a peer is gone).
        let n = (plexus::NodeId::random().0 >> 64) as u32;
        let multicast = std::net::Ipv4Addr::new(239, 255, (n >> 8) as u8, (n as u8) | 1);
        let port = 20_000 + ((n >> 16) as u16 % 40_000);
        let beaconed = |name: &str| {
            Node::builder(name)
                .group("observed")
                .discovery(
                    plexus::discovery::Beacon::loopback()
                        .multicast_group(multicast)
                        .port(port)
                        .interval(Duration::from_millis(100)),
                )
                .reconcile_interval(Duration::from_millis(100))
        };
        let a = bounded("a starts", beaconed("obs-node-a").start())
            .await
            .expect("starts");
        let b = bounded("b starts", beaconed("obs-node-b").start())
            .await
            .expect("starts");
        assert!(node_event(&captured, "obs-node-a", "started"));
        let alive = [
            ("plexus.node", "obs-node-b"),
            ("plexus.peer.state", "alive"),
        ];
        until("b counts a alive", || {
            metrics.gauge(names::DISCOVERY_PEERS, &alive) == 1.0
        })
        .await;
        until("b's discovery event", || {
            node_event(&captured, "obs-node-b", "peer_discovered")
        })
        .await;

        bounded("a stops", a.stop()).await.expect("stops");
        assert!(node_event(&captured, "obs-node-a", "stopped"));
        let left = [("plexus.node", "obs-node-b"), ("plexus.peer.state", "left")];
        until("b counts a left", || {
            metrics.gauge(names::DISCOVERY_PEERS, &left) == 1.0
        })
        .await;
        assert_eq!(metrics.gauge(names::DISCOVERY_PEERS, &alive), 0.0);
        assert!(node_event(&captured, "obs-node-b", "peer_left"));
        bounded("b stops", b.stop()).await.expect("stops");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscriber_drops_are_counted() {
        let _turn = serial();
        let metrics = recorder();
        let side = [("plexus.pubsub.side", "subscriber")];
        let before = metrics.counter(names::PUBSUB_DROPPED, &side);
        let publisher = Publisher::<Tick>::new();
        let pub_node = bounded(
            "publisher starts",
            builder("obs-publisher", Vec::new())
                .serve_as(publisher.clone(), "publisher")
                .start(),
        )
        .await
        .expect("starts");
        let url = pub_node.local_urls()[0].to_string();
        let sub_node = bounded(
            "subscriber starts",
            builder("obs-subscriber", vec![url])
                .uses_as::<Tick>("subscriber")
                .start(),
        )
        .await
        .expect("starts");
        let sub = Subscriber::<Tick>::builder()
            .overflow(Overflow::DropNewest)
            .capacity(4)
            .follow(sub_node.peers::<TopicClient<Tick>>());
        bounded("subscribed", sub.wait_publishers(1)).await;
        for n in 0..20 {
            bounded("publish", publisher.publish("t", &Beat { n }))
                .await
                .expect("published");
        }
        until("all arrived", || sub.stats().arrived == 20).await;
        assert_eq!(sub.stats().dropped, 16);
        // Other tests in this binary drop nothing: the delta is this test's.
        assert_eq!(metrics.counter(names::PUBSUB_DROPPED, &side) - before, 16);
        drop(sub);
        bounded("stop", sub_node.stop()).await.expect("stops");
        bounded("stop", pub_node.stop()).await.expect("stops");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pipeline_redelivery_is_counted() {
        let _turn = serial();
        let metrics = recorder();
        let before = metrics.counter(names::PIPELINE_REDELIVERED, &[]);
        let hub = bounded(
            "hub starts",
            builder("obs-hub", Vec::new()).uses::<WorkClient>().start(),
        )
        .await
        .expect("starts");
        let url = hub.local_urls()[0].to_string();
        let hung_started = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for (name, hangs) in [("obs-hung", true), ("obs-healthy", false)] {
            let worker = Worker {
                hangs,
                started: if hangs {
                    hung_started.clone()
                } else {
                    Arc::default()
                },
            };
            workers.push(
                bounded(
                    "worker starts",
                    builder(name, vec![url.clone()])
                        .serve(WorkHandler::new(worker))
                        .start(),
                )
                .await
                .expect("starts"),
            );
        }
        let set = hub.peers::<WorkClient>();
        bounded("both workers link", set.wait_until(|ids| ids.len() == 2)).await;
        let pipeline = Pipeline::new(set).per_worker(1);
        let pushes: Vec<_> = (0..2u64)
            .map(|id| {
                let pipeline = pipeline.clone();
                tokio::spawn(async move {
                    pipeline
                        .push(move |w: WorkClient| async move { w.run(id).await })
                        .await
                })
            })
            .collect();
        until("the hung worker holds a job", || {
            hung_started.load(Ordering::SeqCst) == 1
        })
        .await;
        drop(workers.remove(0)); // a crash: its connection is aborted mid-job
        for push in pushes {
            bounded("acked", push)
                .await
                .expect("push task")
                .expect("acked by the healthy worker");
        }
        assert_eq!(
            metrics.counter(names::PIPELINE_REDELIVERED, &[]) - before,
            1
        );
        for w in workers {
            bounded("stop", w.stop()).await.expect("stops");
        }
        bounded("stop", hub.stop()).await.expect("stops");
    }
}
