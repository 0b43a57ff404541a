//! The service model both front ends lower into.
//!
//! A [`ServiceDef`] is everything the emitter needs to know about one
//! contract, and nothing about where it came from: the `#[plexus::service]`
//! macro and the `.proto` front end each build one, then hand it to
//! [`crate::emit_service`]. Keeping the model free of front-end detail is what
//! makes the generated code the same shape whichever way a contract is written.

use proc_macro2::{Span, TokenStream};
use quote::quote;

/// One service contract: its identity, its roles, its codec and its methods.
#[derive(Debug, Clone)]
pub struct ServiceDef {
    /// Dotted package (`chat`, `acme.inventory`); empty for none. Prefixes every op id.
    pub package: String,
    /// The service name as the schema spells it (`Chat`); it is part of every
    /// op id and of the descriptor.
    pub name: String,
    /// The Rust name the generated items are named after (`Chat` gives
    /// `ChatClient`, `ChatHandler`, ...); UpperCamelCase.
    pub ident: syn::Ident,
    /// Contract version, announced with the descriptor. Starts at 1.
    pub version: u32,
    /// Documentation lines, carried onto the generated trait, client and handler.
    pub docs: Vec<String>,
    /// Roles the service's peers can take (`member`, `host`); empty for a symmetric service.
    pub roles: Vec<String>,
    /// The operations, in declaration order.
    pub methods: Vec<MethodDef>,
    /// Type path of the codec every message of this service goes through,
    /// e.g. `::plexus::codec::MsgPack` or `::plexus::codec::Prost`.
    pub codec: syn::Type,
    /// Visibility of the generated items (`pub`, `pub(crate)`, inherited).
    pub vis: syn::Visibility,
    /// Attributes other than docs that the user put on the contract and that
    /// belong on the generated server trait (`#[allow(..)]`, `#[deprecated]`).
    pub attrs: Vec<syn::Attribute>,
    /// Where the contract came from, which decides descriptor extras.
    pub source: SchemaSource,
    /// Span generated items point at in diagnostics (the trait name for the macro).
    pub span: Span,
}

/// Methods every generated client (`new`, `connect`, `with_options`,
/// `connection`) or fanout (`peers`) has besides the operations: an
/// operation may not take one of these names.
pub const RESERVED_METHOD_NAMES: &[&str] =
    &["new", "connect", "with_options", "connection", "peers"];

/// Where a contract was written, and what the descriptor carries because of it.
#[derive(Debug, Clone)]
pub enum SchemaSource {
    /// A Rust trait under `#[plexus::service]`.
    RustTrait,
    /// A `service` in a `.proto` file.
    Proto {
        /// An expression of type `&'static [u8]` evaluating to the encoded
        /// `FileDescriptorSet` of the service's file and its imports.
        descriptor_set: TokenStream,
    },
}

/// The five shapes a call can take on the wire: the runtime's own type
/// (`plexus::contract::CallKind`), from the crate both depend on.
pub use plexus_call_kind::CallKind;

/// Tokens naming `kind`'s variant of the runtime's
/// `plexus::contract::CallKind`, for generated descriptors.
pub fn runtime_path(kind: CallKind) -> TokenStream {
    match kind {
        CallKind::Unary => quote!(::plexus::contract::CallKind::Unary),
        CallKind::OneWay => quote!(::plexus::contract::CallKind::OneWay),
        CallKind::ClientStream => quote!(::plexus::contract::CallKind::ClientStream),
        CallKind::ServerStream => quote!(::plexus::contract::CallKind::ServerStream),
        CallKind::Bidi => quote!(::plexus::contract::CallKind::Bidi),
    }
}

/// One operation of a service.
#[derive(Debug, Clone)]
pub struct MethodDef {
    /// The Rust method name on the server trait and the client (`post`, `say_hello`).
    pub name: syn::Ident,
    /// The operation's name as the schema spells it (`post`, `SayHello`); it is
    /// the last part of the op id and must never change once deployed.
    pub schema_name: String,
    /// The call shape.
    pub kind: CallKind,
    /// Whether the server trait method takes a `plexus::CallContext` first.
    pub takes_context: bool,
    /// The request parameters after `&self` (and the context). Zero parameters
    /// send `()`, one sends its value, several are packed into a tuple.
    /// For stream kinds it is exactly one parameter whose type is the item type.
    pub params: Vec<Param>,
    /// The reply type (`()` for one-way); for stream kinds, the item type.
    pub reply: syn::Type,
    /// For server and bidi streams: whether each item the server yields is
    /// `Result<reply, Reject>`, so a stream can end with a rejection.
    pub fallible_items: bool,
    /// The role whose peers serve this operation; `None` serves it for everyone.
    pub role: Option<String>,
    /// The operation can safely run twice, so the runtime may retry it.
    pub idempotent: bool,
    /// Documentation lines.
    pub docs: Vec<String>,
    /// Non-doc attributes carried onto the server trait method and the client method.
    pub attrs: Vec<syn::Attribute>,
    /// Canonical schema names of the request and reply, for the fingerprint
    /// and the descriptor (`.chat.Message`, or the Rust type as written).
    pub request_schema: String,
    /// See [`MethodDef::request_schema`].
    pub reply_schema: String,
    /// The signature exactly as a Rust contract spelled it, reused verbatim
    /// on the generated server trait so the user's imports and spans stay
    /// meaningful. `None` for `.proto` services, whose trait is spelled canonically.
    pub declared: Option<DeclaredSignature>,
}

/// A server-trait method signature as the user wrote it.
#[derive(Debug, Clone)]
pub struct DeclaredSignature {
    /// The `CallContext` parameter's name and type, if there is one.
    pub context: Option<(syn::Ident, syn::Type)>,
    /// The request parameters' types, in order (e.g. `Streaming<Message>`).
    pub params: Vec<syn::Type>,
    /// The return type; `None` when there is none (one-way).
    pub output: Option<syn::Type>,
}

/// One named request parameter.
#[derive(Debug, Clone)]
pub struct Param {
    /// The parameter name, reused on the client method.
    pub name: syn::Ident,
    /// Its type; for a streaming parameter, the item type.
    pub ty: syn::Type,
}

impl ServiceDef {
    /// The fully qualified service name, `package.Service` (or `Service`).
    pub fn full_name(&self) -> String {
        if self.package.is_empty() {
            self.name.clone()
        } else {
            format!("{}.{}", self.package, self.name)
        }
    }

    /// The stable operation id of `method`: `package.Service/method`.
    pub fn op_id(&self, method: &MethodDef) -> String {
        format!("{}/{}", self.full_name(), method.schema_name)
    }
}

impl MethodDef {
    /// The request type on the wire: `()`, the single parameter's type, or a
    /// tuple of all of them.
    pub fn request_type(&self) -> syn::Type {
        match self.params.as_slice() {
            [] => syn::parse_quote!(()),
            [one] => one.ty.clone(),
            many => {
                let tys = many.iter().map(|p| &p.ty);
                syn::parse_quote!((#(#tys,)*))
            }
        }
    }
}
