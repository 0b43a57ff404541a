//! Sockets: the message socket (send to one in turn, to all, to a source;
//! receive from many tasks; limits, send and receive modes, backpressure,
//! peers leaving) and the raw byte-stream server (callbacks, write
//! completion, limits, stop) — over loopback, unix sockets and inproc only.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus::socket::{PeerEvent, RawCloseReason, RawError, RawId, RawServer, RecvMode, SendMode};
use plexus::{
    socket::{Message, PeerId, Socket, SocketError},
    Bytes, ConnectionConfig,
};
use plexus_tests::tempdir::Dir;
use plexus_tests::{bounded, eventually, until, TestPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// How long a step that must *not* finish is watched before moving on. The
/// tests over `inproc://` run on tokio's paused clock: this time passes only
/// once every task is idle, so whatever could have happened has.
const QUIET: Duration = Duration::from_millis(300);

fn inproc(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("inproc://socket-{tag}-{}-{n}", std::process::id())
}

/// Replies to every message with its own content, from `workers` tasks.
fn serve_echo(socket: &Socket, workers: usize) {
    for _ in 0..workers {
        let s = socket.clone();
        tokio::spawn(async move {
            while let Ok(msg) = s.recv().await {
                if s.send_to(msg.source, msg.content).await.is_err() {
                    continue;
                }
            }
        });
    }
}

async fn recv(socket: &Socket, what: &str) -> Message {
    bounded(what, socket.recv())
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_reach_their_own_source_among_100_concurrent_clients() {
    let server = Socket::new();
    let url = bounded("listen", server.listen("tcp://127.0.0.1:0"))
        .await
        .expect("listen");
    serve_echo(&server, 3);
    let clients = (0..100).map(|i| {
        let url = url.clone();
        tokio::spawn(async move {
            let client = Socket::new();
            bounded("dial", client.dial(&url)).await.expect("dial");
            let me = format!("client-{i}");
            bounded("send", client.send(me.clone()))
                .await
                .expect("send");
            let reply = recv(&client, "reply").await;
            assert_eq!(
                reply.content,
                Bytes::from(me),
                "client {i} got another's reply"
            );
            client.close().await;
        })
    });
    for c in futures_util::future::join_all(clients).await {
        c.expect("client task");
    }
    assert_eq!(server.stats().received, 100);
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_101st_dial_is_refused_with_a_clear_error() {
    let server = Socket::builder().max_connections(100).build();
    let url = bounded("listen", server.listen("tcp://127.0.0.1:0"))
        .await
        .expect("listen");
    let mut clients = Vec::new();
    for _ in 0..100 {
        let c = Socket::new();
        bounded("dial", c.dial(&url))
            .await
            .expect("dial under the limit");
        clients.push(c);
    }
    let extra = Socket::new();
    let err = bounded("101st dial", extra.dial(&url))
        .await
        .expect_err("the 101st connection must be refused");
    assert!(
        matches!(&err, SocketError::TooManyConnections { url: u, .. } if *u == url.to_string()),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("connection limit"), "{text}");
    assert!(text.contains("max_connections"), "{text}");

    // A place frees up once a peer leaves.
    clients.pop().expect("a client").close().await;
    until("the server sees the peer leave", || {
        server.peers().len() == 99
    })
    .await;
    let mut admitted = None;
    for _ in 0..100 {
        match bounded("redial", extra.dial(&url)).await {
            Ok(id) => {
                admitted = Some(id);
                break;
            }
            // The connection is gone from the peer table a moment before it
            // is gone from the endpoint's count.
            Err(SocketError::TooManyConnections { .. }) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("redial: {e}"),
        }
    }
    assert!(admitted.is_some(), "a place never freed up");
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dials_at_the_same_time_never_exceed_the_limit() {
    let server = Socket::builder().max_connections(10).build();
    let url = server.listen("tcp://127.0.0.1:0").await.expect("listen");
    let dials = (0..30).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let c = Socket::new();
            let r = bounded("dial", c.dial(&url)).await;
            (c, r)
        })
    });
    let mut admitted = 0;
    let mut kept = Vec::new();
    for d in futures_util::future::join_all(dials).await {
        let (c, r) = d.expect("task");
        match r {
            Ok(_) => admitted += 1,
            Err(SocketError::TooManyConnections { .. }) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
        kept.push(c);
    }
    assert_eq!(admitted, 10);
    until("the server has its ten peers", || {
        server.peers().len() == 10
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_socket_does_not_dial_beyond_its_own_limit() {
    let a = Socket::new();
    let url_a = a.listen(inproc("limit-a")).await.expect("listen");
    let b = Socket::new();
    let url_b = b.listen(inproc("limit-b")).await.expect("listen");
    let client = Socket::builder().max_connections(1).build();
    bounded("dial a", client.dial(&url_a))
        .await
        .expect("dial a");
    let err = bounded("dial b", client.dial(&url_b))
        .await
        .expect_err("over the limit");
    assert!(
        matches!(err, SocketError::AtLimit { max: 1, .. }),
        "{err:?}"
    );
}

/// A receiver that reads slowly: tiny window, one-message queue.
fn slow_receiver() -> Socket {
    Socket::builder()
        .recv_queue(1)
        .config(ConnectionConfig::new().stream_window(1024))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_send_drops_and_counts_when_the_peer_does_not_read() {
    let receiver = slow_receiver();
    let url = receiver.listen("tcp://127.0.0.1:0").await.expect("listen");
    let sender = Socket::builder().send_mode(SendMode::BestEffort).build();
    let peer = bounded("dial", sender.dial(&url)).await.expect("dial");
    let msg = Bytes::from(vec![7u8; 512]);
    let mut sent = 0u64;
    let mut full = 0u64;
    for _ in 0..2000 {
        match sender.send_to(peer, msg.clone()).await {
            Ok(()) => sent += 1,
            Err(SocketError::QueueFull {
                peer: p, dropped, ..
            }) => {
                assert_eq!(p, peer);
                full += 1;
                assert_eq!(dropped, full, "the error carries the running count");
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert!(
        full > 0,
        "a peer that does not read must make best-effort sends drop"
    );
    assert!(
        sent > 0 && sent < 100,
        "only a window's worth goes out; sent {sent}"
    );
    assert_eq!(sender.stats().dropped, full);
    assert_eq!(sender.stats().sent, sent);
    // send (to one) drops the same way.
    let err = sender.send(msg.clone()).await.expect_err("still full");
    assert!(matches!(err, SocketError::QueueFull { .. }), "{err:?}");
    assert_eq!(sender.stats().dropped, full + 1);
    assert!(err.to_string().contains("not reading fast enough"), "{err}");

    // Nothing sent is lost: the receiver gets exactly what went out.
    for i in 0..sent {
        let m = recv(&receiver, "drain").await;
        assert_eq!(m.content.len(), 512, "message {i}");
    }
    let extra = tokio::time::timeout(QUIET, receiver.recv()).await;
    assert!(extra.is_err(), "dropped messages must not arrive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_send_waits_for_a_slow_reader_then_completes() {
    let receiver = slow_receiver();
    let url = receiver.listen("tcp://127.0.0.1:0").await.expect("listen");
    let sender = Socket::new();
    bounded("dial", sender.dial(&url)).await.expect("dial");
    let msg = Bytes::from(vec![1u8; 512]);
    let mut went = 0usize;
    let mut blocked = false;
    for _ in 0..64 {
        match tokio::time::timeout(QUIET, sender.send(msg.clone())).await {
            Ok(r) => {
                r.expect("send");
                went += 1;
            }
            Err(_) => {
                blocked = true;
                break;
            }
        }
    }
    assert!(blocked, "sends must wait while the receiver does not read");
    assert!(went <= 16, "{went} sends went through a 1 KiB window");

    let pending = tokio::spawn({
        let sender = sender.clone();
        let msg = msg.clone();
        async move { sender.send(msg).await }
    });
    tokio::time::sleep(QUIET).await;
    assert!(!pending.is_finished(), "the send must wait for the reader");
    for _ in 0..went {
        recv(&receiver, "read").await;
    }
    bounded("the waiting send", pending)
        .await
        .expect("task")
        .expect("send completes once the reader reads");
    recv(&receiver, "the last message").await;
    assert_eq!(sender.stats().dropped, 0);
}

/// A hub listening on `url` and `n` clients dialed to it, each with a task
/// counting what it receives.
async fn hub_with_clients(url: &str, n: usize) -> (Socket, Vec<Socket>, Arc<Vec<AtomicUsize>>) {
    let hub = Socket::new();
    let url = hub.listen(url).await.expect("listen");
    let counts: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
    let mut clients = Vec::new();
    for i in 0..n {
        let c = Socket::new();
        bounded("dial", c.dial(&url)).await.expect("dial");
        let counts = counts.clone();
        let r = c.clone();
        tokio::spawn(async move {
            while r.recv().await.is_ok() {
                counts[i].fetch_add(1, Ordering::Relaxed);
            }
        });
        clients.push(c);
    }
    until("every client joined", || hub.peers().len() == n).await;
    (hub, clients, counts)
}

#[tokio::test(start_paused = true)]
async fn send_all_reaches_every_peer_once() {
    let (hub, _clients, counts) = hub_with_clients(&inproc("all"), 5).await;
    let reached = bounded("send_all", hub.send_all("news"))
        .await
        .expect("send_all");
    assert_eq!(reached, 5);
    until("every client got it", || {
        counts.iter().all(|c| c.load(Ordering::Relaxed) == 1)
    })
    .await;
    tokio::time::sleep(QUIET).await;
    assert!(
        counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
        "exactly once each"
    );
    assert_eq!(hub.stats().sent, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_one_takes_four_peers_in_turn() {
    const N: usize = 400;
    let (hub, _clients, counts) = hub_with_clients("tcp://127.0.0.1:0", 4).await;
    let mut chosen = Vec::new();
    for i in 0..N {
        let peer = bounded("send", hub.send(format!("m{i}")))
            .await
            .expect("send");
        chosen.push(peer);
    }
    until("every message arrived", || {
        counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<usize>()
            == N
    })
    .await;
    for (i, c) in counts.iter().enumerate() {
        assert_eq!(c.load(Ordering::Relaxed), N / 4, "client {i}");
    }
    // In turn, not just evenly: four consecutive sends hit four peers.
    for w in chosen.chunks(4) {
        let distinct: HashSet<PeerId> = w.iter().copied().collect();
        assert_eq!(distinct.len(), 4, "{w:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn discard_mode_throws_away_and_counts() {
    let sink = Socket::builder().recv_mode(RecvMode::Discard).build();
    let url = sink.listen(inproc("discard")).await.expect("listen");
    let source = Socket::new();
    bounded("dial", source.dial(&url)).await.expect("dial");
    for i in 0..50 {
        bounded("send", source.send(format!("x{i}")))
            .await
            .expect("send");
    }
    until("every message discarded", || sink.stats().discarded == 50).await;
    assert_eq!(sink.stats().received, 0);
    let err = sink.recv().await.expect_err("no receiving");
    assert!(matches!(err, SocketError::ReceiveDisabled), "{err:?}");
    // A discarding socket still sends.
    let peer = sink.peers()[0];
    bounded("send back", sink.send_to(peer, "hello"))
        .await
        .expect("send");
    assert_eq!(&recv(&source, "from the sink").await.content[..], b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_receive_each_message_exactly_once() {
    const N: usize = 300;
    let receiver = Socket::new();
    let url = receiver.listen(inproc("many")).await.expect("listen");
    let (tx, mut rx) = mpsc::unbounded_channel();
    for task in 0..4 {
        let r = receiver.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(m) = r.recv().await {
                let _ = tx.send((task, m.content));
            }
        });
    }
    drop(tx);
    let senders: Vec<Socket> = (0..3).map(|_| Socket::new()).collect();
    for s in &senders {
        bounded("dial", s.dial(&url)).await.expect("dial");
    }
    for i in 0..N {
        bounded("send", senders[i % 3].send(format!("{i}")))
            .await
            .expect("send");
    }
    let mut seen = HashMap::new();
    for _ in 0..N {
        let (task, content) = bounded("receive", rx.recv()).await.expect("message");
        *seen.entry(content).or_insert(0) += 1;
        let _ = task;
    }
    assert_eq!(seen.len(), N);
    assert!(seen.values().all(|&n| n == 1));
    assert!(
        tokio::time::timeout(QUIET, rx.recv()).await.is_err(),
        "no message twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_peer_is_removed_after_its_messages_arrive() {
    let server = Socket::new();
    let url = server.listen("tcp://127.0.0.1:0").await.expect("listen");
    let mut events = server.peer_events();
    let client = Socket::new();
    bounded("dial", client.dial(&url)).await.expect("dial");
    let joined = match bounded("joined", events.recv()).await {
        Some(PeerEvent::Joined(p)) => p,
        other => panic!("expected a join, got {other:?}"),
    };
    for i in 0..20 {
        bounded("send", client.send(format!("{i}")))
            .await
            .expect("send");
    }
    bounded("client close", client.close()).await;
    assert!(matches!(
        bounded("left", events.recv()).await,
        Some(PeerEvent::Left(p)) if p == joined
    ));
    for i in 0..20 {
        let m = recv(&server, "message sent before leaving").await;
        assert_eq!(m.source, joined);
        assert_eq!(m.content, Bytes::from(format!("{i}")), "in order");
    }
    assert!(server.peers().is_empty());
    let err = server.send_to(joined, "late").await.expect_err("gone");
    assert!(
        matches!(err, SocketError::UnknownPeer(p) if p == joined),
        "{err:?}"
    );
    assert!(err.to_string().contains(&joined.to_string()), "{err}");
    let err = client.recv().await.expect_err("closed");
    assert!(matches!(err, SocketError::Closed), "{err:?}");
    server.close().await;
    assert_eq!(bounded("events end", events.recv()).await, None);
}

#[tokio::test(start_paused = true)]
async fn sending_without_peers_waits_or_fails_by_mode() {
    let best_effort = Socket::builder().send_mode(SendMode::BestEffort).build();
    let err = best_effort.send("x").await.expect_err("no peers");
    assert!(matches!(err, SocketError::NoPeers), "{err:?}");
    let err = best_effort.send_all("x").await.expect_err("no peers");
    assert!(matches!(err, SocketError::NoPeers), "{err:?}");

    let blocking = Socket::new();
    let url = blocking.listen(inproc("wait")).await.expect("listen");
    let waiting = tokio::spawn({
        let s = blocking.clone();
        async move { s.send("first").await }
    });
    tokio::time::sleep(QUIET).await;
    assert!(!waiting.is_finished(), "a blocking send waits for a peer");
    let late = Socket::new();
    bounded("dial", late.dial(&url)).await.expect("dial");
    bounded("the waiting send", waiting)
        .await
        .expect("task")
        .expect("sent once a peer joined");
    assert_eq!(&recv(&late, "first").await.content[..], b"first");
}

#[tokio::test(start_paused = true)]
async fn closing_ends_waiting_receives_and_sends() {
    let socket = Socket::new();
    socket.listen(inproc("close")).await.expect("listen");
    let receiving = tokio::spawn({
        let s = socket.clone();
        async move { s.recv().await }
    });
    let sending = tokio::spawn({
        let s = socket.clone();
        async move { s.send("nobody").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    bounded("close", socket.close()).await;
    let r = bounded("recv", receiving).await.expect("task");
    assert!(matches!(r, Err(SocketError::Closed)), "{r:?}");
    let s = bounded("send", sending).await.expect("task");
    assert!(matches!(s, Err(SocketError::Closed)), "{s:?}");
    let err = socket.dial("inproc://nowhere").await.expect_err("closed");
    assert!(matches!(err, SocketError::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_works_over_every_transport() {
    let dir = Dir::new("socket");
    let pki = TestPki::new("socket ca");
    let urls = [
        "tcp://127.0.0.1:0".to_string(),
        format!("unix://{}", dir.0.join("s.sock").display()),
        inproc("echo"),
        "tls://127.0.0.1:0".to_string(),
    ];
    for url in urls {
        let tls = url.starts_with("tls");
        let mut server = Socket::builder();
        let mut client = Socket::builder();
        if tls {
            server = server.tls(pki.server_tls());
            client = client.tls(pki.client_tls());
        }
        let (server, client) = (server.build(), client.build());
        let bound = bounded("listen", server.listen(url.as_str()))
            .await
            .unwrap_or_else(|e| panic!("listen {url}: {e}"));
        serve_echo(&server, 1);
        bounded("dial", client.dial(&bound))
            .await
            .unwrap_or_else(|e| panic!("dial {bound}: {e}"));
        bounded("send", client.send("ping")).await.expect("send");
        assert_eq!(&recv(&client, "echo").await.content[..], b"ping", "{url}");
        client.close().await;
        server.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_a_plain_plexus_server_is_not_a_socket() {
    let server = plexus::Server::bind("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("server");
    let socket = Socket::new();
    let err = bounded("dial", socket.dial(server.local_url()))
        .await
        .expect_err("not a socket");
    assert!(matches!(err, SocketError::NotASocket { .. }), "{err:?}");
    // And a plain connection to a socket is refused in the handshake.
    let s = Socket::new();
    let url = s.listen("tcp://127.0.0.1:0").await.expect("listen");
    let refused = bounded("connect", plexus::Connection::connect(&url)).await;
    assert!(refused.is_err(), "a socket takes only sockets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_peer_gets_one_pipe_per_connection_and_only_from_the_dialer() {
    use plexus::socket::{PIPE_OP, SOCKET_HELLO};
    use plexus::{CallError, CallOptions, Endpoint};

    let socket = Socket::new();
    let url = socket.listen(inproc("rogue")).await.expect("listen");
    // A hand-made dialer that speaks the socket's handshake.
    let rogue = Endpoint::builder().hello_data(SOCKET_HELLO).build();
    let conn = bounded("connect", rogue.connect(&url))
        .await
        .expect("connect");
    let (mut out, _first) = bounded("pipe", conn.bidi(PIPE_OP, CallOptions::new()))
        .await
        .expect("first pipe");
    until("the socket admitted the peer", || socket.peers().len() == 1).await;
    let (_out2, mut second) = bounded("pipe", conn.bidi(PIPE_OP, CallOptions::new()))
        .await
        .expect("second pipe opens");
    match bounded("second pipe answer", second.recv()).await {
        Some(Err(CallError::Rejected(r))) => {
            assert!(r.message().contains("one pipe per connection"), "{r}")
        }
        other => panic!("a second pipe must be rejected, got {other:?}"),
    }
    // The first pipe is unharmed. (A plain message: envelope byte 0.)
    bounded("send", out.send(Bytes::from_static(b"\x00still here")))
        .await
        .expect("send");
    assert_eq!(
        &recv(&socket, "first pipe").await.content[..],
        b"still here"
    );
    assert_eq!(socket.peers().len(), 1);

    // A listener the socket dialed may not open a pipe back.
    let host = Endpoint::builder()
        .accept(|_| Ok(Bytes::from_static(SOCKET_HELLO)))
        .serve(
            plexus::Router::new().bidi(PIPE_OP, |_ctx, _in, _out| async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }),
        )
        .build();
    let host_url = host
        .listen(inproc("rogue-host"))
        .await
        .expect("listen")
        .local_url()
        .clone();
    bounded("dial", socket.dial(&host_url)).await.expect("dial");
    let back = eventually("the dialed connection", || host.connections().pop()).await;
    let (_o, mut backwards) = bounded("pipe back", back.bidi(PIPE_OP, CallOptions::new()))
        .await
        .expect("opens");
    match bounded("backwards pipe answer", backwards.recv()).await {
        Some(Err(CallError::Rejected(r))) => {
            assert!(r.message().contains("dialing side"), "{r}")
        }
        other => panic!("a pipe from the listener must be rejected, got {other:?}"),
    }
    socket.close().await;
}

// -- raw server --

/// What the raw callbacks saw.
#[derive(Default)]
struct Seen {
    connected: Vec<RawId>,
    closed: Vec<(RawId, RawCloseReason)>,
    closed_by_connect_callback: Vec<RawCloseReason>,
    writes_ok: usize,
}

async fn echo_server(url: &str, seen: Arc<Mutex<Seen>>) -> RawServer {
    let (s1, s2, s3) = (seen.clone(), seen.clone(), seen);
    RawServer::bind(url)
        .on_connect(move |conn| {
            s1.lock().unwrap().connected.push(conn.id());
            let s = s1.clone();
            move |reason: &RawCloseReason| {
                s.lock()
                    .unwrap()
                    .closed_by_connect_callback
                    .push(reason.clone())
            }
        })
        .on_bytes(move |conn, bytes| {
            let written = conn.write(bytes);
            let s = s2.clone();
            tokio::spawn(async move {
                if written.await.is_ok() {
                    s.lock().unwrap().writes_ok += 1;
                }
            });
        })
        .on_close(move |id, reason| s3.lock().unwrap().closed.push((id, reason.clone())))
        .start()
        .await
        .expect("raw server")
}

async fn echo_round_trip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S) {
    bounded("write", stream.write_all(b"hello raw"))
        .await
        .expect("write");
    let mut got = vec![0u8; 9];
    bounded("read", stream.read_exact(&mut got))
        .await
        .expect("read");
    assert_eq!(&got, b"hello raw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_server_echoes_and_reports_connect_write_and_close_over_tcp_and_unix() {
    let dir = Dir::new("raw");
    for url in [
        "tcp://127.0.0.1:0".to_string(),
        format!("unix://{}", dir.0.join("raw.sock").display()),
    ] {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let server = echo_server(&url, seen.clone()).await;
        let local = server.local_url().clone();
        if url.starts_with("tcp") {
            let addr = local.socket_addr().expect("tcp address");
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            echo_round_trip(&mut c).await;
            drop(c);
        } else {
            let path = local.path().expect("unix path").to_path_buf();
            let mut c = tokio::net::UnixStream::connect(path)
                .await
                .expect("connect");
            echo_round_trip(&mut c).await;
            drop(c);
        }
        until("on_close after the client left", || {
            seen.lock().unwrap().closed.len() == 1
        })
        .await;
        until("the echo's write completion", || {
            seen.lock().unwrap().writes_ok >= 1
        })
        .await;
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.connected.len(), 1, "{url}");
            assert_eq!(seen.closed[0].0, seen.connected[0]);
            assert_eq!(seen.closed[0].1, RawCloseReason::PeerClosed, "{url}");
            assert_eq!(
                seen.closed_by_connect_callback,
                vec![RawCloseReason::PeerClosed]
            );
        }
        assert_eq!(server.stats().open, 0);
        bounded("stop", server.stop()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_writes_report_completion_and_fail_after_close() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = RawServer::bind("tcp://127.0.0.1:0")
        .on_connect(move |conn| {
            let _ = tx.send(conn);
            |_: &RawCloseReason| {}
        })
        .start()
        .await
        .expect("start");
    let addr = server.local_url().socket_addr().expect("addr");
    let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let conn = bounded("on_connect", rx.recv()).await.expect("handle");
    bounded("write", conn.write("first"))
        .await
        .expect("written");
    bounded("write", conn.write(Bytes::from_static(b" second")))
        .await
        .expect("written");
    let mut got = vec![0u8; 12];
    bounded("read", client.read_exact(&mut got))
        .await
        .expect("read");
    assert_eq!(&got, b"first second");
    conn.close();
    let err = conn.write("late").await.expect_err("closed");
    assert!(
        matches!(err, RawError::Closed { id, .. } if id == conn.id()),
        "{err:?}"
    );
    let mut rest = Vec::new();
    let n = bounded("eof", client.read_to_end(&mut rest))
        .await
        .expect("eof");
    assert_eq!(n, 0, "closing shuts the stream");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_connection_limit_closes_the_extra_connection() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let server = {
        let s = seen.clone();
        RawServer::bind("tcp://127.0.0.1:0")
            .max_connections(2)
            .on_connect(move |conn| {
                s.lock().unwrap().connected.push(conn.id());
                |_: &RawCloseReason| {}
            })
            .start()
            .await
            .expect("start")
    };
    let addr = server.local_url().socket_addr().expect("addr");
    let _a = tokio::net::TcpStream::connect(addr).await.expect("a");
    let _b = tokio::net::TcpStream::connect(addr).await.expect("b");
    until("two admitted", || seen.lock().unwrap().connected.len() == 2).await;
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("c");
    let mut buf = [0u8; 1];
    let n = bounded("refused connection ends", c.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(server.stats().refused, 1);
    assert_eq!(server.stats().open, 2);
    assert_eq!(seen.lock().unwrap().connected.len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_stop_closes_connections_and_a_panicking_callback_closes_only_its_own() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let server = {
        let (s1, s2) = (seen.clone(), seen.clone());
        RawServer::bind(inproc("raw"))
            .on_connect(move |conn| {
                s1.lock().unwrap().connected.push(conn.id());
                |_: &RawCloseReason| {}
            })
            .on_bytes(|conn, bytes| {
                if &bytes[..] == b"boom" {
                    panic!("told to panic");
                }
                let _ = conn.queue(bytes);
            })
            .on_close(move |id, reason| s2.lock().unwrap().closed.push((id, reason.clone())))
            .start()
            .await
            .expect("start")
    };
    let url = server.local_url().to_string();
    let dial = || async {
        let c = plexus::transport::dial(
            &plexus::transport::Url::parse(&url).expect("url"),
            &plexus::transport::TransportConfig::new(),
        )
        .await
        .expect("dial");
        c.stream.split()
    };
    let (mut rd1, mut wr1) = dial().await;
    let (mut rd2, mut wr2) = dial().await;
    until("both connected", || {
        seen.lock().unwrap().connected.len() == 2
    })
    .await;
    wr1.write_all(b"boom").await.expect("write");
    let mut buf = [0u8; 4];
    let n = bounded("panicked connection ends", rd1.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    wr2.write_all(b"fine").await.expect("write");
    bounded("the other still echoes", rd2.read_exact(&mut buf))
        .await
        .expect("read");
    assert_eq!(&buf, b"fine");
    bounded("stop", server.stop()).await;
    let n = bounded("stopped connection ends", rd2.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    let closed = seen.lock().unwrap().closed.clone();
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(closed.iter().any(
        |(_, r)| matches!(r, RawCloseReason::CallbackPanicked(m) if m.contains("told to panic"))
    ));
    assert!(closed.iter().any(|(_, r)| *r == RawCloseReason::Stopped));
}

#[tokio::test(start_paused = true)]
async fn raw_write_backlog_is_bounded_and_writable_waits_for_the_reader() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = RawServer::bind(inproc("backlog"))
        .write_backlog(1024)
        .on_connect(move |conn| {
            let _ = tx.send(conn);
            |_: &RawCloseReason| {}
        })
        .start()
        .await
        .expect("start");
    let c = plexus::transport::dial(
        server.local_url(),
        &plexus::transport::TransportConfig::new(),
    )
    .await
    .expect("dial");
    let (mut rd, _wr) = c.stream.split();
    let conn = bounded("on_connect", rx.recv()).await.expect("handle");
    // More than the in-process pipe holds, so the writer stalls mid-way.
    const BIG: usize = 1024 * 1024;
    let big = conn.write(vec![5u8; BIG]);
    let err = conn.write("more").await.expect_err("over the backlog");
    assert!(
        matches!(err, RawError::Backlog { limit: 1024, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("writable()"), "{err}");
    let writable = tokio::spawn({
        let conn = conn.clone();
        async move { conn.writable().await }
    });
    tokio::time::sleep(QUIET).await;
    assert!(
        !writable.is_finished(),
        "nothing drains while the peer does not read"
    );
    let mut got = vec![0u8; BIG];
    bounded("read it all", rd.read_exact(&mut got))
        .await
        .expect("read");
    bounded("write completion", big).await.expect("written");
    bounded("writable", writable)
        .await
        .expect("task")
        .expect("room again");
    assert_eq!(conn.queued_bytes(), 0);
    server.stop().await;
}

/// A socket listening on a fresh inproc URL.
async fn listening(tag: &str) -> (Socket, String) {
    let url = inproc(tag);
    let socket = Socket::new();
    bounded("listen", socket.listen(url.as_str()))
        .await
        .expect("listen");
    (socket, url)
}

/// Closes `old`, waits until `client` no longer has it as a peer, and
/// listens on its URL with a new socket.
async fn replace_listener(old: Socket, url: &str, client: &Socket) -> Socket {
    let before = client.peers();
    old.close().await;
    drop(old);
    until("the peer is gone", || {
        !client.peers().iter().any(|p| before.contains(p))
    })
    .await;
    let new = Socket::new();
    bounded("listen again", async {
        while new.listen(url).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    new
}

#[tokio::test(start_paused = true)]
async fn a_redialing_socket_comes_back_when_its_peer_returns() {
    // The listener goes away and a new one takes its address: a socket
    // built with `redial` dials again by itself, as a new peer.
    let (first, url) = listening("redial").await;
    serve_echo(&first, 1);
    let client = Socket::builder()
        .redial(
            plexus::retry::Backoff::new()
                .initial(Duration::from_millis(10))
                .max(Duration::from_millis(100)),
        )
        .build();
    let old = bounded("dial", client.dial(url.as_str()))
        .await
        .expect("dial");
    bounded("send", client.send("one")).await.expect("send");
    assert_eq!(&recv(&client, "echo one").await.content[..], b"one");

    let second = replace_listener(first, &url, &client).await;
    serve_echo(&second, 1);
    let new = eventually("redialed", || client.peers().first().copied()).await;
    assert_ne!(new, old, "a new connection is a new peer");
    bounded("send", client.send("two")).await.expect("send");
    assert_eq!(&recv(&client, "echo two").await.content[..], b"two");

    // Closing the client stops the redialing for good.
    client.close().await;
    second.close().await;
}

#[tokio::test(start_paused = true)]
async fn a_socket_without_redial_stays_without_the_peer() {
    let (first, url) = listening("no-redial").await;
    let client = Socket::new();
    bounded("dial", client.dial(url.as_str()))
        .await
        .expect("dial");
    let second = replace_listener(first, &url, &client).await;
    tokio::time::sleep(QUIET).await;
    assert!(client.peers().is_empty(), "nothing redials by default");
    assert_eq!(second.peers(), Vec::<PeerId>::new());
    client.close().await;
    second.close().await;
}
