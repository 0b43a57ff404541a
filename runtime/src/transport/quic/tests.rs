use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::*;
use crate::transport::tcp::tests::{exchange, listen_dial_exchange, STEP};
use crate::transport::tls::tests::{dial_and_accept, refused, with_tls, TestPki};
use crate::transport::{dial, listen, Listener, Scheme, TlsConfig};

async fn quic_listener(config: &TransportConfig) -> Listener {
    listen(&Url::parse("quic://127.0.0.1:0").expect("url"), config)
        .await
        .expect("listen")
}

/// A mesh-node config: listens and dials with one certificate from `pki`.
fn node(pki: &TestPki) -> TlsConfig {
    pki.server_tls()
        .with_trust_roots(pki.ca_pem.as_bytes())
        .expect("trust roots")
}

/// A raw quinn connection to `listener`, trusting `pki`, with no stream yet,
/// and what the listener accepted meanwhile.
async fn raw_connection(listener: &mut Listener, pki: &TestPki) -> (quinn::Connection, Connected) {
    let mut crypto = (**pki.client_tls().client_config().expect("client side")).clone();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(crypto).expect("quic crypto");
    let endpoint = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .expect("client endpoint");
    let addr = listener.local_url().socket_addr().expect("ip address");
    let connecting = endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            addr,
            "127.0.0.1",
        )
        .expect("connect");
    let (connection, accepted) =
        timeout(STEP, async { tokio::join!(connecting, listener.accept()) })
            .await
            .expect("within the step bound");
    (connection.expect("handshake"), accepted.expect("accept"))
}

#[tokio::test]
async fn quic_carries_bytes_both_ways() {
    let pki = TestPki::new("quic CA");
    let local = listen_dial_exchange("quic://127.0.0.1:0", &with_tls(node(&pki))).await;
    assert_eq!(local.scheme(), Scheme::Quic);
    assert_ne!(local.port(), Some(0), "port 0 is replaced by the real port");
}

#[tokio::test]
async fn quic_over_ipv6_and_by_host_name() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipping: this machine has no IPv6 loopback");
        return;
    }
    let pki = TestPki::new("quic v6 CA");
    let local = listen_dial_exchange("quic://[::1]:0", &with_tls(node(&pki))).await;
    assert!(local.to_string().starts_with("quic://[::1]:"), "{local}");
    // `localhost` may resolve to both families while the listener has one:
    // the dialer races them and the live one wins at once.
    let mut listener = quic_listener(&with_tls(node(&pki))).await;
    let port = listener.local_url().port().expect("port");
    let by_name = Url::parse(&format!("quic://localhost:{port}")).expect("url");
    let dialer = with_tls(node(&pki));
    let (dialed, accepted) = timeout(STEP, async {
        tokio::join!(dial(&by_name, &dialer), listener.accept())
    })
    .await
    .expect("within the step bound");
    exchange(dialed.expect("dial"), accepted.expect("accept")).await;
}

#[tokio::test]
async fn remote_names_the_peer_on_both_sides() {
    let pki = TestPki::new("quic CA");
    let mut listener = quic_listener(&with_tls(pki.server_tls())).await;
    let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(pki.client_tls())).await;
    assert_eq!(
        dialed.expect("dial").remote,
        listener.local_url().to_string()
    );
    let accepted = accepted.expect("accept").remote;
    assert!(accepted.starts_with("quic://127.0.0.1:"), "{accepted}");
}

#[tokio::test]
async fn client_trusting_another_ca_is_refused() {
    let pki = TestPki::new("quic CA");
    let stranger = TestPki::new("stranger CA");
    let mut listener = quic_listener(&with_tls(pki.server_tls())).await;
    let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(stranger.client_tls())).await;
    let err = dialed.expect_err("server certificate is not trusted");
    assert!(matches!(err, TransportError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("quic://127.0.0.1:"), "{err}");
    assert!(
        matches!(accepted, Err(TransportError::Tls { .. })),
        "{accepted:?}"
    );
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_from_the_ca() {
    let pki = TestPki::new("quic mtls CA");
    let stranger = TestPki::new("stranger CA");
    let mut listener = quic_listener(&with_tls(pki.strict_server_tls())).await;

    let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(pki.client_tls())).await;
    assert!(
        matches!(accepted, Err(TransportError::Tls { .. })),
        "{accepted:?}"
    );
    assert!(refused(dialed).await);

    let id = stranger.client();
    let intruder = pki
        .client_tls()
        .with_client_cert(id.cert_pem.as_bytes(), id.key_pem.as_bytes())
        .expect("client cert");
    let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(intruder)).await;
    assert!(
        matches!(accepted, Err(TransportError::Tls { .. })),
        "{accepted:?}"
    );
    assert!(refused(dialed).await);

    // The listener goes on, and a member is served.
    let member = with_tls(pki.client_tls_with_cert());
    let (dialed, accepted) = dial_and_accept(&mut listener, &member).await;
    exchange(dialed.expect("dial"), accepted.expect("accept")).await;
}

#[tokio::test]
async fn a_dialer_that_opens_no_stream_times_out_without_stalling_others() {
    let pki = TestPki::new("quic CA");
    let config = TransportConfig {
        handshake_timeout: Duration::from_millis(300),
        ..with_tls(pki.server_tls())
    };
    let mut listener = quic_listener(&config).await;
    let (_connection, idle) = raw_connection(&mut listener, &pki).await;
    let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(pki.client_tls())).await;
    exchange(dialed.expect("dial"), accepted.expect("accept")).await;
    let (mut read, mut write) = idle.stream.split();
    let mut byte = [0u8; 1];
    let err = timeout(STEP, read.read(&mut byte))
        .await
        .expect("timeout reported within the step bound")
        .expect_err("the idle dialer times out");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(err.to_string().contains("opened no stream"), "{err}");
    let err = write
        .write_all(b"x")
        .await
        .expect_err("no stream to write to");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
}

#[tokio::test]
async fn a_dialer_gets_one_stream_only() {
    let pki = TestPki::new("quic CA");
    let mut listener = quic_listener(&with_tls(pki.server_tls())).await;
    let (connection, accepted) = raw_connection(&mut listener, &pki).await;
    let (mut send, _recv) = connection.open_bi().await.expect("first stream");
    send.write_all(b"hello").await.expect("write");
    // The listener granted one stream; a second never opens.
    let second = timeout(Duration::from_millis(300), connection.open_bi()).await;
    assert!(second.is_err(), "a second stream was granted");
    assert!(
        timeout(Duration::from_millis(100), connection.open_uni())
            .await
            .is_err(),
        "a unidirectional stream was granted"
    );
    let (mut read, _write) = accepted.stream.split();
    let mut buf = [0u8; 5];
    read.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"hello");
}

#[tokio::test]
async fn stray_datagrams_do_not_disturb_the_listener() {
    let pki = TestPki::new("quic CA");
    let mut listener = quic_listener(&with_tls(pki.server_tls())).await;
    let addr = listener.local_url().socket_addr().expect("ip address");
    let stray = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp socket");
    for seed in 0..64u32 {
        let datagram: Vec<u8> = (0..1200u32)
            .map(|i| (i.wrapping_mul(seed.wrapping_add(1).wrapping_mul(2_654_435_761)) >> 9) as u8)
            .collect();
        stray.send_to(&datagram, addr).await.expect("send");
    }
    let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(pki.client_tls())).await;
    exchange(dialed.expect("dial"), accepted.expect("accept")).await;
}

#[tokio::test]
async fn the_last_bytes_before_a_close_arrive() {
    let pki = TestPki::new("quic CA");
    let mut listener = quic_listener(&with_tls(pki.server_tls())).await;
    let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(pki.client_tls())).await;
    let (mut dial_read, mut dial_write) = dialed.expect("dial").stream.split();
    dial_write.write_all(b"hi").await.expect("write");
    let (mut read, mut write) = accepted.expect("accept").stream.split();
    let mut buf = [0u8; 2];
    read.read_exact(&mut buf).await.expect("read");
    // Write a lot, shut down and drop everything at once, as a listener does
    // after a refusal: the dialer still gets every byte, then end-of-file.
    let payload: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 253) as u8).collect();
    let sent = payload.clone();
    let closer = tokio::spawn(async move {
        write.write_all(&sent).await.expect("write");
        write.shutdown().await.expect("shutdown");
        drop((read, write));
    });
    let mut received = Vec::new();
    timeout(STEP, dial_read.read_to_end(&mut received))
        .await
        .expect("within the step bound")
        .expect("clean end of stream");
    timeout(STEP, closer)
        .await
        .expect("within the step bound")
        .expect("closer");
    assert!(
        received == payload,
        "got {} of {} bytes",
        received.len(),
        payload.len()
    );
}

#[tokio::test]
async fn dialing_where_nothing_listens_fails_within_the_handshake_timeout() {
    let pki = TestPki::new("quic CA");
    let port = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.local_addr().expect("addr").port()
    };
    let url = Url::parse(&format!("quic://127.0.0.1:{port}")).expect("url");
    let client = pki
        .client_tls()
        .handshake_timeout(Duration::from_millis(300));
    let err = timeout(STEP, dial(&url, &with_tls(client)))
        .await
        .expect("within the step bound")
        .expect_err("nothing listens");
    assert!(err.to_string().contains(&url.to_string()), "{err}");
}

#[tokio::test]
async fn missing_tls_config_is_named_at_listen_and_dial() {
    let url = Url::parse("quic://127.0.0.1:0").expect("url");
    let err = listen(&url, &TransportConfig::new())
        .await
        .expect_err("no server config");
    assert!(
        matches!(err, TransportError::TlsNotConfigured { .. }),
        "{err}"
    );
    let pki = TestPki::new("half CA");
    let err = listen(&url, &with_tls(pki.client_tls()))
        .await
        .expect_err("client side only");
    assert!(err.to_string().contains("server certificate"), "{err}");
    let err = dial(
        &Url::parse("quic://127.0.0.1:1").expect("url"),
        &TransportConfig::new(),
    )
    .await
    .expect_err("no client config");
    assert!(
        matches!(err, TransportError::TlsNotConfigured { .. }),
        "{err}"
    );
}
