//! `plexus describe`: a server's contracts from its reflection, for people
//! (text) or programs (`--json`).

use std::time::Duration;

use clap::Args;
use plexus::reflection::{self, Description, OperationReflection, ServiceReflection};
use plexus::{CallError, CallOptions};
use serde_json::{json, Value as Json};

use crate::error::{did_you_mean, nearest, CliError};
use crate::payload::{self, fields_text};
use crate::{print_line, target, Global};

/// `plexus describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// A URL (`tcp://127.0.0.1:4000`) or a node name.
    pub target: String,
    /// Only this service (`package.Service`), or one operation
    /// (`package.Service/method`).
    pub what: Option<String>,
}

/// `plexus describe`.
pub async fn run(global: &Global, args: DescribeArgs) -> Result<(), CliError> {
    let connected = target::connect(global, &args.target).await?;
    let opts = CallOptions::new().timeout(global.timeout.unwrap_or(Duration::from_secs(10)));
    let described = reflection::describe(&connected.conn, None, opts).await;
    connected.conn.close().await;
    let description = described.map_err(|e| match e {
        CallError::NoSuchOperation { .. } => CliError::usage(format!(
            "{} does not serve reflection (it was built without_reflection())\n  try: `plexus call --codec …` if you know the operation",
            connected.label
        )),
        other => CliError::call(reflection::DESCRIBE_OP, other, None),
    })?;
    let (service, op) = match args.what.as_deref() {
        None => (None, None),
        Some(what) => match what.split_once('/') {
            Some((s, o)) => (Some(s), Some(o)),
            None => (Some(what), None),
        },
    };
    let services: Vec<&ServiceReflection> = match service {
        None => description.services.iter().collect(),
        Some(name) => match description.service(name) {
            Some(s) => vec![s],
            None => {
                let names = description.services.iter().map(|s| s.full_name.as_str());
                return Err(CliError::usage(format!(
                    "{} serves no service `{name}`{}\n  served: {}",
                    connected.label,
                    did_you_mean(&nearest(name, names)),
                    description
                        .services
                        .iter()
                        .map(|s| s.full_name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        },
    };
    if let (Some(op), [service]) = (op, services.as_slice()) {
        let Some(operation) = service.operations.iter().find(|o| o.name == op) else {
            let names = service.operations.iter().map(|o| o.name.as_str());
            return Err(CliError::usage(format!(
                "{} has no operation `{op}`{}\n  operations: {}",
                service.full_name,
                did_you_mean(&nearest(op, names)),
                service
                    .operations
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if global.json {
            print_line(&pretty(&operation_json(service, operation)));
        } else {
            print_operation(service, operation, true);
        }
        return Ok(());
    }
    if global.json {
        print_line(&pretty(&description_json(&description, &services)));
    } else {
        print_description(&description, &services);
    }
    Ok(())
}

fn pretty(value: &Json) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn print_description(description: &Description, services: &[&ServiceReflection]) {
    let id = &description.node_id;
    match &description.node {
        Some(node) => print_line(&format!(
            "node {} {id} group={} at {}",
            node.name,
            node.group.as_deref().unwrap_or("-"),
            node.endpoints.join(" ")
        )),
        None => print_line(&format!("endpoint {id}")),
    }
    for service in services {
        print_line("");
        let role = description.node.as_ref().and_then(|n| {
            n.participation
                .iter()
                .find(|p| p.service == service.full_name)
                .and_then(|p| p.role.clone())
        });
        let mut header = format!(
            "{} v{}  codec {}  fingerprint {:016x}",
            service.full_name, service.version, service.codec, service.fingerprint
        );
        if !service.roles.is_empty() {
            header.push_str(&format!("  roles {}", service.roles.join(", ")));
        }
        if let Some(role) = role {
            header.push_str(&format!("  (this node: {role})"));
        }
        print_line(&header);
        for line in service.docs.lines() {
            print_line(&format!("  // {line}"));
        }
        for operation in &service.operations {
            print_operation(service, operation, false);
        }
        if service.file_descriptor_set.is_some() {
            if let Ok(pool) = payload::pool(service) {
                print_line("  messages:");
                let mut names: Vec<&String> = Vec::new();
                for operation in &service.operations {
                    for name in [&operation.request.type_name, &operation.reply.type_name] {
                        if !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
                for name in names {
                    if let Some(message) = pool.get_message_by_name(name) {
                        print_line(&format!("    {name} {}", fields_text(&message)));
                    }
                }
            }
        }
    }
    let contracted: Vec<&str> = description
        .services
        .iter()
        .flat_map(|s| s.operations.iter().map(|o| o.op.as_str()))
        .collect();
    let raw: Vec<&str> = description
        .operations
        .iter()
        .map(String::as_str)
        .filter(|op| !contracted.contains(op) && !op.starts_with("plexus."))
        .collect();
    if !raw.is_empty() {
        print_line("");
        print_line("operations without a contract (raw bytes; call them with text):");
        for op in raw {
            print_line(&format!("  {op}"));
        }
    }
}

/// `  hello  unary  (name: String) -> String`, plus docs and schemas when `detail`.
fn print_operation(service: &ServiceReflection, operation: &OperationReflection, detail: bool) {
    let signature = signature(service, operation);
    let mut flags = Vec::new();
    if let Some(role) = &operation.role {
        flags.push(format!("role {role}"));
    }
    if operation.idempotent {
        flags.push("idempotent".into());
    }
    let flags = if flags.is_empty() {
        String::new()
    } else {
        format!("  [{}]", flags.join(", "))
    };
    print_line(&format!(
        "  {:<14} {:<13} {signature}{flags}",
        operation.name, operation.kind
    ));
    if !detail {
        return;
    }
    print_line(&format!("  op id: {}", operation.op));
    for line in operation.docs.lines() {
        print_line(&format!("  // {line}"));
    }
    if let Ok(pool) = payload::pool(service) {
        for (side, name) in [
            ("request", &operation.request.type_name),
            ("reply", &operation.reply.type_name),
        ] {
            if let Some(message) = pool.get_message_by_name(name) {
                print_line(&format!("  {side}: {name} {}", fields_text(&message)));
            }
        }
    }
    for (side, schema) in [
        ("request", &operation.request.json_schema),
        ("reply", &operation.reply.json_schema),
    ] {
        if let Some(schema) = schema {
            let schema: Json = serde_json::from_str(schema).unwrap_or(Json::String(schema.clone()));
            print_line(&format!("  {side} JSON Schema: {schema}"));
        }
    }
}

fn signature(service: &ServiceReflection, operation: &OperationReflection) -> String {
    let streams_in = matches!(operation.kind.as_str(), "client_stream" | "bidi");
    let streams_out = matches!(operation.kind.as_str(), "server_stream" | "bidi");
    let request = if service.file_descriptor_set.is_some() || streams_in {
        operation.request.type_name.clone()
    } else {
        let params: Vec<String> = operation
            .request
            .params
            .iter()
            .map(|p| format!("{}: {}", p.name, p.ty))
            .collect();
        format!("({})", params.join(", "))
    };
    let request = if streams_in {
        format!("stream {request}")
    } else {
        request
    };
    match operation.kind.as_str() {
        "oneway" => request,
        _ if streams_out => format!("{request} -> stream {}", operation.reply.type_name),
        _ => format!("{request} -> {}", operation.reply.type_name),
    }
}

fn operation_json(service: &ServiceReflection, operation: &OperationReflection) -> Json {
    let mut value = serde_json::to_value(operation).unwrap_or_default();
    if let (Ok(pool), Some(map)) = (payload::pool(service), value.as_object_mut()) {
        for side in ["request", "reply"] {
            let name = if side == "request" {
                &operation.request.type_name
            } else {
                &operation.reply.type_name
            };
            if let (Some(message), Some(Json::Object(entry))) =
                (pool.get_message_by_name(name), map.get_mut(side))
            {
                entry.insert("fields".into(), message_fields(&message));
            }
        }
    }
    if let Some(map) = value.as_object_mut() {
        for side in ["request", "reply"] {
            if let Some(Json::Object(entry)) = map.get_mut(side) {
                if let Some(Json::String(schema)) = entry.get("json_schema").cloned() {
                    let parsed: Json =
                        serde_json::from_str(&schema).unwrap_or(Json::String(schema));
                    entry.insert("json_schema".into(), parsed);
                }
            }
        }
        map.insert("service".into(), Json::String(service.full_name.clone()));
    }
    value
}

fn message_fields(message: &prost_reflect::MessageDescriptor) -> Json {
    Json::Array(
        message
            .fields()
            .map(|f| {
                json!({
                    "name": f.name(),
                    "json_name": f.json_name(),
                    "number": f.number(),
                    "type": match f.kind() {
                        prost_reflect::Kind::Message(m) => m.full_name().to_owned(),
                        prost_reflect::Kind::Enum(e) => e.full_name().to_owned(),
                        other => format!("{other:?}").to_lowercase(),
                    },
                    "repeated": f.is_list(),
                    "map": f.is_map(),
                })
            })
            .collect(),
    )
}

fn description_json(description: &Description, services: &[&ServiceReflection]) -> Json {
    json!({
        "node_id": description.node_id,
        "node": description.node,
        "services": services.iter().map(|s| {
            let mut value = json!({
                "full_name": s.full_name,
                "package": s.package,
                "name": s.name,
                "version": s.version,
                "docs": s.docs,
                "codec": s.codec,
                "fingerprint": format!("{:016x}", s.fingerprint),
                "roles": s.roles,
                "operations": s.operations.iter().map(|o| operation_json(s, o)).collect::<Vec<_>>(),
            });
            if let (Some(set), Some(map)) = (&s.file_descriptor_set, value.as_object_mut()) {
                use base64::Engine;
                map.insert(
                    "file_descriptor_set".into(),
                    Json::String(base64::engine::general_purpose::STANDARD.encode(set)),
                );
            }
            value
        }).collect::<Vec<_>>(),
        "operations": description.operations,
    })
}
