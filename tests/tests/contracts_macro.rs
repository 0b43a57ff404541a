//! `#[plexus::service]` contracts end to end over real TCP connections:
//! every call kind, rejections, bad payloads, unknown operations, descriptors.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use plexus::{BoxStream, Bytes, CallError, CallKind, CallOptions, Reject, Server, Streaming};
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
    /// No arguments; reads the typing counter.
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
        Ok((self.typing.load(Ordering::SeqCst), ctx.op().to_owned()))
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
