//! Code generation for Plexus service contracts.
//!
//! One model, two front ends, one emitter:
//! - [`model`]: [`ServiceDef`] / [`MethodDef`], what a contract is, independent of how it was written;
//! - [`emit_service`]: the only code generator, turning a model into the server trait,
//!   typed client, handler adapter and descriptor;
//! - front ends: the `#[plexus::service]` macro (crate `plexus-macros`) and
//!   [`compile_protos`] for `.proto` files in `build.rs` (feature `proto`, on by default).
//!
//! What the emitter generates is pinned by a golden file: the expansion of
//! one contract with every call kind, `macros/golden/chat.expanded.rs`,
//! checked by `macros/src/golden.rs`. A change here that alters generated
//! code fails that test; rewrite the file with
//! `PLEXUS_BLESS=1 cargo test -p plexus-macros --lib golden` and review its
//! diff with the change (`docs/CONTRACTS.md`).
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), plexus_codegen::Error> {
//!     plexus_codegen::compile_protos(&["schemas/chat.proto"], &["schemas"])
//! }
//! ```

mod emit;
mod fingerprint;
pub mod model;
#[cfg(feature = "proto")]
mod proto;

pub use emit::emit_service;
pub use fingerprint::{canonical_text, fingerprint};
pub use model::{
    CallKind, DeclaredSignature, MethodDef, Param, SchemaSource, ServiceDef, RESERVED_METHOD_NAMES,
};
#[cfg(feature = "proto")]
pub use proto::{compile_protos, Builder, Error, Location, Problem};
