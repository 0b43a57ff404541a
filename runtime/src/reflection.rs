//! Reflection: what an endpoint serves, described over the wire.
//!
//! Owns the built-in operation `plexus.Reflection/describe`, which every
//! [`Endpoint`](crate::Endpoint), [`Server`](crate::Server) and
//! [`Node`](crate::Node) serves unless built `without_reflection()`, and the
//! owned, encodable form of its answer ([`Description`]): the contracts the
//! endpoint serves — services, operations, call kinds, roles, fingerprints —
//! with their message schemas (the compiled `FileDescriptorSet` of `.proto`
//! contracts; argument names, Rust type names and, where the types provide
//! one, a JSON Schema for `#[plexus::service]` contracts), every operation id
//! it answers, and for a node its name, group, endpoints and the role it
//! takes in each service. Tools such as the `plexus` command-line client read
//! it with [`describe`]; nothing in the runtime depends on it.
//!
//! The request and reply are MessagePack maps keyed by field name (the
//! [`MsgPack`] codec), so a client in any language can read them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use plexus::{reflection, CallOptions, Connection};
//! let conn = Connection::connect("tcp://127.0.0.1:4000").await?;
//! let description = reflection::describe(&conn, None, CallOptions::new()).await?;
//! for service in &description.services {
//!     for op in &service.operations {
//!         println!("{} ({})", op.op, op.kind);
//!     }
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::{decode_reply, decode_request, encode_reply, Codec, MsgPack};
use crate::connection::CallContext;
use crate::descriptor::{MethodDescriptor, ServiceDescriptor};
use crate::error::{CallError, Reject};
use crate::router::Router;
use crate::{CallOptions, Connection};

/// The operation id of the built-in reflection service.
pub const DESCRIBE_OP: &str = "plexus.Reflection/describe";

/// Reject code of a describe call naming a service the endpoint does not serve.
pub const UNKNOWN_SERVICE: u32 = 0xffff_0002;

/// What a describe call asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeRequest {
    /// Only this service (`package.Service`); `None` for all of them.
    #[serde(default)]
    pub service: Option<String>,
}

/// What an endpoint serves, as `plexus.Reflection/describe` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    /// The endpoint's node id, 32 hex digits.
    pub node_id: String,
    /// For a [`Node`](crate::Node): its name, group, endpoints and roles.
    pub node: Option<NodeReflection>,
    /// The contracts served, in the order they were added (only the one
    /// asked for, if the request named one).
    pub services: Vec<ServiceReflection>,
    /// Every operation id answered, sorted: the contracts' operations, those
    /// of routers without a contract (raw byte handlers) and the built-in ones.
    pub operations: Vec<String>,
}

impl Description {
    /// The service named `full_name`, if it is served.
    pub fn service(&self, full_name: &str) -> Option<&ServiceReflection> {
        self.services.iter().find(|s| s.full_name == full_name)
    }

    /// The operation with id `op` and the service it belongs to, if a
    /// contract describes it.
    pub fn operation(&self, op: &str) -> Option<(&ServiceReflection, &OperationReflection)> {
        self.services
            .iter()
            .find_map(|s| s.operations.iter().find(|o| o.op == op).map(|o| (s, o)))
    }
}

/// One served contract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReflection {
    /// `package.Service`.
    pub full_name: String,
    /// Dotted package, empty for none.
    pub package: String,
    /// Service name.
    pub name: String,
    /// Contract version.
    pub version: u32,
    /// The contract's documentation.
    pub docs: String,
    /// Payload codec (`msgpack`, `json`, `protobuf`).
    pub codec: String,
    /// The contract's fingerprint.
    pub fingerprint: u64,
    /// Roles the contract declares (empty: symmetric).
    pub roles: Vec<String>,
    /// The operations, in declaration order.
    pub operations: Vec<OperationReflection>,
    /// For `.proto` contracts, the encoded `google.protobuf.FileDescriptorSet`
    /// of the contract's package and its imports.
    pub file_descriptor_set: Option<Bytes>,
}

/// One operation of a served contract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationReflection {
    /// Name as the schema spells it.
    pub name: String,
    /// Operation id, `package.Service/name`.
    pub op: String,
    /// Call kind (`unary`, `oneway`, `client_stream`, `server_stream`, `bidi`).
    pub kind: String,
    /// The role whose peers serve it, if only one does.
    pub role: Option<String>,
    /// Whether it is safe to run twice.
    pub idempotent: bool,
    /// Its documentation.
    pub docs: String,
    /// The request (or request item).
    pub request: MessageReflection,
    /// The reply (or reply item).
    pub reply: MessageReflection,
}

/// The schema of one side of an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageReflection {
    /// The type: a Rust type as the contract spells it (`String`,
    /// `(u32,u32,)`), or a `.proto` message's full name (`inventory.Item`).
    pub type_name: String,
    /// The request's named parameters (Rust contracts; empty otherwise and on replies).
    pub params: Vec<ParamReflection>,
    /// The type's JSON Schema as JSON text, when it provides one.
    pub json_schema: Option<String>,
}

/// One named request parameter of a Rust-trait operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamReflection {
    /// The parameter's name.
    pub name: String,
    /// Its Rust type.
    pub ty: String,
}

/// What a node adds to its reflection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReflection {
    /// The node's name.
    pub name: String,
    /// The group it is in right now. On the wire it keeps its first name,
    /// `session`.
    #[serde(rename = "session")]
    pub group: Option<String>,
    /// Its process incarnation.
    pub incarnation: u64,
    /// The URLs it listens on.
    pub endpoints: Vec<String>,
    /// How it takes part in each service it serves or calls.
    pub participation: Vec<Participation>,
}

/// How a node takes part in one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participation {
    /// `package.Service`.
    pub service: String,
    /// The role the node takes, if any.
    pub role: Option<String>,
    /// `session` (group-scoped; the wire keeps the scope's first name) or
    /// `global`.
    pub scope: String,
    /// Whether the node serves it (`false`: it only calls it).
    pub serves: bool,
}

/// Supplies a node's part of the answer at the moment it is asked.
pub(crate) type NodeInfo = Arc<dyn Fn() -> Option<NodeReflection> + Send + Sync>;

impl ServiceReflection {
    /// The reflection of one contract.
    pub fn of(descriptor: &ServiceDescriptor) -> Self {
        ServiceReflection {
            full_name: descriptor.full_name.to_owned(),
            package: descriptor.package.to_owned(),
            name: descriptor.name.to_owned(),
            version: descriptor.version,
            docs: descriptor.docs.to_owned(),
            codec: descriptor.codec.to_owned(),
            fingerprint: descriptor.fingerprint,
            roles: descriptor.roles.iter().map(|r| (*r).to_owned()).collect(),
            operations: descriptor
                .methods
                .iter()
                .map(|m| OperationReflection::of(descriptor, m))
                .collect(),
            file_descriptor_set: descriptor
                .file_descriptor_set
                .filter(|set| !set.is_empty())
                .map(Bytes::from_static),
        }
    }
}

impl OperationReflection {
    fn of(service: &ServiceDescriptor, method: &MethodDescriptor) -> Self {
        let schemas = (method.json_schemas)();
        let proto = service.file_descriptor_set.is_some();
        OperationReflection {
            name: method.name.to_owned(),
            op: method.op.to_owned(),
            kind: method.kind.as_str().to_owned(),
            role: method.role.map(str::to_owned),
            idempotent: method.idempotent,
            docs: method.docs.to_owned(),
            request: MessageReflection {
                type_name: type_name(method.request, proto),
                params: method
                    .params
                    .iter()
                    .map(|p| ParamReflection {
                        name: p.name.to_owned(),
                        ty: p.ty.to_owned(),
                    })
                    .collect(),
                json_schema: schemas.request,
            },
            reply: MessageReflection {
                type_name: type_name(method.reply, proto),
                params: Vec::new(),
                json_schema: schemas.reply,
            },
        }
    }
}

/// A descriptor's schema name as a type name: `.proto` descriptors carry the
/// message's full name followed by its field shape (`inventory.ItemId{…}`),
/// of which the name is what a reader wants.
fn type_name(schema: &str, proto: bool) -> String {
    let name = if proto {
        schema.split('{').next().unwrap_or(schema)
    } else {
        schema
    };
    name.trim_start_matches('.').to_owned()
}

/// The built-in describe route over the contracts and operations of `served`.
pub(crate) fn routes(served: &Router, node: Option<NodeInfo>) -> Router {
    let services: Arc<[ServiceReflection]> = served
        .descriptors()
        .iter()
        .map(|d| ServiceReflection::of(d))
        .collect();
    let mut operations: Vec<String> = served
        .operations()
        .into_iter()
        .chain([DESCRIBE_OP])
        .map(str::to_owned)
        .collect();
    operations.sort_unstable();
    operations.dedup();
    let operations: Arc<[String]> = operations.into();
    Router::new().unary(DESCRIBE_OP, move |ctx: CallContext, body: Bytes| {
        let services = services.clone();
        let operations = operations.clone();
        let node = node.clone();
        async move {
            let request: DescribeRequest = if body.is_empty() {
                DescribeRequest::default()
            } else {
                decode_request::<MsgPack, _>(body)?
            };
            let services: Vec<ServiceReflection> = match &request.service {
                None => services.to_vec(),
                Some(name) => {
                    let found: Vec<_> = services
                        .iter()
                        .filter(|s| &s.full_name == name)
                        .cloned()
                        .collect();
                    if found.is_empty() {
                        let served: Vec<&str> =
                            services.iter().map(|s| s.full_name.as_str()).collect();
                        return Err(Reject::new(
                            UNKNOWN_SERVICE,
                            format!("no service `{name}` here; served: {}", served.join(", ")),
                        ));
                    }
                    found
                }
            };
            let description = Description {
                node_id: ctx.connection().local_node().to_string(),
                node: node.as_ref().and_then(|f| f()),
                services,
                operations: operations.to_vec(),
            };
            encode_reply::<MsgPack, _>(&description)
        }
    })
}

/// Asks the peer of `conn` what it serves (only `service`, if given).
///
/// A peer built `without_reflection()` answers
/// [`CallError::NoSuchOperation`]; a `service` it does not serve is
/// [`CallError::Rejected`] with [`UNKNOWN_SERVICE`] and the served names.
pub async fn describe(
    conn: &Connection,
    service: Option<&str>,
    opts: CallOptions,
) -> Result<Description, CallError> {
    let request = DescribeRequest {
        service: service.map(str::to_owned),
    };
    let peer = || conn.peer().label().clone();
    let body = <MsgPack as Codec<DescribeRequest>>::encode(&request)
        .map_err(|e| CallError::encode(DESCRIBE_OP, peer(), e))?;
    let reply = conn.call(DESCRIBE_OP, body, opts).await?;
    decode_reply::<MsgPack, Description>(DESCRIBE_OP, conn, reply)
}

/// The machinery generated descriptors use to find a type's JSON Schema:
/// `(&Probe::<T>::NEW).json_schema()` resolves to [`Provided`](probe::Provided) when `T`
/// implements `schemars::JsonSchema` (with the `json-schema` feature on) and
/// to [`Absent`](probe::Absent) otherwise, by method resolution at compile time.
pub mod probe {
    use std::marker::PhantomData;

    /// Stands for the type `T` whose schema is wanted.
    pub struct Probe<T>(PhantomData<fn() -> T>);

    impl<T> Probe<T> {
        /// The probe.
        pub const NEW: Probe<T> = Probe(PhantomData);
    }

    /// The fallback: no schema.
    pub trait Absent {
        /// `None`.
        fn json_schema(&self) -> Option<String> {
            None
        }
    }

    impl<T> Absent for &Probe<T> {}

    /// Implemented for types with a schema.
    pub trait Provided {
        /// The type's JSON Schema as JSON text.
        fn json_schema(&self) -> Option<String>;
    }

    #[cfg(feature = "json-schema")]
    impl<T: schemars::JsonSchema> Provided for Probe<T> {
        fn json_schema(&self) -> Option<String> {
            serde_json::to_string(&schemars::schema_for!(T)).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's reflection as protocol v2 names it (the group was first
    /// called the session).
    #[derive(Serialize, Deserialize)]
    struct V2Node {
        name: String,
        session: Option<String>,
        incarnation: u64,
        endpoints: Vec<String>,
        participation: Vec<Participation>,
    }

    #[test]
    fn a_nodes_reflection_keeps_its_v2_bytes_after_the_group_rename() {
        let participation = vec![Participation {
            service: "demo.Chat".into(),
            role: None,
            scope: "session".into(),
            serves: true,
        }];
        let ours = NodeReflection {
            name: "ada".into(),
            group: Some("lab".into()),
            incarnation: 2,
            endpoints: vec!["tcp://127.0.0.1:4000".into()],
            participation: participation.clone(),
        };
        let v2 = V2Node {
            name: "ada".into(),
            session: Some("lab".into()),
            incarnation: 2,
            endpoints: vec!["tcp://127.0.0.1:4000".into()],
            participation,
        };
        let bytes = <MsgPack as Codec<NodeReflection>>::encode(&ours).expect("encodes");
        assert_eq!(
            bytes,
            <MsgPack as Codec<V2Node>>::encode(&v2).expect("encodes")
        );
        let back: NodeReflection = MsgPack::decode(bytes).expect("decodes");
        assert_eq!(back, ours);
    }
}
