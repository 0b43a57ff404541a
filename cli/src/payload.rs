//! Payloads: JSON in, the contract's codec on the wire, JSON out.
//!
//! Owns choosing how an operation's messages convert — MessagePack needs no
//! schema, JSON passes through, `.proto` messages go through `prost-reflect`
//! with the contract's descriptor set, operations without a contract take
//! raw text — and saying what an operation expects when the input is wrong.

use bytes::Bytes;
use plexus::reflection::{Description, OperationReflection, ServiceReflection};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, SerializeOptions};
use serde_json::Value as Json;

use crate::error::CliError;
use crate::json;

/// How one operation's messages are converted.
#[derive(Clone, Debug)]
pub enum Payload {
    /// MessagePack, converted value by value.
    MsgPack {
        /// The request's parameter names, for `{name: value}` arguments.
        params: Vec<String>,
    },
    /// JSON as is.
    Json,
    /// Protocol Buffers, by reflection.
    Proto {
        /// The request message.
        request: MessageDescriptor,
        /// The reply message.
        reply: MessageDescriptor,
    },
    /// No contract: the argument's text as bytes, the reply as text.
    Raw,
}

/// Everything `call` and `bench` need to know about one operation.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The op id.
    pub op: String,
    /// `unary`, `oneway`, `client_stream`, `server_stream`, `bidi`.
    pub kind: String,
    /// The conversion.
    pub payload: Payload,
    /// What the request looks like, for error messages.
    pub shape: String,
}

impl Plan {
    /// The plan for `op` from the server's reflection; unknown ops are an
    /// error naming the nearest ones.
    pub fn from_reflection(description: &Description, op: &str) -> Result<Plan, CliError> {
        if let Some((service, operation)) = description.operation(op) {
            return Plan::for_operation(service, operation);
        }
        if description.operations.iter().any(|o| o == op) {
            return Ok(Plan {
                op: op.to_owned(),
                kind: "unary".into(),
                payload: Payload::Raw,
                shape: format!(
                    "{op} has no contract (a raw handler): its argument is sent as plain text"
                ),
            });
        }
        let mut candidates: Vec<&str> = description.operations.iter().map(String::as_str).collect();
        for service in &description.services {
            candidates.extend(service.operations.iter().map(|o| o.op.as_str()));
        }
        candidates.sort_unstable();
        candidates.dedup();
        let near = crate::error::nearest(op, candidates.iter().copied());
        let hint = if near.is_empty() {
            "\n  try: `plexus describe <target>` lists every operation".to_owned()
        } else {
            crate::error::did_you_mean(&near)
        };
        Err(CliError::usage(format!(
            "no operation `{op}` on the target{hint}"
        )))
    }

    fn for_operation(
        service: &ServiceReflection,
        operation: &OperationReflection,
    ) -> Result<Plan, CliError> {
        let payload = match service.codec.as_str() {
            "msgpack" => Payload::MsgPack {
                params: operation
                    .request
                    .params
                    .iter()
                    .map(|p| p.name.clone())
                    .collect(),
            },
            "json" => Payload::Json,
            "protobuf" => {
                let pool = pool(service)?;
                Payload::Proto {
                    request: message(&pool, &operation.request.type_name, service)?,
                    reply: message(&pool, &operation.reply.type_name, service)?,
                }
            }
            other => {
                return Err(CliError::usage(format!(
                    "{} uses the codec `{other}`, which this plexus cannot convert from JSON",
                    service.full_name
                )))
            }
        };
        Ok(Plan {
            op: operation.op.clone(),
            kind: operation.kind.clone(),
            shape: shape(operation, &payload),
            payload,
        })
    }

    /// A plan without reflection: the codec named by `--codec`.
    pub fn blind(op: &str, kind: &str, codec: &str) -> Result<Plan, CliError> {
        let payload = match codec {
            "msgpack" => Payload::MsgPack { params: Vec::new() },
            "json" => Payload::Json,
            "raw" => Payload::Raw,
            other => {
                return Err(CliError::usage(format!(
                "--codec {other}: without reflection only msgpack, json and raw can be converted"
            )))
            }
        };
        Ok(Plan {
            op: op.to_owned(),
            kind: kind.to_owned(),
            payload,
            shape: format!("whatever {op} expects, as {codec}"),
        })
    }

    /// Encodes one request (or request item) from its argument text.
    pub fn encode(&self, text: &str) -> Result<Bytes, CliError> {
        if let Payload::Raw = self.payload {
            return Ok(Bytes::from(text.to_owned()));
        }
        // No argument: an empty message for `.proto`, `()` (nil) otherwise.
        let text = match (&self.payload, text.trim().is_empty()) {
            (Payload::Proto { .. }, true) => "{}",
            (_, true) => "null",
            _ => text,
        };
        let value: Json = serde_json::from_str(text).map_err(|e| {
            CliError::usage(format!(
                "the argument for {} is not valid JSON ({e}): {text}\n  expected: {}",
                self.op, self.shape
            ))
        })?;
        match &self.payload {
            Payload::MsgPack { params } => {
                let value = by_name(value, params);
                json::to_msgpack(&value).map_err(|e| {
                    CliError::usage(format!(
                        "the argument for {}: {e}\n  expected: {}",
                        self.op, self.shape
                    ))
                })
            }
            Payload::Json => Ok(Bytes::from(value.to_string())),
            Payload::Proto { request, .. } => {
                let message = DynamicMessage::deserialize(request.clone(), value).map_err(|e| {
                    CliError::usage(format!(
                        "the argument for {} does not fit {}: {e}\n  expected: {}",
                        self.op,
                        request.full_name(),
                        self.shape
                    ))
                })?;
                Ok(Bytes::from(message.encode_to_vec()))
            }
            Payload::Raw => unreachable!("handled above"),
        }
    }

    /// Decodes one reply (or reply item) to JSON.
    pub fn decode(&self, bytes: &[u8]) -> Result<Json, CliError> {
        let bad = |e: String| {
            CliError::Call(format!(
                "the reply of {} could not be decoded: {e}",
                self.op
            ))
        };
        match &self.payload {
            Payload::MsgPack { .. } => json::from_msgpack(bytes).map_err(|e| bad(e.to_string())),
            Payload::Json => serde_json::from_slice(bytes).map_err(|e| bad(e.to_string())),
            Payload::Proto { reply, .. } => proto_to_json(reply, bytes).map_err(bad),
            Payload::Raw => Ok(json::raw_to_json(bytes)),
        }
    }
}

/// Decodes a `.proto` message to its canonical JSON, zero fields included.
pub fn proto_to_json(message: &MessageDescriptor, bytes: &[u8]) -> Result<Json, String> {
    let decoded = DynamicMessage::decode(message.clone(), bytes).map_err(|e| e.to_string())?;
    let options = SerializeOptions::new().skip_default_fields(false);
    decoded
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| e.to_string())
}

/// `{"a": 1, "b": 2}` for an operation taking `(a, b)` becomes `[1, 2]`, the
/// tuple the parameters travel as; anything else is left alone.
fn by_name(value: Json, params: &[String]) -> Json {
    let Json::Object(map) = &value else {
        return value;
    };
    if params.len() < 2 || !map.keys().all(|k| params.contains(k)) {
        return value;
    }
    Json::Array(
        params
            .iter()
            .map(|p| map.get(p).cloned().unwrap_or(Json::Null))
            .collect(),
    )
}

/// The descriptor pool of a `.proto` contract.
pub fn pool(service: &ServiceReflection) -> Result<DescriptorPool, CliError> {
    let bytes = service.file_descriptor_set.as_ref().ok_or_else(|| {
        CliError::Call(format!(
            "{} is a protobuf service but its reflection carries no descriptor set",
            service.full_name
        ))
    })?;
    DescriptorPool::decode(bytes.as_ref()).map_err(|e| {
        CliError::Call(format!(
            "the descriptor set of {} does not decode: {e}",
            service.full_name
        ))
    })
}

fn message(
    pool: &DescriptorPool,
    name: &str,
    service: &ServiceReflection,
) -> Result<MessageDescriptor, CliError> {
    pool.get_message_by_name(name).ok_or_else(|| {
        CliError::Call(format!(
            "message {name} is not in the descriptor set of {}",
            service.full_name
        ))
    })
}

/// What the request of `operation` looks like, with an example.
fn shape(operation: &OperationReflection, payload: &Payload) -> String {
    match payload {
        Payload::Proto { request, .. } => {
            format!(
                "{} {} — e.g. '{}'",
                request.full_name(),
                fields_text(request),
                example_message(request, 0)
            )
        }
        _ => {
            let params = &operation.request.params;
            let listed = params
                .iter()
                .map(|p| format!("{}: {}", p.name, p.ty))
                .collect::<Vec<_>>()
                .join(", ");
            match params.as_slice() {
                [] => format!("{} takes no arguments — send 'null'", operation.op),
                [one] => format!(
                    "({listed}) — one JSON value, e.g. '{}'",
                    example_rust(&one.ty)
                ),
                many => format!(
                    "({listed}) — a JSON array in this order, e.g. '[{}]', or an object keyed by name",
                    many.iter()
                        .map(|p| example_rust(&p.ty))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    }
}

/// `{ sku: string, quantity: int64 }`.
pub fn fields_text(message: &MessageDescriptor) -> String {
    let fields: Vec<String> = message
        .fields()
        .map(|f| {
            let ty = kind_name(&f.kind());
            let ty = if f.is_map() {
                format!("map<{ty}>")
            } else if f.is_list() {
                format!("repeated {ty}")
            } else {
                ty
            };
            format!("{}: {ty}", f.json_name())
        })
        .collect();
    if fields.is_empty() {
        "{}".to_owned()
    } else {
        format!("{{ {} }}", fields.join(", "))
    }
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn example_message(message: &MessageDescriptor, depth: usize) -> String {
    let fields: Vec<String> = message
        .fields()
        .map(|f| {
            let value = if f.is_list() {
                "[]".to_owned()
            } else if f.is_map() {
                "{}".to_owned()
            } else {
                match f.kind() {
                    Kind::String => "\"\"".into(),
                    Kind::Bool => "false".into(),
                    Kind::Bytes => "\"\"".into(),
                    Kind::Double | Kind::Float => "0.0".into(),
                    Kind::Enum(e) => e
                        .values()
                        .next()
                        .map_or("0".into(), |v| format!("\"{}\"", v.name())),
                    Kind::Message(m) if depth < 2 => example_message(&m, depth + 1),
                    Kind::Message(_) => "{}".into(),
                    Kind::Int64 | Kind::Uint64 | Kind::Sint64 | Kind::Fixed64 | Kind::Sfixed64 => {
                        "\"0\"".into()
                    }
                    _ => "0".into(),
                }
            };
            format!("\"{}\": {value}", f.json_name())
        })
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// A sample JSON value for a Rust type name.
fn example_rust(ty: &str) -> String {
    let ty = ty.trim();
    match ty {
        "String" | "&str" | "str" => "\"text\"".into(),
        "bool" => "false".into(),
        "f32" | "f64" => "0.5".into(),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64" | "i128"
        | "isize" => "0".into(),
        "()" => "null".into(),
        _ if ty.starts_with("Vec<") || ty.starts_with('[') => "[]".into(),
        _ if ty.starts_with("Option<") => "null".into(),
        _ if ty.starts_with("HashMap<") || ty.starts_with("BTreeMap<") => "{}".into(),
        _ if ty.starts_with('(') => "[]".into(),
        _ => "{…}".into(),
    }
}
