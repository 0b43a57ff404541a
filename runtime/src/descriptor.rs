//! Service descriptors: the static description of a contract that discovery
//! announces and peers compare.
//!
//! Every generated service has one `&'static ServiceDescriptor` (reachable as
//! `XClient::DESCRIPTOR`, `XHandler::<T>::DESCRIPTOR`, or through the
//! [`Contract`] trait). The data is built by the code generator at compile
//! time; this module only defines its shape and never computes anything
//! at run time.

/// The shape of one operation's call; defined once, in `plexus-call-kind`,
/// shared with the code generator.
pub use plexus_call_kind::CallKind;

/// One service contract, as static data.
///
/// Built by `#[plexus::service]` or `plexus_codegen::compile_protos`; users read it.
#[derive(Debug, Clone, Copy)]
pub struct ServiceDescriptor {
    /// Dotted package (`chat`), empty for none.
    pub package: &'static str,
    /// Service name (`Chat`).
    pub name: &'static str,
    /// `package.Service`, the prefix of every op id.
    pub full_name: &'static str,
    /// Contract version.
    pub version: u32,
    /// The contract's documentation.
    pub docs: &'static str,
    /// Roles its peers can take; empty for a symmetric service.
    pub roles: &'static [&'static str],
    /// The operations, in declaration order.
    pub methods: &'static [MethodDescriptor],
    /// Name of the payload codec (`msgpack`, `json`, `protobuf`).
    pub codec: &'static str,
    /// Stable 64-bit hash of the contract's canonical text: two peers with
    /// the same fingerprint agree on op ids, kinds, roles and message schemas.
    pub fingerprint: u64,
    /// For `.proto` services, the encoded `google.protobuf.FileDescriptorSet`
    /// of the service's file and its imports; `None` for Rust-trait services.
    pub file_descriptor_set: Option<&'static [u8]>,
}

impl ServiceDescriptor {
    /// The operation with the op id `op`, if this service has it.
    pub fn method_by_op(&self, op: &str) -> Option<&'static MethodDescriptor> {
        self.methods.iter().find(|m| m.op == op)
    }

    /// The operation named `name` (as the schema spells it), if this service has it.
    pub fn method(&self, name: &str) -> Option<&'static MethodDescriptor> {
        self.methods.iter().find(|m| m.name == name)
    }
}

/// One operation of a service, as static data.
#[derive(Debug, Clone, Copy)]
pub struct MethodDescriptor {
    /// The operation's name as the schema spells it (`post`, `SayHello`).
    pub name: &'static str,
    /// The stable operation id, `package.Service/name`.
    pub op: &'static str,
    /// The call shape.
    pub kind: CallKind,
    /// The role whose peers serve this operation; `None` means every peer does.
    pub role: Option<&'static str>,
    /// Whether running the operation twice is harmless, so a caller may retry it.
    pub idempotent: bool,
    /// Schema name of the request (or request item) type.
    pub request: &'static str,
    /// Schema name of the reply (or reply item) type.
    pub reply: &'static str,
    /// The operation's documentation.
    pub docs: &'static str,
    /// The request's parameters by name and Rust type, as a Rust-trait
    /// contract declares them; several travel as a tuple in this order, none
    /// as `()`. Empty for `.proto` operations, whose request is one message.
    pub params: &'static [ParamDescriptor],
    /// Builds the JSON Schemas of the request and reply, for types that
    /// provide one (see [`JsonSchemas`]). Called by reflection on demand,
    /// never on a call's path.
    pub json_schemas: fn() -> JsonSchemas,
}

/// One named parameter of a Rust-trait operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamDescriptor {
    /// The parameter's name (`name`, `since`).
    pub name: &'static str,
    /// Its Rust type as the contract spells it, whitespace removed (`String`, `Vec<u8>`).
    pub ty: &'static str,
}

/// JSON Schemas (JSON text) of an operation's request and reply.
///
/// A type provides one when the `json-schema` feature of `plexus` is on and
/// the type implements `schemars::JsonSchema` (e.g. `#[derive(JsonSchema)]`);
/// otherwise the entry is `None` and tools fall back to the Rust type names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonSchemas {
    /// The request's (or request item's) schema; for several parameters, the tuple's.
    pub request: Option<String>,
    /// The reply's (or reply item's) schema.
    pub reply: Option<String>,
}

impl JsonSchemas {
    /// No schema for either side: what `.proto` operations and types without
    /// a `JsonSchema` implementation give.
    pub fn none() -> JsonSchemas {
        JsonSchemas::default()
    }
}

/// Implemented by every generated client and handler: names the contract they speak.
pub trait Contract {
    /// The contract's descriptor.
    const DESCRIPTOR: &'static ServiceDescriptor;
}
