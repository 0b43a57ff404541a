// The contract the golden test of `macros/src/golden.rs` expands: every call
// kind and every option a contract can carry. Its expansion, pretty-printed,
// is `chat.expanded.rs` beside it. Not compiled on its own.

/// A chat room.
#[plexus::service(package = "chat", roles = ["member", "host"], version = 2)]
pub trait Chat {
    /// Acked call: `Ok` carries the reply, `Err` rejects with code and reason.
    async fn post(&self, msg: Message) -> Result<Receipt, Reject>;

    /// Fire-and-forget: no ack, no return type.
    #[oneway]
    async fn typing(&self, user: String);

    /// Server stream with fallible items, safe to retry.
    #[idempotent]
    async fn history(&self, since: u64) -> Result<BoxStream<Result<Message, Reject>>, Reject>;

    /// Client stream, served by hosts only.
    #[role("host")]
    async fn import(&self, msgs: Streaming<Message>) -> Result<u32, Reject>;

    /// Bidi stream.
    async fn relay(&self, msgs: Streaming<Message>) -> Result<BoxStream<Message>, Reject>;

    /// Several arguments travel as one tuple; the context is not one of them.
    #[deprecated(note = "use post")]
    async fn add(&self, ctx: plexus::CallContext, a: i64, b: i64) -> Result<i64, Reject>;
}
