//! Hostile and failing peers over every transport: what `core_robustness`
//! pins down over raw TCP (garbage instead of a hello, garbage frames, a
//! frame above the limit, a wrong version, refusals, a peer gone mid-call,
//! a frozen server), here through `plexus::transport::dial`, so that ws://,
//! wss:// and quic:// keep every promise tcp:// makes.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use plexus::transport::{self, ReadHalf, TransportConfig, WriteHalf};
use plexus::wire::frame::Frame;
use plexus::wire::handshake::{Answer, Hello, RefusalCode, Welcome};
use plexus::wire::{self, SystemCode};
use plexus::{
    transport::{TlsConfig, Url},
    Bytes, CallError, CallOptions, ConnectError, ConnectionConfig, Endpoint, Reject, Router,
    Server,
};
use plexus_tests::raw::hello;
use plexus_tests::{bounded, tempdir, until, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ECHO: &str = "test.Echo/echo";

fn echo() -> Router {
    Router::new().unary(
        ECHO,
        |_ctx, body: Bytes| async move { Ok::<_, Reject>(body) },
    )
}

/// A server on one transport, and what a client needs to reach it.
struct Target {
    server: Server,
    url: Url,
    client_tls: Option<TlsConfig>,
    _dir: Option<tempdir::Dir>,
}

impl Target {
    async fn start(transport: Transport, config: ConnectionConfig) -> Option<Target> {
        Self::start_with(transport, config, |b| b).await
    }

    async fn start_with(
        transport: Transport,
        config: ConnectionConfig,
        hook: impl FnOnce(plexus::server::ServerBuilder) -> plexus::server::ServerBuilder,
    ) -> Option<Target> {
        let dir = (transport == Transport::Unix).then(|| tempdir::Dir::new("transports"));
        let scratch = std::env::temp_dir();
        let (url, tls) = transport.listen_url(dir.as_ref().map_or(&scratch, |d| &d.0));
        let mut builder = Server::bind(url.as_str()).config(config).serve(echo());
        let client_tls = match tls {
            Some((server_tls, client_tls)) => {
                builder = builder.tls(server_tls);
                Some(client_tls)
            }
            None => None,
        };
        let server = match hook(builder).start().await {
            Ok(server) => server,
            Err(e) if transport == Transport::Tcp6 => {
                eprintln!("skipping IPv6: {e}");
                return None;
            }
            Err(e) => panic!("listen on {url}: {e}"),
        };
        let url = server.local_url().clone();
        Some(Target {
            server,
            url,
            client_tls,
            _dir: dir,
        })
    }

    fn transport_config(&self) -> TransportConfig {
        match &self.client_tls {
            Some(tls) => TransportConfig::new().with_tls(tls.clone()),
            None => TransportConfig::new(),
        }
    }

    /// A client endpoint that trusts this target.
    fn client(&self, config: ConnectionConfig) -> Endpoint {
        let builder = Endpoint::builder().config(config);
        match &self.client_tls {
            Some(tls) => builder.tls(tls.clone()),
            None => builder,
        }
        .build()
    }

    /// A raw byte stream to the server, below the Plexus handshake.
    async fn raw(&self) -> (ReadHalf, WriteHalf) {
        let connected = bounded(
            "raw dial",
            transport::dial(&self.url, &self.transport_config()),
        )
        .await
        .unwrap_or_else(|e| panic!("raw dial {}: {e}", self.url));
        connected.stream.split()
    }

    /// A raw byte stream past a hand-made handshake.
    async fn raw_handshake(&self) -> (ReadHalf, WriteHalf) {
        let (mut read, mut write) = self.raw().await;
        write
            .write_all(&hello(wire::handshake::VERSION))
            .await
            .expect("hello");
        write.flush().await.expect("flush");
        let mut buf = BytesMut::new();
        bounded("welcome", async {
            loop {
                if let Some(answer) = Answer::decode(&mut buf).expect("answer") {
                    assert!(matches!(answer, Answer::Welcome(_)), "{answer:?}");
                    break;
                }
                let n = read.read_buf(&mut buf).await.expect("read");
                assert_ne!(n, 0, "closed during handshake");
            }
        })
        .await;
        (read, write)
    }

    /// A well-behaved client is still served.
    async fn still_serves(&self) {
        let client = self.client(ConnectionConfig::new());
        let conn = bounded("connect", client.connect(&self.url))
            .await
            .expect("a well-behaved client still connects");
        let reply = bounded(
            "call",
            conn.call(ECHO, Bytes::from("ok"), CallOptions::new()),
        )
        .await;
        assert_eq!(reply.expect("echo"), Bytes::from("ok"));
    }
}

/// Writes `bytes` (ignoring a peer that already closed) and reads until the
/// peer closes; returns everything it sent.
async fn send_and_read_to_end(raw: (ReadHalf, WriteHalf), bytes: &[u8]) -> BytesMut {
    let (mut read, mut write) = raw;
    let _ = write.write_all(bytes).await;
    let _ = write.flush().await;
    let mut buf = BytesMut::new();
    bounded("peer closes", async {
        loop {
            match read.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    buf
}

fn frames(mut buf: BytesMut) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Ok(Some(f)) = wire::frame::decode(&mut buf, u32::MAX) {
        out.push(f);
    }
    out
}

fn protocol_goaway(frames: &[Frame]) -> Option<&str> {
    frames.iter().find_map(|f| match f {
        Frame::GoAway { code, reason, .. } if *code == SystemCode::Protocol as u32 => {
            Some(reason.as_str())
        }
        _ => None,
    })
}

#[tokio::test]
async fn garbage_instead_of_a_hello_is_refused_on_every_transport() {
    for t in Transport::ALL {
        let Some(target) = Target::start(t, ConnectionConfig::new()).await else {
            continue;
        };
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut answer = send_and_read_to_end(target.raw().await, &garbage).await;
        match Answer::decode(&mut answer) {
            Ok(Some(Answer::Refusal(r))) => assert_eq!(r.code, RefusalCode::Malformed, "{t:?}"),
            other => panic!("{t:?}: expected a malformed refusal, got {other:?}"),
        }
        target.still_serves().await;
    }
}

#[tokio::test]
async fn a_wrong_version_is_refused_with_a_reason_on_every_transport() {
    for t in Transport::ALL {
        let Some(target) = Target::start(t, ConnectionConfig::new()).await else {
            continue;
        };
        let mut answer =
            send_and_read_to_end(target.raw().await, &hello(wire::handshake::VERSION + 1)).await;
        match Answer::decode(&mut answer) {
            Ok(Some(Answer::Refusal(r))) => {
                assert_eq!(r.code, RefusalCode::VersionMismatch, "{t:?}");
                let ours = format!("v{}", wire::handshake::VERSION);
                assert!(r.reason.contains(&ours), "{t:?}: {}", r.reason);
            }
            other => panic!("{t:?}: expected a version refusal, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn garbage_frames_close_only_that_connection_on_every_transport() {
    for t in Transport::ALL {
        let Some(target) = Target::start(t, ConnectionConfig::new()).await else {
            continue;
        };
        let mut garbage = vec![0xffu8; 4];
        garbage.extend((0..2048u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8));
        let got = frames(send_and_read_to_end(target.raw_handshake().await, &garbage).await);
        assert!(protocol_goaway(&got).is_some(), "{t:?}: {got:?}");
        // An unknown frame kind with a sane length.
        let unknown = [0, 0, 0, 0, 200, 0, 0, 0, 0, 1];
        let got = frames(send_and_read_to_end(target.raw_handshake().await, &unknown).await);
        assert!(protocol_goaway(&got).is_some(), "{t:?}: {got:?}");
        target.still_serves().await;
    }
}

#[tokio::test]
async fn a_frame_above_the_limit_is_refused_from_its_header_on_every_transport() {
    for t in Transport::ALL {
        let config = ConnectionConfig::new().max_frame(64 * 1024);
        let Some(target) = Target::start(t, config).await else {
            continue;
        };
        // Announces a 1 MiB Data frame and sends none of it.
        let header = [0, 0x10, 0, 0, 2, 0, 0, 0, 0, 1];
        let got = frames(send_and_read_to_end(target.raw_handshake().await, &header).await);
        let reason = protocol_goaway(&got).unwrap_or_else(|| panic!("{t:?}: {got:?}"));
        assert!(reason.contains("exceeds"), "{t:?}: {reason}");
        // A well-behaved client is told before it sends.
        let conn = bounded(
            "connect",
            target.client(ConnectionConfig::new()).connect(&target.url),
        )
        .await
        .expect("connect");
        let big = Bytes::from(vec![0u8; 100 * 1024]);
        let err = bounded("call", conn.call(ECHO, big, CallOptions::new())).await;
        // The most the call-open frame has room for besides the call's
        // fields (the name, sent the first time, and the default deadline).
        let header = 1 + 1 + ECHO.len() + 4;
        assert!(
            matches!(err, Err(CallError::MessageTooLarge { size: 102_400, limit, .. }) if limit == 65_536 - header),
            "{t:?}: {err:?}"
        );
        target.still_serves().await;
    }
}

#[tokio::test]
async fn the_accept_hooks_refusal_arrives_whole_on_every_transport() {
    for t in Transport::ALL {
        let Some(target) = Target::start_with(t, ConnectionConfig::new(), |b| {
            b.accept(|req| {
                if req.data().as_ref() == b"token-ok" {
                    Ok(Bytes::from("welcome aboard"))
                } else {
                    Err("bad token".to_string())
                }
            })
        })
        .await
        else {
            continue;
        };
        let client = target.client(ConnectionConfig::new());
        let conn = bounded("connect", client.connect_with(&target.url, "token-ok"))
            .await
            .unwrap_or_else(|e| panic!("{t:?}: accepted: {e}"));
        assert_eq!(conn.peer().data().as_ref(), b"welcome aboard", "{t:?}");
        let err = bounded("connect", client.connect_with(&target.url, "nope"))
            .await
            .expect_err("refused");
        match err {
            ConnectError::Refused { code, reason, .. } => {
                assert_eq!(code, RefusalCode::Rejected, "{t:?}");
                assert!(reason.contains("bad token"), "{t:?}: {reason}");
            }
            other => panic!("{t:?}: expected a refusal, got {other}"),
        }
    }
}

#[tokio::test]
async fn a_peer_gone_mid_call_fails_the_call_with_connection_lost_on_every_transport() {
    for t in Transport::ALL {
        let Some(target) = Target::start(t, ConnectionConfig::new()).await else {
            continue;
        };
        let (mut read, mut write) = target.raw_handshake().await;
        // Open a call the raw peer never answers, from the server's side: the
        // server calls into the raw peer, which then vanishes.
        until("server registers the raw peer", || {
            !target.server.connections().is_empty()
        })
        .await;
        let conn = target.server.connections().remove(0);
        let call = tokio::spawn(async move {
            conn.call(ECHO, Bytes::from("anyone?"), CallOptions::new())
                .await
        });
        let mut buf = BytesMut::new();
        bounded("the call reaches the raw peer", async {
            while !frames(buf.clone())
                .iter()
                .any(|f| matches!(f, Frame::CallOpen(_)))
            {
                let n = read.read_buf(&mut buf).await.expect("read");
                assert_ne!(n, 0, "{t:?}: closed early");
            }
        })
        .await;
        let _ = write.shutdown().await;
        drop((read, write));
        let err = bounded("call fails", call).await.expect("join");
        assert!(
            matches!(err, Err(CallError::ConnectionLost { .. })),
            "{t:?}: {err:?}"
        );
        target.still_serves().await;
    }
}

#[tokio::test]
async fn a_frozen_server_is_declared_lost_within_the_keepalive_bound_on_every_transport() {
    let (interval, timeout) = (Duration::from_millis(100), Duration::from_millis(400));
    for t in Transport::ALL {
        let dir = (t == Transport::Unix).then(|| tempdir::Dir::new("frozen"));
        let scratch = std::env::temp_dir();
        let (url, tls) = t.listen_url(dir.as_ref().map_or(&scratch, |d| &d.0));
        let server_config = match &tls {
            Some((server_tls, _)) => TransportConfig::new().with_tls(server_tls.clone()),
            None => TransportConfig::new(),
        };
        let mut listener = match transport::listen(&url.parse().expect("url"), &server_config).await
        {
            Ok(listener) => listener,
            Err(e) if t == Transport::Tcp6 => {
                eprintln!("skipping IPv6: {e}");
                continue;
            }
            Err(e) => panic!("listen on {url}: {e}"),
        };
        let local = listener.local_url().clone();
        // A "server" that welcomes and then never says another word.
        let mute = tokio::spawn(async move {
            let accepted = listener.accept().await.expect("accept");
            let (mut read, mut write) = accepted.stream.split();
            let mut buf = BytesMut::new();
            while Hello::decode(&mut buf).expect("hello").is_none() {
                if read.read_buf(&mut buf).await.expect("read") == 0 {
                    return;
                }
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
            write.write_all(&out).await.expect("welcome");
            write.flush().await.expect("flush");
            let mut sink = vec![0u8; 4096];
            while let Ok(n) = read.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            drop(write);
        });
        let builder = Endpoint::builder().config(
            ConnectionConfig::new()
                .keepalive(interval, timeout)
                .default_timeout(None),
        );
        let client = match tls {
            Some((_, client_tls)) => builder.tls(client_tls),
            None => builder,
        }
        .build();
        let conn = bounded("connect", client.connect(&local))
            .await
            .unwrap_or_else(|e| panic!("{t:?}: {e}"));
        let started = Instant::now();
        let err = bounded(
            "call",
            conn.call(ECHO, Bytes::from("anyone?"), CallOptions::new()),
        )
        .await;
        let waited = started.elapsed();
        assert!(
            matches!(err, Err(CallError::ConnectionLost { .. })),
            "{t:?}: {err:?}"
        );
        assert!(
            waited < timeout + interval + Duration::from_secs(1),
            "{t:?}: took {waited:?}"
        );
        mute.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_on_a_host_name_is_reachable_at_every_address_it_resolves_to() {
    let server = Server::bind("tcp://localhost:0")
        .serve(echo())
        .start()
        .await
        .expect("listens");
    let port = server.local_url().port().expect("a port");
    let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host(("localhost", port))
        .await
        .expect("localhost resolves")
        .collect();
    let listening = server
        .endpoint()
        .listen("tcp://localhost:0")
        .await
        .expect("again");
    assert_eq!(
        listening.local_urls().len(),
        {
            let mut unique = resolved.clone();
            unique.dedup();
            unique.len()
        },
        "one socket per address of `localhost`: {resolved:?}"
    );
    for addr in resolved {
        let url = format!("tcp://{addr}");
        let conn = bounded("dial", plexus::Connection::connect(url.as_str()))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let reply = bounded(
            "echo",
            conn.call(ECHO, Bytes::from_static(b"hi"), CallOptions::new()),
        )
        .await
        .expect("echo");
        assert_eq!(&reply[..], b"hi", "{url}");
    }
    server.shutdown().await;
}
