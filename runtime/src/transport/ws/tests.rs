use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::*;
use crate::transport::tcp::tests::{exchange, listen_dial_exchange, STEP};
use crate::transport::tls::tests::{dial_and_accept, refused, with_tls, TestPki};
use crate::transport::{dial, listen, Listener};

async fn ws_listener(url: &str, config: &TransportConfig) -> Listener {
    listen(&Url::parse(url).expect("url"), config)
        .await
        .expect("listen")
}

/// A WebSocket client that is not Plexus: what a browser or a hostile peer
/// sends, message by message. `protocols` is its `Sec-WebSocket-Protocol`.
async fn raw_client(
    url: &Url,
    protocols: Option<&str>,
) -> Result<WebSocketStream<TcpStream>, tungstenite::Error> {
    let tcp = TcpStream::connect(url.socket_addr().expect("ip address")).await?;
    let mut request = url.to_string().into_client_request()?;
    if let Some(protocols) = protocols {
        request.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(protocols).expect("header value"),
        );
    }
    let (socket, _response) = tokio_tungstenite::client_async(request, tcp).await?;
    Ok(socket)
}

/// A raw client connected to `listener`, and the stream the listener accepted.
async fn raw_pair(listener: &mut Listener) -> (WebSocketStream<TcpStream>, Connected) {
    let local = listener.local_url().clone();
    let (client, accepted) = timeout(STEP, async {
        tokio::join!(raw_client(&local, Some("plexus")), listener.accept())
    })
    .await
    .expect("within the step bound");
    (client.expect("raw client"), accepted.expect("accept"))
}

/// Reads from `read` until it fails or ends; returns what arrived and how it ended.
async fn read_until_end(read: &mut ReadHalf) -> (Vec<u8>, io::Result<()>) {
    let mut got = Vec::new();
    let outcome = timeout(STEP, async {
        let mut buf = [0u8; 4096];
        loop {
            match read.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(error) => return Err(error),
            }
        }
    })
    .await
    .expect("the stream ends within the step bound");
    (got, outcome)
}

#[tokio::test]
async fn ws_carries_bytes_both_ways() {
    let local = listen_dial_exchange("ws://127.0.0.1:0", &TransportConfig::new()).await;
    assert_eq!(local.scheme(), Scheme::Ws);
    assert_ne!(local.port(), Some(0), "port 0 is replaced by the real port");
}

#[tokio::test]
async fn ws_over_ipv6_keeps_the_path() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipping: this machine has no IPv6 loopback");
        return;
    }
    let local = listen_dial_exchange("ws://[::1]:0/plexus", &TransportConfig::new()).await;
    assert!(local.to_string().starts_with("ws://[::1]:"), "{local}");
    assert_eq!(local.ws_path(), Some("/plexus"));
}

#[tokio::test]
async fn remote_names_the_peer_on_both_sides() {
    let defaults = TransportConfig::new();
    let mut listener = ws_listener("ws://127.0.0.1:0/p", &defaults).await;
    let local = listener.local_url().clone();
    let (dialed, accepted) = timeout(STEP, async {
        tokio::join!(dial(&local, &defaults), listener.accept())
    })
    .await
    .expect("within the step bound");
    assert_eq!(dialed.expect("dial").remote, local.to_string());
    let accepted = accepted.expect("accept").remote;
    assert!(accepted.starts_with("ws://127.0.0.1:"), "{accepted}");
}

#[tokio::test]
async fn wss_server_auth_carries_bytes_both_ways() {
    let pki = TestPki::new("wss CA");
    let mut listener = ws_listener("wss://127.0.0.1:0", &with_tls(pki.server_tls())).await;
    assert_eq!(listener.local_url().scheme(), Scheme::Wss);
    let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(pki.client_tls())).await;
    let accepted = accepted.expect("accept");
    assert!(
        accepted.remote.starts_with("wss://127.0.0.1:"),
        "{}",
        accepted.remote
    );
    exchange(dialed.expect("dial"), accepted).await;
}

#[tokio::test]
async fn wss_client_trusting_another_ca_is_refused() {
    let pki = TestPki::new("wss CA");
    let stranger = TestPki::new("stranger CA");
    let mut listener = ws_listener("wss://127.0.0.1:0", &with_tls(pki.server_tls())).await;
    let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(stranger.client_tls())).await;
    let err = dialed.expect_err("server certificate is not trusted");
    assert!(matches!(err, TransportError::Tls { .. }), "{err}");
    assert!(matches!(accepted, Err(TransportError::Tls { .. })));
}

#[tokio::test]
async fn wss_mutual_tls_needs_a_client_certificate_from_the_ca() {
    let pki = TestPki::new("wss mtls CA");
    let stranger = TestPki::new("stranger CA");
    let mut listener = ws_listener("wss://127.0.0.1:0", &with_tls(pki.strict_server_tls())).await;

    let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(pki.client_tls())).await;
    assert!(matches!(accepted, Err(TransportError::Tls { .. })));
    assert!(refused(dialed).await);

    let intruder = pki.client_tls();
    let id = stranger.client();
    let intruder = intruder
        .with_client_cert(id.cert_pem.as_bytes(), id.key_pem.as_bytes())
        .expect("client cert");
    let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(intruder)).await;
    assert!(matches!(accepted, Err(TransportError::Tls { .. })));
    assert!(refused(dialed).await);

    let member = with_tls(pki.client_tls_with_cert());
    let (dialed, accepted) = dial_and_accept(&mut listener, &member).await;
    exchange(dialed.expect("dial"), accepted.expect("accept")).await;
}

#[tokio::test]
async fn another_path_gets_404_and_the_listener_goes_on() {
    let defaults = TransportConfig::new();
    let mut listener = ws_listener("ws://127.0.0.1:0/plexus", &defaults).await;
    let local = listener.local_url().clone();
    let elsewhere = Url::parse(&format!(
        "ws://127.0.0.1:{}/other",
        local.port().expect("port")
    ))
    .expect("url");
    let (dialed, accepted) = timeout(STEP, async {
        tokio::join!(dial(&elsewhere, &defaults), listener.accept())
    })
    .await
    .expect("within the step bound");
    let err = dialed.expect_err("wrong path");
    assert!(matches!(err, TransportError::WebSocket { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("404") && text.contains("/plexus"), "{text}");
    assert!(matches!(accepted, Err(TransportError::WebSocket { .. })));
    // The query is not part of the path.
    let with_query = Url::parse(&format!("{local}?room=1")).expect("url");
    let (dialed, accepted) = timeout(STEP, async {
        tokio::join!(dial(&with_query, &defaults), listener.accept())
    })
    .await
    .expect("within the step bound");
    exchange(dialed.expect("dial"), accepted.expect("accept")).await;
}

#[tokio::test]
async fn a_foreign_subprotocol_is_refused_and_none_is_accepted() {
    let mut listener = ws_listener("ws://127.0.0.1:0", &TransportConfig::new()).await;
    let local = listener.local_url().clone();
    let (client, accepted) = timeout(STEP, async {
        tokio::join!(
            raw_client(&local, Some("chat, superchat")),
            listener.accept()
        )
    })
    .await
    .expect("within the step bound");
    match client {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST)
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    assert!(matches!(accepted, Err(TransportError::WebSocket { .. })));

    // A browser page that names no subprotocol is served.
    let (client, accepted) = timeout(STEP, async {
        tokio::join!(raw_client(&local, None), listener.accept())
    })
    .await
    .expect("within the step bound");
    let mut client = client.expect("no subprotocol is fine");
    let (mut read, _write) = accepted.expect("accept").stream.split();
    client
        .send(Message::Binary(Bytes::from_static(b"hi")))
        .await
        .expect("send");
    let mut buf = [0u8; 2];
    timeout(STEP, read.read_exact(&mut buf))
        .await
        .expect("within the step bound")
        .expect("read");
    assert_eq!(&buf, b"hi");
}

#[tokio::test]
async fn plain_http_and_garbage_fail_only_that_peer() {
    let mut listener = ws_listener("ws://127.0.0.1:0", &TransportConfig::new()).await;
    let addr = listener.local_url().socket_addr().expect("ip address");
    for request in [
        &b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"[..],
        &b"\x50\x4c\x58\x53\x00\x01 a Plexus hello where HTTP belongs\r\n\r\n"[..],
    ] {
        let mut raw = TcpStream::connect(addr).await.expect("tcp connect");
        raw.write_all(request).await.expect("write");
        let err = timeout(STEP, listener.accept())
            .await
            .expect("within the step bound")
            .expect_err("not a WebSocket upgrade");
        assert!(matches!(err, TransportError::WebSocket { .. }), "{err}");
    }
    listen_dial_exchange_on(&mut listener).await;
}

/// Dials `listener` with defaults and exchanges bytes.
async fn listen_dial_exchange_on(listener: &mut Listener) {
    let (dialed, accepted) = dial_and_accept(listener, &TransportConfig::new()).await;
    exchange(dialed.expect("dial"), accepted.expect("accept")).await;
}

#[tokio::test]
async fn endless_headers_are_cut_off() {
    let mut listener = ws_listener("ws://127.0.0.1:0", &TransportConfig::new()).await;
    let addr = listener.local_url().socket_addr().expect("ip address");
    let mut raw = TcpStream::connect(addr).await.expect("tcp connect");
    let flood = tokio::spawn(async move {
        let _ = raw.write_all(b"GET / HTTP/1.1\r\n").await;
        let line = b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        // Well past tungstenite's 64 KiB header bound; stops at the first
        // write the closed connection refuses.
        for _ in 0..4096 {
            if raw.write_all(line).await.is_err() {
                break;
            }
        }
    });
    let err = timeout(STEP, listener.accept())
        .await
        .expect("within the step bound")
        .expect_err("headers too long");
    assert!(matches!(err, TransportError::WebSocket { .. }), "{err}");
    flood.abort();
    listen_dial_exchange_on(&mut listener).await;
}

#[tokio::test]
async fn silent_peer_does_not_stall_accept_and_times_out() {
    let config = TransportConfig {
        handshake_timeout: Duration::from_millis(300),
        ..TransportConfig::new()
    };
    let mut listener = ws_listener("ws://127.0.0.1:0", &config).await;
    let addr = listener.local_url().socket_addr().expect("ip address");
    // Connects but never sends its upgrade request.
    let _silent = TcpStream::connect(addr).await.expect("tcp connect");
    listen_dial_exchange_on(&mut listener).await;
    let err = timeout(STEP, listener.accept())
        .await
        .expect("timeout reported within the step bound")
        .expect_err("silent peer times out");
    match err {
        TransportError::WebSocket { source, .. } => {
            assert_eq!(source.kind(), io::ErrorKind::TimedOut)
        }
        other => panic!("expected a WebSocket timeout, got {other}"),
    }
}

#[tokio::test]
async fn a_text_message_fails_the_stream() {
    let mut listener = ws_listener("ws://127.0.0.1:0", &TransportConfig::new()).await;
    let (mut client, accepted) = raw_pair(&mut listener).await;
    let (mut read, _write) = accepted.stream.split();
    client
        .send(Message::Binary(Bytes::from_static(b"ok")))
        .await
        .expect("send");
    client.send(Message::text("hello")).await.expect("send");
    let (got, outcome) = read_until_end(&mut read).await;
    assert_eq!(got, b"ok", "bytes before the violation arrive");
    let err = outcome.expect_err("text is a violation");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("binary"), "{err}");
}

#[tokio::test]
async fn an_oversized_message_fails_the_stream() {
    let config = TransportConfig {
        ws_max_message: 64 * 1024,
        ..TransportConfig::new()
    };
    let mut listener = ws_listener("ws://127.0.0.1:0", &config).await;
    let (mut client, accepted) = raw_pair(&mut listener).await;
    let (mut read, _write) = accepted.stream.split();
    // The send may fail once the listener gives up; the read side is the point.
    let _ = client
        .send(Message::Binary(Bytes::from(vec![7u8; 100 * 1024])))
        .await;
    let (got, outcome) = read_until_end(&mut read).await;
    assert!(
        got.is_empty(),
        "nothing of the oversized message is delivered"
    );
    let err = outcome.expect_err("too large");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("ws_max_message"), "{err}");
}

#[tokio::test]
async fn message_boundaries_mean_nothing() {
    let mut listener = ws_listener("ws://127.0.0.1:0", &TransportConfig::new()).await;
    let (mut client, accepted) = raw_pair(&mut listener).await;
    let (mut read, mut write) = accepted.stream.split();
    for part in [&b"P"[..], b"", b"LX", b"S\x00\x01", b"", b"!"] {
        client
            .send(Message::Binary(Bytes::copy_from_slice(part)))
            .await
            .expect("send");
    }
    client
        .send(Message::Ping(Bytes::new()))
        .await
        .expect("ping");
    let mut buf = [0u8; 7];
    timeout(STEP, read.read_exact(&mut buf))
        .await
        .expect("within the step bound")
        .expect("read");
    assert_eq!(&buf, b"PLXS\x00\x01!");

    // Three and a half MiB in one write leave in messages of at most 1 MiB
    // and arrive whole.
    let payload: Vec<u8> = (0..(7u32 << 19)).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.expect("write");
        write.flush().await.expect("flush");
        write
    });
    let mut received = Vec::new();
    let mut largest = 0;
    timeout(STEP, async {
        while received.len() < payload.len() {
            match client.next().await.expect("a message").expect("no error") {
                Message::Binary(part) => {
                    largest = largest.max(part.len());
                    received.extend_from_slice(&part);
                }
                Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("within the step bound");
    assert!(received == payload, "the bytes arrive intact and in order");
    assert!(largest <= MAX_OUTGOING_MESSAGE, "largest message {largest}");
    drop(writer);
}

#[tokio::test]
async fn a_close_from_the_peer_is_end_of_file() {
    let mut listener = ws_listener("ws://127.0.0.1:0", &TransportConfig::new()).await;
    let (mut client, accepted) = raw_pair(&mut listener).await;
    let (mut read, mut write) = accepted.stream.split();
    client
        .send(Message::Binary(Bytes::from_static(b"last words")))
        .await
        .expect("send");
    client.close(None).await.expect("close");
    let (got, outcome) = read_until_end(&mut read).await;
    assert_eq!(got, b"last words");
    outcome.expect("a close is a clean end");
    // Our own shutdown after theirs is not an error either.
    timeout(STEP, write.shutdown())
        .await
        .expect("within the step bound")
        .expect("shutdown");
}

#[tokio::test]
async fn shutdown_sends_a_close_after_the_last_bytes() {
    let mut listener = ws_listener("ws://127.0.0.1:0", &TransportConfig::new()).await;
    let (mut client, accepted) = raw_pair(&mut listener).await;
    let (_read, mut write) = accepted.stream.split();
    write.write_all(b"bye").await.expect("write");
    write.shutdown().await.expect("shutdown");
    let mut messages = Vec::new();
    timeout(STEP, async {
        while let Some(Ok(message)) = client.next().await {
            let close = matches!(message, Message::Close(_));
            messages.push(message);
            if close {
                break;
            }
        }
    })
    .await
    .expect("within the step bound");
    assert!(
        matches!(messages.as_slice(), [Message::Binary(b), Message::Close(_)] if &b[..] == b"bye"),
        "{messages:?}"
    );
}

#[tokio::test]
async fn missing_tls_config_is_named_for_wss() {
    let url = Url::parse("wss://127.0.0.1:0").expect("url");
    let err = listen(&url, &TransportConfig::new())
        .await
        .expect_err("no server config");
    assert!(
        matches!(err, TransportError::TlsNotConfigured { .. }),
        "{err}"
    );
    let err = dial(
        &Url::parse("wss://127.0.0.1:1").expect("url"),
        &TransportConfig::new(),
    )
    .await
    .expect_err("no client config");
    assert!(
        matches!(err, TransportError::TlsNotConfigured { .. }),
        "{err}"
    );
}
