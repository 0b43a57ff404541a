//! `#[plexus::service]` contracts end to end over real TCP connections:
//! every call kind, rejections, bad payloads, unknown operations, descriptors.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use plexus::{
    contract::CallKind, BoxStream, Bytes, CallError, CallOptions, Reject, Router, Server, Streaming,
};
use plexus_tests::bounded;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub from: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub seq: u64,
}

/// A chat room.
#[plexus::service(package = "chat", roles = ["member", "host"], version = 2)]
pub trait Chat {
    /// Posts a message; rejected when empty.
    async fn post(&self, msg: Message) -> Result<Receipt, Reject>;
    /// Says someone is typing.
    #[oneway]
    async fn typing(&self, user: String);
    /// Messages since `since`.
    #[idempotent]
    async fn history(&self, since: u64) -> Result<BoxStream<Message>, Reject>;
    /// Uploads many messages; replies with how many arrived.
    #[role("host")]
    async fn import(&self, messages: Streaming<Message>) -> Result<u32, Reject>;
    /// Echoes each message back upper-cased.
    async fn shout(
        &self,
        messages: Streaming<Message>,
    ) -> Result<BoxStream<Result<Message, Reject>>, Reject>;
    /// Adds two numbers (several arguments travel as a tuple).
    #[idempotent]
    async fn add(&self, a: i64, b: i64) -> Result<i64, Reject>;
    /// No arguments; reads the typing counter and the caller's `who` metadata.
    async fn typed_count(&self, ctx: plexus::CallContext) -> Result<(u32, String), Reject>;
}

#[derive(Default)]
struct Room {
    typing: AtomicU32,
}

impl Chat for Room {
    async fn post(&self, msg: Message) -> Result<Receipt, Reject> {
        if msg.text.is_empty() {
            return Err(Reject::new(422, "empty message").with_details("text"));
        }
        Ok(Receipt {
            seq: msg.text.len() as u64,
        })
    }

    async fn typing(&self, _user: String) {
        self.typing.fetch_add(1, Ordering::SeqCst);
    }

    async fn history(&self, since: u64) -> Result<BoxStream<Message>, Reject> {
        let items = (since..since + 3).map(|i| Message {
            from: "bot".into(),
            text: format!("m{i}"),
        });
        Ok(futures_util::stream::iter(items).boxed())
    }

    async fn import(&self, mut messages: Streaming<Message>) -> Result<u32, Reject> {
        let mut n = 0;
        while let Some(item) = messages.recv().await {
            item.map_err(|e| Reject::new(400, e.to_string()))?;
            n += 1;
        }
        Ok(n)
    }

    async fn shout(
        &self,
        messages: Streaming<Message>,
    ) -> Result<BoxStream<Result<Message, Reject>>, Reject> {
        Ok(messages
            .map(|item| match item {
                Ok(m) if m.text == "stop" => Err(Reject::new(499, "told to stop")),
                Ok(m) => Ok(Message {
                    from: m.from,
                    text: m.text.to_uppercase(),
                }),
                Err(e) => Err(Reject::new(400, e.to_string())),
            })
            .boxed())
    }

    async fn add(&self, a: i64, b: i64) -> Result<i64, Reject> {
        Ok(a + b)
    }

    async fn typed_count(&self, ctx: plexus::CallContext) -> Result<(u32, String), Reject> {
        let who = ctx
            .metadata("who")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        Ok((self.typing.load(Ordering::SeqCst), who))
    }
}

async fn serve_room() -> (plexus::Server, ChatClient) {
    let server = bounded(
        "start",
        Server::bind("tcp://127.0.0.1:0")
            .serve(ChatHandler::new(Room::default()))
            .start(),
    )
    .await
    .expect("server starts");
    let client = bounded("connect", ChatClient::connect(server.local_url()))
        .await
        .expect("client connects");
    (server, client)
}

fn msg(text: &str) -> Message {
    Message {
        from: "ann".into(),
        text: text.into(),
    }
}

#[tokio::test]
async fn unary_call_round_trips() {
    let (_server, chat) = serve_room().await;
    let receipt = bounded("post", chat.post(msg("hello")))
        .await
        .expect("accepted");
    assert_eq!(receipt, Receipt { seq: 5 });
    assert_eq!(bounded("add", chat.add(40, 2)).await.expect("added"), 42);
}

#[tokio::test]
async fn rejected_call_carries_code_and_reason() {
    let (_server, chat) = serve_room().await;
    match bounded("post", chat.post(msg(""))).await {
        Err(CallError::Rejected(reject)) => {
            assert_eq!(reject.code(), 422);
            assert_eq!(reject.message(), "empty message");
            assert_eq!(&reject.details()[..], b"text");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn oneway_call_arrives_and_context_reaches_the_handler() {
    let (_server, chat) = serve_room().await;
    bounded("typing", chat.typing("ann".into()))
        .await
        .expect("sent");
    bounded("typing", chat.typing("bob".into()))
        .await
        .expect("sent");
    let chat = chat.with_options(CallOptions::new().metadata("who", "carol"));
    // One-way calls carry no ack, so poll until both have been handled.
    let seen = bounded("typing count", async {
        loop {
            let (count, who) = chat.typed_count().await.expect("count");
            if count == 2 {
                return who;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(seen, "carol");
}

#[tokio::test]
async fn server_stream_round_trips() {
    let (_server, chat) = serve_room().await;
    let stream = bounded("history", chat.history(7))
        .await
        .expect("stream opens");
    let texts: Vec<String> = bounded(
        "history items",
        stream.map(|m| m.expect("item").text).collect(),
    )
    .await;
    assert_eq!(texts, ["m7", "m8", "m9"]);
}

#[tokio::test]
async fn client_stream_round_trips() {
    let (_server, chat) = serve_room().await;
    let (mut tx, reply) = bounded("import", chat.import())
        .await
        .expect("stream opens");
    for i in 0..5 {
        bounded("send", tx.send(msg(&format!("n{i}"))))
            .await
            .expect("sent");
    }
    bounded("finish", tx.finish()).await.expect("finished");
    assert_eq!(bounded("reply", reply).await.expect("reply"), 5);
}

#[tokio::test]
async fn bidi_stream_round_trips_and_can_end_with_a_rejection() {
    let (_server, chat) = serve_room().await;
    let (mut tx, mut rx) = bounded("shout", chat.shout()).await.expect("stream opens");
    bounded("send", tx.send(msg("hi"))).await.expect("sent");
    let first = bounded("recv", rx.recv())
        .await
        .expect("an item")
        .expect("ok item");
    assert_eq!(first.text, "HI");
    bounded("send", tx.send(msg("there"))).await.expect("sent");
    assert_eq!(
        bounded("recv", rx.recv())
            .await
            .expect("an item")
            .expect("ok")
            .text,
        "THERE"
    );
    bounded("send", tx.send(msg("stop"))).await.expect("sent");
    match bounded("recv", rx.recv()).await {
        Some(Err(CallError::Rejected(r))) => {
            assert_eq!(r.code(), 499);
            assert_eq!(r.message(), "told to stop");
        }
        other => panic!("expected the stream to end with a rejection, got {other:?}"),
    }
    assert!(bounded("end", rx.recv()).await.is_none());
}

#[tokio::test]
async fn undecodable_request_is_a_decode_error_not_a_panic() {
    let (_server, chat) = serve_room().await;
    let garbage = Bytes::from_static(b"\xc1\xc1 not msgpack");
    let err = bounded(
        "raw post",
        chat.connection()
            .call("chat.Chat/post", garbage.clone(), CallOptions::new()),
    )
    .await
    .expect_err("garbage is refused");
    assert!(matches!(err, CallError::Decode { .. }), "got {err:?}");
    // A one-way with garbage is dropped; the service keeps serving.
    bounded(
        "raw typing",
        chat.connection()
            .oneway("chat.Chat/typing", garbage, CallOptions::new()),
    )
    .await
    .expect("sent");
    assert_eq!(
        bounded("add", chat.add(1, 1)).await.expect("still serving"),
        2
    );
}

#[tokio::test]
async fn unknown_operation_is_a_typed_error() {
    let (_server, chat) = serve_room().await;
    let err = bounded(
        "call",
        chat.connection()
            .call("chat.Chat/nope", Bytes::new(), CallOptions::new()),
    )
    .await
    .expect_err("no such operation");
    assert!(
        matches!(err, CallError::NoSuchOperation { .. }),
        "got {err:?}"
    );
}

#[tokio::test]
async fn undecodable_reply_is_a_decode_error_on_the_client() {
    // A server that speaks the op id but answers with bytes that are not a Receipt.
    let liar = Router::new().unary("chat.Chat/post", |_ctx, _body: Bytes| async move {
        Ok::<_, Reject>(Bytes::from_static(b"\xc1"))
    });
    let server = bounded(
        "start",
        Server::bind("tcp://127.0.0.1:0").serve(liar).start(),
    )
    .await
    .expect("server starts");
    let chat = bounded("connect", ChatClient::connect(server.local_url()))
        .await
        .expect("connects");
    let err = bounded("post", chat.post(msg("x")))
        .await
        .expect_err("reply is garbage");
    match err {
        CallError::Decode { op, .. } => assert_eq!(&*op, "chat.Chat/post"),
        other => panic!("expected a decode error, got {other:?}"),
    }
    // Calling an operation the peer does not serve is a typed error too.
    let err = bounded("add", chat.add(1, 2))
        .await
        .expect_err("not served");
    assert!(
        matches!(err, CallError::NoSuchOperation { .. }),
        "got {err:?}"
    );
}

#[test]
fn descriptor_describes_the_contract() {
    let d = ChatClient::DESCRIPTOR;
    assert_eq!(d.package, "chat");
    assert_eq!(d.name, "Chat");
    assert_eq!(d.full_name, "chat.Chat");
    assert_eq!(d.version, 2);
    assert_eq!(d.roles, ["member", "host"]);
    assert_eq!(d.codec, "msgpack");
    assert!(d.file_descriptor_set.is_none());
    assert_eq!(d.docs, "A chat room.");
    let ops: Vec<(&str, CallKind)> = d.methods.iter().map(|m| (m.op, m.kind)).collect();
    assert_eq!(
        ops,
        [
            ("chat.Chat/post", CallKind::Unary),
            ("chat.Chat/typing", CallKind::OneWay),
            ("chat.Chat/history", CallKind::ServerStream),
            ("chat.Chat/import", CallKind::ClientStream),
            ("chat.Chat/shout", CallKind::Bidi),
            ("chat.Chat/add", CallKind::Unary),
            ("chat.Chat/typed_count", CallKind::Unary),
        ]
    );
    let import = d.method("import").expect("import is described");
    assert_eq!(import.role, Some("host"));
    assert!(!import.idempotent);
    let history = d
        .method_by_op("chat.Chat/history")
        .expect("history is described");
    assert_eq!(history.role, None);
    assert!(history.idempotent);
    assert_eq!(history.request, "u64");
    assert_eq!(history.reply, "Message");
    assert_eq!(d.method("add").expect("add").request, "(i64,i64,)");
    assert_eq!(history.docs, "Messages since `since`.");
    // The handler and the Contract trait expose the same static data.
    assert!(std::ptr::eq(ChatHandler::<Room>::DESCRIPTOR, d));
    assert_eq!(
        <ChatClient as plexus::contract::Contract>::DESCRIPTOR.fingerprint,
        d.fingerprint
    );
}

/// The same contract text, with one operation changed.
mod changed {
    use super::{Message, Receipt};
    use plexus::Reject;

    #[plexus::service(package = "chat", roles = ["member", "host"], version = 2)]
    pub trait Chat {
        async fn post(&self, msg: Message, urgent: bool) -> Result<Receipt, Reject>;
    }
}

#[test]
fn fingerprint_is_stable_and_changes_with_the_contract() {
    let fp = ChatClient::DESCRIPTOR.fingerprint;
    assert_ne!(fp, 0);
    assert_ne!(fp, changed::ChatClient::DESCRIPTOR.fingerprint);
}

/// A service choosing its codec.
#[plexus::service(package = "calc", codec = plexus::codec::Json)]
pub trait Calc {
    /// Halves a number; odd numbers are rejected.
    async fn half(&self, n: i64) -> Result<i64, Reject>;
}

struct Halver;

impl Calc for Halver {
    async fn half(&self, n: i64) -> Result<i64, Reject> {
        if n % 2 == 0 {
            Ok(n / 2)
        } else {
            Err(Reject::new(1, "odd"))
        }
    }
}

#[tokio::test]
async fn codec_is_chosen_per_service_and_several_services_share_a_connection() {
    let server = bounded(
        "start",
        Server::bind("tcp://127.0.0.1:0")
            .serve(
                Router::new()
                    .add(ChatHandler::new(Room::default()))
                    .add(CalcHandler::new(Halver)),
            )
            .start(),
    )
    .await
    .expect("server starts");
    let calc = bounded("connect", CalcClient::connect(server.local_url()))
        .await
        .expect("connects");
    assert_eq!(CalcClient::DESCRIPTOR.codec, "json");
    assert_eq!(bounded("half", calc.half(42)).await.expect("halved"), 21);
    // JSON on the wire: a hand-written request works.
    let raw = bounded(
        "raw",
        calc.connection().call(
            "calc.Calc/half",
            Bytes::from_static(b"10"),
            CallOptions::new(),
        ),
    )
    .await
    .expect("raw JSON call");
    assert_eq!(&raw[..], b"5");
    let chat = ChatClient::new(calc.connection().clone());
    assert_eq!(bounded("add", chat.add(2, 3)).await.expect("added"), 5);
}
