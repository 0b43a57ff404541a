//! Sessions, call-backs and streams through generated clients and handlers.

use std::time::Duration;

use futures_util::StreamExt;
use plexus::{BoxStream, Bytes, CallContext, CallError, Endpoint, Reject, Streaming};
use plexus_tests::bounded;

/// The server's contract.
#[plexus::service(package = "typed")]
pub trait Relay {
    /// Asks the caller, through its own `Echo` service, to echo `text`.
    async fn ask_back(&self, ctx: CallContext, text: String) -> Result<String, Reject>;
    /// Sums a stream of numbers.
    async fn sum(&self, numbers: Streaming<u64>) -> Result<u64, Reject>;
    /// Streams `0..n`.
    async fn count(&self, n: u32) -> Result<BoxStream<u32>, Reject>;
    /// The session the call ran in.
    async fn session_name(&self, ctx: CallContext) -> Result<String, Reject>;
}

/// The client's contract, called back by the server.
#[plexus::service(package = "typed")]
pub trait Echo {
    /// Returns `text` upper-cased.
    async fn echo(&self, text: String) -> Result<String, Reject>;
}

struct RelayImpl;

impl Relay for RelayImpl {
    async fn ask_back(&self, ctx: CallContext, text: String) -> Result<String, Reject> {
        let caller = EchoClient::new(ctx.connection().clone());
        caller
            .echo(text)
            .await
            .map_err(|e| Reject::new(502, e.to_string()))
    }

    async fn sum(&self, mut numbers: Streaming<u64>) -> Result<u64, Reject> {
        let mut total = 0;
        while let Some(n) = numbers.recv().await {
            total += n.map_err(|e| Reject::new(400, e.to_string()))?;
        }
        Ok(total)
    }

    async fn count(&self, n: u32) -> Result<BoxStream<u32>, Reject> {
        Ok(futures_util::stream::iter(0..n).boxed())
    }

    async fn session_name(&self, ctx: CallContext) -> Result<String, Reject> {
        Ok(ctx
            .session()
            .map(|s| s.name().to_owned())
            .unwrap_or_default())
    }
}

struct Upper;

impl Echo for Upper {
    async fn echo(&self, text: String) -> Result<String, Reject> {
        Ok(text.to_uppercase())
    }
}

async fn setup() -> (Endpoint, plexus::Connection) {
    let server = Endpoint::builder()
        .serve(RelayHandler::new(RelayImpl))
        .on_session(|req| async move {
            if req.data().as_ref() == b"ok" {
                Ok(Bytes::new())
            } else {
                Err(Reject::new(403, "no"))
            }
        })
        .build();
    let listening = server.listen("tcp://127.0.0.1:0").await.expect("listen");
    let client = Endpoint::builder().serve(EchoHandler::new(Upper)).build();
    let conn = bounded("connect", client.connect(listening.local_url()))
        .await
        .expect("connect");
    (server, conn)
}

#[tokio::test]
async fn handler_calls_the_caller_back_through_a_typed_client() {
    let (_server, conn) = setup().await;
    let relay = RelayClient::new(conn);
    let answer = bounded("ask_back", relay.ask_back("hello".to_owned())).await;
    assert_eq!(answer.expect("relayed"), "HELLO");
}

#[tokio::test]
async fn typed_calls_scoped_to_a_session_stop_when_it_closes() {
    let (_server, conn) = setup().await;
    let session = bounded(
        "open",
        conn.open_session("room-1", "ok", Duration::from_secs(5)),
    )
    .await
    .expect("accepted");
    let scoped = RelayClient::new(session.as_connection());
    let name = bounded("call", scoped.session_name())
        .await
        .expect("inside");
    assert_eq!(name, "room-1");
    let (mut numbers, total) = bounded("open sum", scoped.sum()).await.expect("open");
    for n in 1..=10u64 {
        numbers.send(n).await.expect("send");
    }
    numbers.finish().await.expect("finish");
    assert_eq!(bounded("sum", total).await.expect("sum"), 55);
    let mut counted = bounded("count", scoped.count(5)).await.expect("stream");
    let mut got = Vec::new();
    while let Some(n) = bounded("item", counted.next()).await {
        got.push(n.expect("item"));
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    session.close("done").await;
    let err = bounded("after close", scoped.session_name())
        .await
        .expect_err("closed");
    assert!(matches!(err, CallError::SessionClosed { .. }), "{err}");
    // Outside the session the same connection still works.
    let plain = RelayClient::new(conn);
    assert_eq!(
        bounded("plain", plain.session_name()).await.expect("ok"),
        ""
    );
}

#[tokio::test]
async fn typed_best_effort_sends_are_delivered_or_counted() {
    let (_server, conn) = setup().await;
    let relay = RelayClient::new(conn);
    let (mut numbers, total) = bounded("open sum", relay.sum()).await.expect("open");
    const N: u64 = 200_000;
    for _ in 0..N {
        numbers.try_send(1).expect("call still open");
    }
    let dropped = numbers.dropped();
    numbers.finish().await.expect("finish");
    let delivered = bounded("sum", total).await.expect("sum");
    assert_eq!(
        delivered + dropped,
        N,
        "every item is delivered or counted as dropped"
    );
}
