//! `#[plexus::service]`: a Rust trait becomes a Plexus service contract.
//!
//! The macro is a pipeline, and each stage lives in its own module:
//! `args` and `ast` parse the attribute and the trait, `valid` checks
//! every rule and turns each mistake into a compile error at the offending
//! token, `lower` builds the shared `plexus_codegen` model, and the model
//! goes through the same emitter as `.proto` services. This crate never
//! generates code itself.
//!
//! The user-facing documentation of the attribute is on the `plexus::service`
//! re-export and in `docs/CONTRACTS.md`.

mod args;
mod ast;
#[cfg(test)]
mod golden;
mod lower;
mod valid;

use proc_macro::TokenStream;

/// Turns a trait into a Plexus service contract: the server trait, a typed
/// client `XClient`, a handler adapter `XHandler<T>`, a descriptor, an
/// actor trait `XActor` (the operations on `&mut self`, served through
/// `plexus::node::Actor`) and `XFanout` (every linked peer at once, from
/// `node.fanout::<XClient>(deadline)`).
///
/// ```rust,ignore
/// use plexus::{BoxStream, Reject, Streaming};
///
/// #[plexus::service(package = "chat", roles = ["member", "host"], version = 1)]
/// pub trait Chat {
///     /// Acked call: `Ok` carries the reply, `Err` rejects with code and reason.
///     async fn post(&self, msg: Message) -> Result<Receipt, Reject>;
///     /// Fire-and-forget: no ack, no return type.
///     #[oneway]
///     async fn typing(&self, user: String);
///     /// Server stream; items may be `T` or `Result<T, Reject>`.
///     #[idempotent]
///     async fn history(&self, since: u64) -> Result<BoxStream<Message>, Reject>;
///     /// Client stream: the only argument is a `Streaming<T>`.
///     #[role("host")]
///     async fn import(&self, msgs: Streaming<Message>) -> Result<u32, Reject>;
///     /// Bidi stream: `Streaming<T>` in, `BoxStream<R>` out.
///     async fn relay(&self, msgs: Streaming<Message>) -> Result<BoxStream<Message>, Reject>;
///     /// Several arguments travel as one tuple; a leading `CallContext`
///     /// gives the handler the caller, deadline and metadata.
///     async fn add(&self, ctx: plexus::CallContext, a: i64, b: i64) -> Result<i64, Reject>;
/// }
/// ```
///
/// Service options, all optional: `package` (dotted; prefixes op ids
/// `package.Service/method`), `version` (from 1), `roles` (the roles methods
/// may name in `#[role("..")]`), `codec` (a type implementing
/// `plexus::codec::Codec`; `plexus::codec::MsgPack` by default).
///
/// Method rules: `async fn`, `&self`, no generics, plain `name: Type`
/// arguments of owned serde types, `Result<T, Reject>` for acked calls and no
/// return type for `#[oneway]`. Breaking a rule is a compile error at the
/// offending token. Implementations write `async fn` as usual; their futures
/// must be `Send`. The full guide is `docs/CONTRACTS.md`.
#[proc_macro_attribute]
pub fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(args.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

fn expand(
    args: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let args = args::ServiceArgs::parse(args)?;
    let contract = ast::Contract::parse(item)?;
    let checked = valid::check(&args, contract)?;
    let model = lower::lower(args, checked);
    Ok(plexus_codegen::emit_service(&model))
}
