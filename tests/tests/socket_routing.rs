//! Message sockets across switches, through the public API (multisocket's
//! forwarding): a message crosses switches, its reply retraces the path
//! they recorded, a TTL stops a loop of switches, and a negotiator on every
//! connection decides from what the peer offered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use plexus::socket::SocketBuilder;
use plexus::{
    socket::{Socket, SocketError},
    Bytes,
};
use plexus_tests::{bounded, until};

fn inproc(name: &str) -> String {
    format!("inproc://{name}-{}", plexus::NodeId::random())
}

/// Forwards everything `from` receives through `to` (the same socket, or
/// the other side of a two-socket switch), until `from` closes.
fn switch(from: Socket, to: Socket) {
    tokio::spawn(async move {
        while let Ok(msg) = from.recv().await {
            if let Err(e) = to.forward(msg).await {
                panic!("forwarding failed: {e}");
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_retraces_the_path_across_two_switches() {
    // clients ─ s1 (front and back sockets) ─ s2 (one socket, two peers) ─ server
    let server = Socket::new();
    let server_url = server.listen(inproc("server")).await.expect("listen");
    let s2 = Socket::new();
    let s2_url = s2.listen(inproc("s2")).await.expect("listen");
    s2.dial(&server_url).await.expect("s2 dials the server");
    switch(s2.clone(), s2.clone());
    let (front1, back1) = (Socket::new(), Socket::new());
    let s1_url = front1.listen(inproc("s1")).await.expect("listen");
    back1.dial(&s2_url).await.expect("s1 dials s2");
    switch(front1.clone(), back1.clone());
    switch(back1.clone(), front1.clone());
    until("s2 has both its peers", || s2.peers().len() == 2).await;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let answering = server.clone();
    tokio::spawn(async move {
        while let Ok(msg) = answering.recv().await {
            log.lock().expect("log").push(msg.route.clone());
            let mut answer = b"re: ".to_vec();
            answer.extend_from_slice(&msg.content);
            answering.reply(&msg, answer).await.expect("reply");
        }
    });

    // Two clients of the same switch: each reply finds its own way back.
    let clients = [Socket::new(), Socket::new()];
    for c in &clients {
        c.dial(&s1_url).await.expect("client dials s1");
    }
    until("s1 has both clients", || front1.peers().len() == 2).await;
    for (i, c) in clients.iter().enumerate() {
        c.send(format!("ping {i}")).await.expect("send");
    }
    for (i, c) in clients.iter().enumerate() {
        let reply = bounded("the reply", c.recv()).await.expect("a reply");
        assert_eq!(reply.content, Bytes::from(format!("re: ping {i}")));
        assert_eq!(reply.source, c.peers()[0], "from the switch it dialed");
        assert_eq!(reply.route.path.len(), 2, "two switches on the way back");
        assert!(reply.route.destination.is_empty(), "arrived");
    }
    let routes = seen.lock().expect("log").clone();
    assert_eq!(routes.len(), 2);
    for route in routes {
        assert_eq!(
            route.path.len(),
            2,
            "two hops recorded on the way: {route:?}"
        );
        assert_eq!(route.ttl, plexus::socket::DEFAULT_TTL - 2);
    }
    // A reply is answered on the socket that received the message.
    let probe = Socket::new();
    probe.dial(&s1_url).await.expect("dial");
    probe.send("who").await.expect("send");
    let reply = bounded("reply", probe.recv()).await.expect("reply");
    let err = clients[0]
        .reply(&reply, "x")
        .await
        .expect_err("not its message");
    assert!(matches!(err, SocketError::UnknownPeer(_)), "{err}");
}

/// A ring of three switches, each forwarding what it hears with `forward`
/// (or `forward_all`); returns how many messages they received and how
/// many TTL expiries they saw.
async fn ring(all: bool) -> (usize, usize, u64) {
    let sockets: Vec<Socket> = (0..3)
        .map(|i| {
            let b = SocketBuilder::default();
            // The first one starts the message with a short life.
            if i == 0 { b.ttl(6) } else { b }.build()
        })
        .collect();
    let mut urls = Vec::new();
    for s in &sockets {
        urls.push(s.listen(inproc("ring")).await.expect("listen"));
    }
    for i in 0..3 {
        sockets[i].dial(&urls[(i + 1) % 3]).await.expect("dial");
    }
    for s in &sockets {
        until("two peers each", || s.peers().len() == 2).await;
    }
    let received = Arc::new(AtomicUsize::new(0));
    let expired = Arc::new(AtomicUsize::new(0));
    for s in &sockets {
        let (s, received, expired) = (s.clone(), received.clone(), expired.clone());
        tokio::spawn(async move {
            while let Ok(msg) = s.recv().await {
                received.fetch_add(1, Ordering::SeqCst);
                let sent = if all {
                    s.forward_all(msg).await.map(|_| ())
                } else {
                    s.forward(msg).await.map(|_| ())
                };
                match sent {
                    Ok(()) => {}
                    Err(SocketError::TtlExpired { hops, .. }) => {
                        assert_eq!(hops, 6, "the path it made");
                        expired.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        });
    }
    sockets[0].send("round and round").await.expect("send");
    until("the TTL runs out", || expired.load(Ordering::SeqCst) == 1).await;
    let stats: u64 = sockets.iter().map(|s| s.stats().expired).sum();
    for s in &sockets {
        s.close().await;
    }
    (
        received.load(Ordering::SeqCst),
        expired.load(Ordering::SeqCst),
        stats,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_stops_a_loop_of_switches() {
    // Sent with TTL 6: five forwards, the sixth receiver drops it.
    assert_eq!(ring(false).await, (6, 1, 1));
    assert_eq!(ring(true).await, (6, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negotiator_decides_on_every_connection_from_what_the_peer_offered() {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    let service = Socket::builder()
        .offer("svc/1")
        .negotiate(move |n| {
            log.lock().expect("log").push(n.dialed);
            if n.offer.starts_with(b"client/1") {
                Ok(())
            } else {
                Err(format!(
                    "wants client/1, got {}",
                    String::from_utf8_lossy(n.offer)
                ))
            }
        })
        .build();
    let url = service.listen(inproc("negotiated")).await.expect("listen");

    let good = Socket::builder()
        .offer("client/1")
        .negotiate(|n| {
            assert!(n.dialed);
            (n.offer == b"svc/1")
                .then_some(())
                .ok_or_else(|| "not the service".to_owned())
        })
        .build();
    good.dial(&url).await.expect("agreed");
    good.send("hello").await.expect("send");
    let got = bounded("recv", service.recv()).await.expect("recv");
    assert_eq!(&got.content[..], b"hello");

    let old = Socket::builder().offer("client/0").build();
    let err = old.dial(&url).await.expect_err("refused by the service");
    assert!(
        matches!(&err, SocketError::Negotiation { by_peer: true, reason, .. } if reason == "wants client/1, got client/0"),
        "{err}"
    );

    let picky = Socket::builder()
        .offer("client/1")
        .negotiate(|n| {
            (n.offer == b"svc/2")
                .then_some(())
                .ok_or_else(|| format!("wants svc/2, got {}", String::from_utf8_lossy(n.offer)))
        })
        .build();
    let err = picky.dial(&url).await.expect_err("refused by itself");
    assert!(
        matches!(&err, SocketError::Negotiation { by_peer: false, reason, .. } if reason == "wants svc/2, got svc/1"),
        "{err}"
    );
    assert_eq!(service.peers().len(), 1, "only the agreed peer");
    assert_eq!(*asked.lock().expect("log"), vec![false, false, false]);
}
