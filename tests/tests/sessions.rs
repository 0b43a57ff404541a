//! Sessions opened with data and accepted, rejected or left to time out;
//! calls scoped to a session; events that say who came, who went and why;
//! a server pushing to its connected clients.

use std::sync::Arc;
use std::time::Duration;

use plexus::{
    events::Event, Bytes, CallError, CallOptions, CloseReason, ConnectionConfig, Endpoint, Reject,
    Router,
};
use plexus_tests::{bounded, eventually, until, Pair, Transport};
use tokio::sync::mpsc;

fn lab() -> Router {
    Router::new()
        .unary("test.Lab/whoami", |ctx, _b| async move {
            let session = ctx
                .session()
                .map(|s| s.name().to_owned())
                .unwrap_or_default();
            Ok::<_, Reject>(Bytes::from(session))
        })
        .unary("test.Lab/forever", |_ctx, _b| async move {
            std::future::pending::<()>().await;
            Ok::<_, Reject>(Bytes::new())
        })
}

async fn pair_with_sessions() -> Pair {
    Pair::start_with(
        Transport::Tcp,
        ConnectionConfig::new(),
        lab(),
        Router::new(),
        |b| {
            b.on_session(|req| async move {
                match req.name() {
                    "slow" => {
                        // Neither accept nor reject: the opener's settle timeout decides.
                        std::future::pending::<()>().await;
                        Ok(Bytes::new())
                    }
                    "lab-3" if req.data().as_ref() == b"badge 42" => {
                        Ok(Bytes::from("welcome to lab-3"))
                    }
                    _ => Err(Reject::new(403, format!("no entry to {}", req.name()))),
                }
            })
        },
        |b| b,
    )
    .await
    .expect("tcp")
}

#[tokio::test]
async fn session_opened_with_data_is_accepted_with_data() {
    let pair = pair_with_sessions().await;
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    let session = bounded(
        "open",
        conn.open_session("lab-3", "badge 42", Duration::from_secs(5)),
    )
    .await
    .expect("accepted");
    assert_eq!(session.peer_data(), Bytes::from("welcome to lab-3"));
    let reply = bounded(
        "call",
        session.call("test.Lab/whoami", Bytes::new(), CallOptions::new()),
    )
    .await;
    assert_eq!(
        reply.expect("inside"),
        Bytes::from("lab-3"),
        "the handler sees the session"
    );
    let outside = bounded(
        "call",
        conn.call("test.Lab/whoami", Bytes::new(), CallOptions::new()),
    )
    .await;
    assert_eq!(outside.expect("outside"), Bytes::new());
}

#[tokio::test]
async fn rejected_session_carries_the_reason() {
    let pair = pair_with_sessions().await;
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    let err = bounded(
        "open",
        conn.open_session("vault", "badge 42", Duration::from_secs(5)),
    )
    .await
    .expect_err("rejected");
    let r = err.as_reject().expect("a rejection");
    assert_eq!((r.code(), r.message()), (403, "no entry to vault"));
    // No hook at all: refused too, with a reason saying so.
    let hookless = Endpoint::builder().build();
    let l = hookless.listen("tcp://127.0.0.1:0").await.expect("listen");
    let c2 = bounded("connect", pair.client.connect(l.local_url()))
        .await
        .expect("connect");
    let err = bounded("open", c2.open_session("any", "", Duration::from_secs(5)))
        .await
        .expect_err("no hook");
    assert_eq!(
        err.as_reject().map(|r| r.code()),
        Some(plexus::session::NO_SESSIONS)
    );
}

#[tokio::test]
async fn session_neither_accepted_nor_rejected_times_out() {
    let pair = pair_with_sessions().await;
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    let err = bounded(
        "open",
        conn.open_session("slow", "", Duration::from_millis(200)),
    )
    .await
    .expect_err("timeout");
    assert!(
        matches!(err, CallError::SessionTimeout { ref session, .. } if &**session == "slow"),
        "{err}"
    );
    // The connection is fine afterwards.
    let ok = bounded(
        "call",
        conn.call("test.Lab/whoami", Bytes::new(), CallOptions::new()),
    )
    .await;
    assert!(ok.is_ok());
}

#[tokio::test]
async fn closing_a_session_cancels_its_calls_and_refuses_new_ones() {
    let pair = pair_with_sessions().await;
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    let session = bounded(
        "open",
        conn.open_session("lab-3", "badge 42", Duration::from_secs(5)),
    )
    .await
    .expect("accepted");
    let s2 = session.clone();
    let stuck = tokio::spawn(async move {
        s2.call(
            "test.Lab/forever",
            Bytes::new(),
            CallOptions::new().timeout(Duration::from_secs(60)),
        )
        .await
    });
    // Let the call reach the server before closing.
    until("call in flight", || {
        pair.server
            .connections()
            .first()
            .is_some_and(|c| c.stats().calls_in_flight > 0)
    })
    .await;
    session.close("done for today").await;
    let err = bounded("stuck call", stuck).await.expect("join");
    assert!(
        matches!(err, Err(CallError::SessionClosed { .. })),
        "{err:?}"
    );
    let err = bounded(
        "new call",
        session.call("test.Lab/whoami", Bytes::new(), CallOptions::new()),
    )
    .await;
    assert!(
        matches!(err, Err(CallError::SessionClosed { .. })),
        "{err:?}"
    );
    // The server side cancelled its handler too.
    until("server drains", || {
        pair.server
            .connections()
            .first()
            .is_none_or(|c| c.stats().calls_in_flight == 0)
    })
    .await;
    // The server's view of the session is closed, with the reason.
    let server_sessions = pair
        .server
        .connections()
        .first()
        .map(|c| c.sessions())
        .unwrap_or_default();
    assert!(server_sessions.is_empty(), "{server_sessions:?}");
}

#[tokio::test]
async fn events_report_connections_and_sessions_with_reasons() {
    let pair = pair_with_sessions().await;
    let mut server_events = pair.server.events();
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    match bounded("event", server_events.recv()).await {
        Some(Event::Connected { peer }) => assert_eq!(peer.node_id(), pair.client.node_id()),
        other => panic!("expected Connected, got {other:?}"),
    }
    let session = bounded(
        "open",
        conn.open_session("lab-3", "badge 42", Duration::from_secs(5)),
    )
    .await
    .expect("accepted");
    match bounded("event", server_events.recv()).await {
        Some(Event::SessionOpened { session }) => {
            assert_eq!(session.name(), "lab-3");
            assert_eq!(session.peer_data(), Bytes::from("badge 42"));
        }
        other => panic!("expected SessionOpened, got {other:?}"),
    }
    session.close("bye").await;
    match bounded("event", server_events.recv()).await {
        Some(Event::SessionClosed { name, reason, .. }) => {
            assert_eq!(&*name, "lab-3");
            assert!(reason.contains("bye"), "{reason}");
        }
        other => panic!("expected SessionClosed, got {other:?}"),
    }
    conn.abort();
    match bounded("event", server_events.recv()).await {
        Some(Event::Disconnected { peer, reason }) => {
            assert_eq!(peer.node_id(), pair.client.node_id());
            assert_eq!(reason, CloseReason::PeerGone);
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[tokio::test]
async fn server_pushes_to_connected_clients_and_sessions_work_from_either_side() {
    let (tx, mut pushed) = mpsc::unbounded_channel::<Bytes>();
    let client_side = Router::new().oneway("test.Client/notify", move |_ctx, body: Bytes| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(body);
        }
    });
    let client_side = client_side.unary("test.Client/whoami", |ctx, _b| async move {
        Ok::<_, Reject>(Bytes::from(
            ctx.session()
                .map(|s| s.name().to_owned())
                .unwrap_or_default(),
        ))
    });
    let accepted = Arc::new(tokio::sync::Notify::new());
    let pair = Pair::start_with(
        Transport::Tcp,
        ConnectionConfig::new(),
        lab(),
        client_side,
        |b| b,
        |b| b.on_session(|_req| async move { Ok(Bytes::from("ok")) }),
    )
    .await
    .expect("tcp");
    let _conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    let server_conn = eventually("server sees client", || {
        pair.server.connections().into_iter().next()
    })
    .await;
    server_conn
        .oneway(
            "test.Client/notify",
            Bytes::from("news"),
            CallOptions::new(),
        )
        .await
        .expect("push");
    assert_eq!(
        bounded("push arrives", pushed.recv()).await,
        Some(Bytes::from("news"))
    );
    // The listener opens a session towards the dialer.
    let s = bounded(
        "open",
        server_conn.open_session("reverse", "", Duration::from_secs(5)),
    )
    .await
    .expect("accepted");
    let who = bounded(
        "call",
        s.call("test.Client/whoami", Bytes::new(), CallOptions::new()),
    )
    .await;
    assert_eq!(who.expect("reply"), Bytes::from("reverse"));
    accepted.notify_one();
}
