//! `plexus sub`: follow a publisher's topic and print each event as a JSON
//! line `{"topic": …, "event": …}`.
//!
//! Speaks the topic wire format of `plexus::patterns` (see
//! `docs/PATTERNS.md`): the request is `{filters: [string]}`, each stream
//! item a tag byte — `0` subscribed, `1` an event: varint topic length, the
//! topic, then the event in the topic's codec.

use std::time::Duration;

use bytes::Buf;
use clap::Args;
use futures_util::StreamExt;
use plexus::reflection::{self, Description, ServiceReflection};
use plexus::CallOptions;
use prost_reflect::MessageDescriptor;
use serde_json::{json, Value as Json};

use crate::error::{did_you_mean, nearest, CliError};
use crate::{json, payload, print_line, target, Global};

/// `plexus sub`.
#[derive(Debug, Args)]
pub struct SubArgs {
    /// A URL or a node name: a node that publishes the topic.
    pub target: String,
    /// Topic filters: prefixes, `*` matching within one `/` segment
    /// (none: every topic).
    pub filters: Vec<String>,
    /// The topic service (`package.Topic`), when the target publishes several.
    #[arg(long, value_name = "SERVICE")]
    pub topic: Option<String>,
    /// Stop after this many events.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Stop after this long.
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

/// How to turn one event into JSON.
enum EventCodec {
    MsgPack,
    Json,
    Proto(MessageDescriptor),
    /// A `.proto` event whose message is not in any descriptor set served.
    Opaque,
}

/// Whether `service` is a topic (declared with `plexus::topic!`).
pub fn is_topic(service: &ServiceReflection) -> bool {
    service.roles == ["publisher", "subscriber"]
        && service
            .operations
            .iter()
            .any(|o| o.name == "subscribe" && o.kind == "server_stream")
}

/// The topic service the user means on `description`.
pub fn pick_topic<'a>(
    description: &'a Description,
    wanted: Option<&str>,
    label: &str,
) -> Result<&'a ServiceReflection, CliError> {
    let topics: Vec<&ServiceReflection> = description
        .services
        .iter()
        .filter(|s| is_topic(s))
        .collect();
    let names = || {
        topics
            .iter()
            .map(|t| t.full_name.as_str())
            .collect::<Vec<_>>()
    };
    match wanted {
        Some(name) => topics.iter().copied().find(|t| t.full_name == name).ok_or_else(|| {
            CliError::usage(format!(
                "{label} publishes no topic `{name}`{}\n  topics: {}",
                did_you_mean(&nearest(name, names())),
                names().join(", ")
            ))
        }),
        None => match topics.as_slice() {
            [one] => Ok(one),
            [] => Err(CliError::usage(format!(
                "{label} publishes no topic\n  try: `plexus ls` for the nodes serving one in the publisher role"
            ))),
            _ => Err(CliError::usage(format!(
                "{label} publishes several topics: {}\n  try: --topic <one of them>",
                names().join(", ")
            ))),
        },
    }
}

fn event_codec(description: &Description, topic: &ServiceReflection) -> EventCodec {
    match topic.codec.as_str() {
        "msgpack" => EventCodec::MsgPack,
        "json" => EventCodec::Json,
        _ => {
            // A `.proto` topic names its event by the Rust type prost
            // generated; the message is the one of that name in the
            // package, found in any served contract's descriptor set.
            let Some(operation) = topic.operations.first() else {
                return EventCodec::Opaque;
            };
            let short = operation
                .reply
                .type_name
                .rsplit("::")
                .next()
                .unwrap_or("")
                .trim();
            let full = if topic.package.is_empty() {
                short.to_owned()
            } else {
                format!("{}.{short}", topic.package)
            };
            description
                .services
                .iter()
                .filter(|s| s.file_descriptor_set.is_some())
                .filter_map(|s| payload::pool(s).ok())
                .find_map(|pool| pool.get_message_by_name(&full))
                .map_or(EventCodec::Opaque, EventCodec::Proto)
        }
    }
}

fn decode_event(codec: &EventCodec, bytes: &[u8]) -> Result<Json, String> {
    match codec {
        EventCodec::MsgPack => json::from_msgpack(bytes).map_err(|e| e.to_string()),
        EventCodec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        EventCodec::Proto(message) => payload::proto_to_json(message, bytes),
        EventCodec::Opaque => Ok(json::raw_to_json(bytes)),
    }
}

/// `plexus sub`.
pub async fn run(global: &Global, args: SubArgs) -> Result<(), CliError> {
    let connected = target::connect(global, &args.target).await?;
    let conn = connected.conn.clone();
    let opts = CallOptions::new().timeout(global.timeout.unwrap_or(Duration::from_secs(10)));
    let description = reflection::describe(&conn, None, opts)
        .await
        .map_err(|e| CliError::call(reflection::DESCRIBE_OP, e, None))?;
    let topic = pick_topic(&description, args.topic.as_deref(), &connected.label)?;
    let op = topic
        .operations
        .iter()
        .find(|o| o.name == "subscribe")
        .map(|o| o.op.clone())
        .unwrap_or_default();
    let codec = event_codec(&description, topic);
    let request = json::to_msgpack(&json!({ "filters": args.filters }))
        .map_err(|e| CliError::usage(e.to_string()))?;
    let mut opts = CallOptions::new();
    if let Some(t) = global.timeout {
        opts = opts.timeout(t);
    }
    let mut inbound = conn
        .server_stream(&op, request, opts)
        .await
        .map_err(|e| CliError::call(&op, e, None))?;
    let stop = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    let mut seen = 0u64;
    let outcome = loop {
        if args.count.is_some_and(|n| seen >= n) {
            break Ok(());
        }
        let item = tokio::select! {
            _ = &mut stop => break Ok(()),
            item = inbound.next() => item,
        };
        let Some(item) = item else {
            break Ok(());
        };
        let mut bytes = match item {
            Ok(bytes) => bytes,
            Err(e) => break Err(CliError::call(&op, e, None)),
        };
        match bytes.first().copied() {
            Some(0) => eprintln!("subscribed to {} on {}", topic.full_name, connected.label),
            Some(1) => {
                bytes.advance(1);
                let Ok(len) = plexus::wire::varint::get(&mut bytes, "topic length") else {
                    break Err(CliError::Call(
                        "a malformed event arrived (bad topic length)".into(),
                    ));
                };
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > bytes.len() {
                    break Err(CliError::Call(
                        "a malformed event arrived (topic past the end)".into(),
                    ));
                }
                let name = String::from_utf8_lossy(&bytes.split_to(len)).into_owned();
                let event = match decode_event(&codec, &bytes) {
                    Ok(event) => event,
                    Err(e) => {
                        break Err(CliError::Call(format!(
                            "event on {name} does not decode: {e}"
                        )))
                    }
                };
                print_line(&json!({ "topic": name, "event": event }).to_string());
                seen += 1;
            }
            _ => break Err(CliError::Call("an item of an unknown kind arrived".into())),
        }
    };
    drop(inbound);
    conn.close().await;
    outcome
}
