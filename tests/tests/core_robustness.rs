//! Hostile and failing peers: dead peers, garbage, truncated and oversized
//! frames, wrong versions, connecting to oneself, TLS trust failures.

use std::time::Duration;

use bytes::BytesMut;
use plexus::wire::frame::Frame;
use plexus::wire::handshake::{Answer, Hello, RefusalCode, Welcome};
use plexus::wire::{self, SystemCode};
use plexus::{
    transport::TlsConfig, Bytes, CallError, CallOptions, ConnectError, ConnectionConfig, Endpoint,
    Reject, Router, Server,
};
use plexus_tests::{bounded, until, TestPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ECHO: &str = "test.Echo/echo";

fn echo() -> Router {
    Router::new().unary(
        ECHO,
        |_ctx, body: Bytes| async move { Ok::<_, Reject>(body) },
    )
}

async fn echo_server(config: ConnectionConfig) -> Server {
    Server::bind("tcp://127.0.0.1:0")
        .config(config)
        .serve(echo())
        .start()
        .await
        .expect("server")
}

fn addr(server: &Server) -> String {
    server
        .local_url()
        .socket_addr()
        .expect("tcp address")
        .to_string()
}

fn hello(version: u16) -> BytesMut {
    let mut out = BytesMut::new();
    Hello {
        version,
        node_id: 7,
        max_frame: 1 << 20,
        window: 1 << 16,
        max_calls: 256,
        extensions: Vec::new(),
        data: Bytes::new(),
    }
    .encode(&mut out);
    out
}

/// Reads until the peer closes; returns everything it sent.
async fn read_to_end(s: &mut TcpStream) -> BytesMut {
    let mut buf = BytesMut::new();
    bounded("peer closes", async {
        loop {
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    buf
}

/// Performs the dialer's handshake by hand; returns the stream after the welcome.
async fn raw_handshake(server: &Server) -> TcpStream {
    let mut s = TcpStream::connect(addr(server)).await.expect("dial");
    s.write_all(&hello(wire::handshake::VERSION))
        .await
        .expect("hello");
    let mut buf = BytesMut::new();
    bounded("welcome", async {
        loop {
            if let Some(a) = Answer::decode(&mut buf).expect("answer") {
                assert!(matches!(a, Answer::Welcome(_)), "{a:?}");
                break;
            }
            assert_ne!(
                s.read_buf(&mut buf).await.expect("read"),
                0,
                "closed during handshake"
            );
        }
    })
    .await;
    s
}

fn frames(mut buf: BytesMut) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Ok(Some(f)) = wire::frame::decode(&mut buf, u32::MAX) {
        out.push(f);
    }
    out
}

fn is_protocol_goaway(f: &Frame) -> bool {
    matches!(f, Frame::GoAway { code, .. } if *code == SystemCode::Protocol as u32)
}

async fn still_serves(server: &Server) {
    let conn = bounded(
        "connect",
        plexus::Connection::connect(&server.local_url().to_string()),
    )
    .await
    .expect("a well-behaved client still connects");
    let reply = bounded(
        "call",
        conn.call(ECHO, Bytes::from("ok"), CallOptions::new()),
    )
    .await;
    assert_eq!(reply.expect("echo"), Bytes::from("ok"));
}

/// The listening side of a peer whose machine died right after the
/// handshake, over `inproc://`: it welcomes the dialer, then reads and
/// discards everything and never says another word.
async fn mute_listener() -> (String, tokio::task::JoinHandle<()>) {
    use plexus::transport::{self, TransportConfig, Url};
    let url: Url = format!("inproc://mute-{}", std::process::id())
        .parse()
        .expect("inproc url");
    let mut listener = transport::listen(&url, &TransportConfig::new())
        .await
        .expect("bind");
    let task = tokio::spawn(async move {
        let (mut rd, mut wr) = listener.accept().await.expect("accept").stream.split();
        let mut buf = BytesMut::new();
        while Hello::decode(&mut buf).expect("hello").is_none() {
            assert_ne!(rd.read_buf(&mut buf).await.expect("read"), 0, "hung up");
        }
        let mut out = BytesMut::new();
        Answer::Welcome(Welcome {
            version: wire::handshake::VERSION,
            node_id: 99,
            max_frame: 1 << 20,
            window: 1 << 16,
            max_calls: 256,
            extensions: Vec::new(),
            data: Bytes::new(),
        })
        .encode(&mut out);
        wr.write_all(&out).await.expect("welcome");
        let mut sink = vec![0u8; 4096];
        while let Ok(n) = rd.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    });
    (url.to_string(), task)
}

#[tokio::test(start_paused = true)]
async fn silent_peer_is_declared_lost_within_the_keepalive_bound() {
    // The keepalive rule on tokio's clock: the peer's silence is measured in
    // paused time, so the bound holds exactly, however loaded the machine.
    let (url, mute) = mute_listener().await;
    let (interval, timeout) = (Duration::from_millis(100), Duration::from_millis(400));
    let client = Endpoint::builder()
        .config(
            ConnectionConfig::new()
                .keepalive(interval, timeout)
                .default_timeout(None),
        )
        .build();
    let conn = bounded("connect", client.connect(url.as_str()))
        .await
        .expect("connect");
    let started = tokio::time::Instant::now();
    let err = bounded(
        "call",
        conn.call(ECHO, Bytes::from("anyone?"), CallOptions::new()),
    )
    .await;
    let waited = started.elapsed();
    assert!(
        matches!(err, Err(CallError::ConnectionLost { .. })),
        "{err:?}"
    );
    // Not before the timeout, and at the latest one check interval after it.
    assert!(
        waited >= timeout && waited <= timeout + interval,
        "took {waited:?}"
    );
    assert!(matches!(
        conn.close_reason(),
        Some(plexus::CloseReason::KeepaliveTimeout(silent)) if silent >= timeout
    ));
    mute.abort();
}

#[tokio::test]
async fn peer_aborting_mid_call_fails_the_call_with_connection_lost() {
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let r2 = release.clone();
    let server = Server::bind("tcp://127.0.0.1:0")
        .serve(Router::new().unary("test.Slow/held", move |_c, _b| {
            let r = r2.clone();
            async move {
                r.notified().await;
                Ok::<_, Reject>(Bytes::new())
            }
        }))
        .start()
        .await
        .expect("server");
    let conn = bounded(
        "connect",
        plexus::Connection::connect(&server.local_url().to_string()),
    )
    .await
    .expect("connect");
    let c2 = conn.clone();
    let call = tokio::spawn(async move {
        c2.call("test.Slow/held", Bytes::new(), CallOptions::new())
            .await
    });
    bounded("server sees the call", async {
        loop {
            if let Some(c) = server.connections().first() {
                if c.stats().calls_in_flight == 1 {
                    c.abort();
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let err = bounded("call fails", call).await.expect("join");
    assert!(
        matches!(err, Err(CallError::ConnectionLost { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn garbage_instead_of_a_hello_is_refused_and_others_are_served() {
    let server = echo_server(ConnectionConfig::new()).await;
    still_serves(&server).await;
    let mut s = TcpStream::connect(addr(&server)).await.expect("dial");
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = s.write_all(&garbage).await;
    let mut answer = read_to_end(&mut s).await;
    match Answer::decode(&mut answer) {
        Ok(Some(Answer::Refusal(r))) => assert_eq!(r.code, RefusalCode::Malformed),
        other => panic!("expected a malformed refusal, got {other:?}"),
    }
    still_serves(&server).await;
}

#[tokio::test]
async fn garbage_frames_close_that_connection_with_a_protocol_error() {
    let server = echo_server(ConnectionConfig::new()).await;
    for seed in 1..=5u32 {
        let mut s = raw_handshake(&server).await;
        // A pseudo-random stream whose first header announces an absurd length.
        let mut garbage = vec![0xffu8; 4];
        garbage.extend(
            (0..2048u32).map(|i| (i.wrapping_mul(seed.wrapping_mul(2_654_435_761)) >> 11) as u8),
        );
        let _ = s.write_all(&garbage).await;
        let got = frames(read_to_end(&mut s).await);
        assert!(got.iter().any(is_protocol_goaway), "seed {seed}: {got:?}");
        still_serves(&server).await;
    }
    // An unknown frame kind with a sane length.
    let mut s = raw_handshake(&server).await;
    let _ = s.write_all(&[0, 0, 0, 0, 200, 0, 0, 0, 0, 1]).await;
    assert!(frames(read_to_end(&mut s).await)
        .iter()
        .any(is_protocol_goaway));
    still_serves(&server).await;
}

#[tokio::test]
async fn truncated_frame_then_close_ends_only_that_connection() {
    let server = echo_server(ConnectionConfig::new()).await;
    let mut s = raw_handshake(&server).await;
    // Header promises 100 payload bytes; only 10 arrive before the stream ends.
    let mut partial = vec![0, 0, 0, 100, 2, 0, 0, 0, 0, 1];
    partial.extend([7u8; 10]);
    s.write_all(&partial).await.expect("write");
    s.shutdown().await.expect("shutdown");
    let _ = read_to_end(&mut s).await;
    still_serves(&server).await;
    // A call-open whose operation name length runs past the payload.
    let mut s = raw_handshake(&server).await;
    let bad_open = [0, 0, 0, 3, 1, 0x04, 0, 0, 0, 1, 0, 50, b'x'];
    s.write_all(&bad_open).await.expect("write");
    assert!(frames(read_to_end(&mut s).await)
        .iter()
        .any(is_protocol_goaway));
    still_serves(&server).await;
}

#[tokio::test]
async fn oversized_frame_is_refused() {
    let server = echo_server(ConnectionConfig::new().max_frame(64 * 1024)).await;
    let mut s = raw_handshake(&server).await;
    // Announce a 1 MiB data frame; the server refuses before buffering it.
    s.write_all(&[0, 0x10, 0, 0, 2, 0, 0, 0, 0, 1])
        .await
        .expect("write");
    let got = frames(read_to_end(&mut s).await);
    let goaway = got
        .iter()
        .find(|f| is_protocol_goaway(f))
        .expect("protocol goaway");
    if let Frame::GoAway { reason, .. } = goaway {
        assert!(reason.contains("exceeds"), "{reason}");
    }
    // A well-behaved client is told before sending.
    let conn = plexus::Connection::connect(&server.local_url().to_string())
        .await
        .expect("connect");
    let big = Bytes::from(vec![0u8; 100 * 1024]);
    let err = bounded("call", conn.call(ECHO, big, CallOptions::new())).await;
    // The error speaks of the message: its own size, and the most the
    // call-open frame has room for besides the call's fields (the name,
    // sent the first time, and the default deadline).
    let header = 1 + 1 + ECHO.len() + 4;
    assert!(
        matches!(err, Err(CallError::MessageTooLarge { size: 102_400, limit, .. }) if limit == 65_536 - header),
        "{err:?}"
    );
    still_serves(&server).await;
}

#[tokio::test]
async fn version_mismatch_is_refused_with_a_clear_reason() {
    let server = echo_server(ConnectionConfig::new()).await;
    let mut s = TcpStream::connect(addr(&server)).await.expect("dial");
    s.write_all(&hello(wire::handshake::VERSION + 1))
        .await
        .expect("hello");
    let mut answer = read_to_end(&mut s).await;
    match Answer::decode(&mut answer) {
        Ok(Some(Answer::Refusal(r))) => {
            assert_eq!(r.code, RefusalCode::VersionMismatch);
            let ours = format!("v{}", wire::handshake::VERSION);
            assert!(r.reason.contains(&ours), "{}", r.reason);
        }
        other => panic!("expected a version refusal, got {other:?}"),
    }
    // And a dialer facing a newer listener gets a typed error.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("tcp://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).await;
        let mut out = BytesMut::new();
        Answer::Welcome(Welcome {
            version: 9,
            node_id: 5,
            max_frame: 1 << 20,
            window: 1 << 16,
            max_calls: 256,
            extensions: Vec::new(),
            data: Bytes::new(),
        })
        .encode(&mut out);
        let _ = s.write_all(&out).await;
    });
    let err = bounded("connect", plexus::Connection::connect(&url))
        .await
        .expect_err("mismatch");
    assert!(
        matches!(
            err,
            ConnectError::VersionMismatch {
                ours: wire::handshake::VERSION,
                theirs: 9,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn connecting_to_oneself_is_refused() {
    let node = Endpoint::builder().serve(echo()).build();
    let listening = node.listen("tcp://127.0.0.1:0").await.expect("listen");
    let err = bounded("connect", node.connect(listening.local_url()))
        .await
        .expect_err("self");
    assert!(matches!(err, ConnectError::SelfConnect { .. }), "{err}");
    assert!(err.to_string().contains("itself"), "{err}");
}

#[tokio::test]
async fn accept_hook_sees_hello_data_and_can_refuse() {
    let server = Server::bind("tcp://127.0.0.1:0")
        .serve(echo())
        .accept(|req| {
            if req.data().as_ref() == b"token-ok" {
                Ok(Bytes::from("welcome aboard"))
            } else {
                Err(format!(
                    "bad token {:?}",
                    String::from_utf8_lossy(req.data())
                ))
            }
        })
        .start()
        .await
        .expect("server");
    let dialer = Endpoint::builder().build();
    let conn = bounded(
        "connect",
        dialer.connect_with(server.local_url(), "token-ok"),
    )
    .await
    .expect("accepted");
    assert_eq!(conn.peer().data().as_ref(), b"welcome aboard");
    let err = bounded("connect", dialer.connect_with(server.local_url(), "nope"))
        .await
        .expect_err("refused");
    match err {
        ConnectError::Refused { code, reason, .. } => {
            assert_eq!(code, RefusalCode::Rejected);
            assert!(reason.contains("bad token"), "{reason}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn tls_with_an_untrusted_certificate_is_refused() {
    let pki = TestPki::new("real ca");
    let server = Server::bind("tls://127.0.0.1:0")
        .tls(pki.server_tls())
        .serve(echo())
        .start()
        .await
        .expect("server");
    let stranger = TestPki::new("some other ca");
    let client = Endpoint::builder().tls(stranger.client_tls()).build();
    let err = bounded("connect", client.connect(server.local_url()))
        .await
        .expect_err("untrusted");
    assert!(matches!(err, ConnectError::Transport(_)), "{err}");
    // The trusted client is served.
    let good = Endpoint::builder().tls(pki.client_tls()).build();
    let conn = bounded("connect", good.connect(server.local_url()))
        .await
        .expect("trusted");
    let reply = bounded(
        "call",
        conn.call(ECHO, Bytes::from("tls"), CallOptions::new()),
    )
    .await;
    assert_eq!(reply.expect("echo"), Bytes::from("tls"));
}

#[tokio::test]
async fn mutual_tls_without_a_client_certificate_is_refused() {
    let pki = TestPki::new("mesh ca");
    let server_tls = pki
        .server_tls()
        .require_client_certs(pki.ca_pem.as_bytes())
        .expect("mtls");
    let server = Server::bind("tls://127.0.0.1:0")
        .tls(server_tls)
        .serve(echo())
        .start()
        .await
        .expect("server");
    let anonymous = Endpoint::builder().tls(pki.client_tls()).build();
    let err = bounded("connect", anonymous.connect(server.local_url())).await;
    assert!(
        err.is_err(),
        "a client without a certificate must not get a connection"
    );
    let id = pki.client();
    let with_cert = TlsConfig::client(pki.ca_pem.as_bytes())
        .and_then(|t| t.with_client_cert(id.cert_pem.as_bytes(), id.key_pem.as_bytes()))
        .expect("client cert");
    let member = Endpoint::builder().tls(with_cert).build();
    let conn = bounded("connect", member.connect(server.local_url()))
        .await
        .expect("with a certificate");
    let reply = bounded(
        "call",
        conn.call(ECHO, Bytes::from("mtls"), CallOptions::new()),
    )
    .await;
    assert_eq!(reply.expect("echo"), Bytes::from("mtls"));
}

#[tokio::test]
async fn connection_limit_refuses_the_one_too_many_with_a_clear_error() {
    let server = Server::bind("tcp://127.0.0.1:0")
        .serve(echo())
        .max_connections(3)
        .start()
        .await
        .expect("server");
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(
            bounded("connect", plexus::Connection::connect(server.local_url()))
                .await
                .expect("within the limit"),
        );
    }
    until("server registers them", || server.connections().len() >= 3).await;
    let err = bounded("connect", plexus::Connection::connect(server.local_url()))
        .await
        .expect_err("over the limit");
    match &err {
        ConnectError::Refused { code, reason, .. } => {
            assert_eq!(*code, RefusalCode::TooManyConnections);
            assert!(reason.contains("limit of 3"), "{reason}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    // Closing one makes room again.
    kept.pop().expect("one").close().await;
    bounded("room again", async {
        loop {
            if plexus::Connection::connect(server.local_url())
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}
