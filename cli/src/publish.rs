//! `plexus pub`: publish events on a topic to the subscribers of a group.
//!
//! Subscribers follow publishers they are linked with, so this command
//! joins the mesh for a moment: it starts a node that serves the topic in
//! the `publisher` role (same name, same codec, hence the same fingerprint
//! as the `plexus::topic!` declaration), waits for subscribers to open their
//! streams, sends every event to those whose filters match, ends the streams
//! and leaves. Events are JSON converted to the topic's codec (MessagePack or
//! JSON; `.proto` topics are not supported here).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use plexus::discovery::{Beacon, Static};
use plexus::patterns::{topic_fingerprint, topic_matches};
use plexus::wire::key::SessionKey;
use plexus::{
    contract::{CallKind, JsonSchemas, MethodDescriptor, ServiceDescriptor},
    stream::Outbound,
    Node, Reject, Router,
};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::error::CliError;
use crate::{json, print_line, Global};

/// `plexus pub`.
#[derive(Debug, Args)]
pub struct PubArgs {
    /// The topic service, `package.Topic` (as declared with `plexus::topic!`).
    pub service: String,
    /// The topic each event is published on (e.g. `site-a/hall/t1`).
    pub topic: String,
    /// Events as JSON (none: one per line of stdin).
    pub events: Vec<String>,
    /// The group to publish in (subscribers link only inside theirs).
    #[arg(long)]
    pub group: Option<String>,
    /// Subscribers to wait for before publishing.
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// How long to wait for them.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub wait_subscribers: Duration,
    /// The topic's codec: `msgpack` (the `topic!` default) or `json`.
    #[arg(long, default_value = "msgpack")]
    pub codec: String,
    /// The name this short-lived publisher node announces.
    #[arg(long, default_value = "plexus-pub")]
    pub name: String,
}

/// One subscriber's stream.
struct Subscription {
    filters: Vec<String>,
    out: tokio::sync::Mutex<Outbound>,
}

#[derive(Clone, Default)]
struct Subscribers(Arc<Mutex<Vec<Arc<Subscription>>>>);

impl Subscribers {
    fn all(&self) -> Vec<Arc<Subscription>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn add(&self, sub: Arc<Subscription>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(sub);
    }
}

fn leak(text: String) -> &'static str {
    // One short-lived process publishes one topic: the descriptor lives as
    // long as the process, as a generated one would.
    Box::leak(text.into_boxed_str())
}

/// A descriptor equal (in name, roles, codec and fingerprint) to the one
/// `plexus::topic!` generates for `full_name`.
fn topic_descriptor(
    full_name: &str,
    codec: &'static str,
) -> Result<&'static ServiceDescriptor, CliError> {
    let (package, name) = full_name.rsplit_once('.').ok_or_else(|| {
        CliError::usage(format!(
            "`{full_name}` is not a topic service name; they look like package.Topic"
        ))
    })?;
    let full_name = leak(full_name.to_owned());
    let method = MethodDescriptor {
        name: "subscribe",
        op: leak(format!("{full_name}/subscribe")),
        kind: CallKind::ServerStream,
        role: Some("publisher"),
        idempotent: false,
        request: "plexus.Subscribe",
        reply: "json",
        docs: "Events on the topics matching the filters, from now on.",
        params: &[],
        json_schemas: JsonSchemas::none,
    };
    Ok(Box::leak(Box::new(ServiceDescriptor {
        package: leak(package.to_owned()),
        name: leak(name.to_owned()),
        full_name,
        version: 1,
        docs: "",
        roles: &["publisher", "subscriber"],
        methods: Box::leak(Box::new([method])),
        codec,
        fingerprint: topic_fingerprint(&[full_name, codec]),
        file_descriptor_set: None,
    })))
}

fn topic_router(
    descriptor: &'static ServiceDescriptor,
    subscribers: Subscribers,
    done: CancellationToken,
) -> Router {
    let op = descriptor.methods[0].op;
    Router::new()
        .server_stream(op, move |ctx, body: Bytes, mut out: Outbound| {
            let subscribers = subscribers.clone();
            let done = done.clone();
            async move {
                let request = json::from_msgpack(&body)
                    .map_err(|e| Reject::invalid_payload(format!("subscribe request: {e}")))?;
                let filters = request
                    .get("filters")
                    .and_then(|f| f.as_array())
                    .map(|f| {
                        f.iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                if out.send(Bytes::from_static(&[0])).await.is_err() {
                    return Ok(());
                }
                subscribers.add(Arc::new(Subscription {
                    filters,
                    out: tokio::sync::Mutex::new(out),
                }));
                tokio::select! {
                    () = ctx.cancelled() => {}
                    () = done.cancelled() => {}
                }
                Ok(())
            }
        })
        .with_descriptor(descriptor)
}

/// `plexus pub`.
pub async fn run(global: &Global, args: PubArgs) -> Result<(), CliError> {
    let codec: &'static str = match args.codec.as_str() {
        "msgpack" => "msgpack",
        "json" => "json",
        other => {
            return Err(CliError::usage(format!(
                "--codec {other}: plexus pub publishes msgpack or json topics"
            )))
        }
    };
    let events = read_events(&args.events).await?;
    let bodies = events
        .iter()
        .map(|text| encode_event(codec, &args.topic, text))
        .collect::<Result<Vec<_>, _>>()?;
    let descriptor = topic_descriptor(&args.service, codec)?;
    let subscribers = Subscribers::default();
    let done = CancellationToken::new();
    let mut builder = Node::builder(args.name.clone())
        .serve_as(
            topic_router(descriptor, subscribers.clone(), done.clone()),
            "publisher",
        )
        .without_reflection();
    if let Some(group) = &args.group {
        builder = builder.group(group.clone());
    }
    let d = &global.discovery;
    builder = if !d.static_urls.is_empty() {
        builder.discovery(Static::new(d.static_urls.clone()))
    } else if !d.etcd.is_empty() {
        return Err(CliError::usage(
            "plexus pub finds subscribers by beacon or --static, not etcd",
        ));
    } else {
        let mut beacon = Beacon::loopback()
            .multicast_group(d.beacon_multicast_group)
            .port(d.beacon_port)
            .interface(d.beacon_interface);
        if let Some(key) = &d.beacon_key {
            beacon = beacon.key(SessionKey::new(key.as_bytes()));
        }
        builder.discovery(beacon)
    };
    let node = builder
        .start()
        .await
        .map_err(|e| CliError::Unreachable(format!("cannot start the publisher node: {e}")))?;
    let waited = tokio::time::timeout(args.wait_subscribers, async {
        while subscribers.all().len() < args.subscribers {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let outcome = match waited {
        Err(_) => Err(CliError::Unreachable(format!(
            "{} of {} subscriber(s) of {} subscribed within {}\n  try: check the --group and discovery flags, or a longer --wait-subscribers",
            subscribers.all().len(),
            args.subscribers,
            args.service,
            humantime::format_duration(args.wait_subscribers)
        ))),
        Ok(()) => publish(&subscribers, &args.topic, &bodies).await,
    };
    // Ending the streams lets the node's graceful stop finish at once.
    done.cancel();
    let _ = node.stop().await;
    let (published, reached) = outcome?;
    if global.json {
        print_line(
            &serde_json::json!({ "published": published, "subscribers": reached }).to_string(),
        );
    } else {
        eprintln!(
            "published {published} event(s) on {} to {reached} subscriber(s)",
            args.topic
        );
    }
    Ok(())
}

async fn read_events(given: &[String]) -> Result<Vec<String>, CliError> {
    if !given.is_empty() {
        return Ok(given.to_vec());
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut events = Vec::new();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| CliError::usage(format!("reading stdin: {e}")))?
    {
        if !line.trim().is_empty() {
            events.push(line);
        }
    }
    Ok(events)
}

fn encode_event(codec: &str, topic: &str, text: &str) -> Result<Bytes, CliError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| CliError::usage(format!("event is not valid JSON ({e}): {text}")))?;
    let payload = match codec {
        "json" => Bytes::from(value.to_string()),
        _ => json::to_msgpack(&value).map_err(|e| CliError::usage(format!("event: {e}")))?,
    };
    let mut item = BytesMut::with_capacity(payload.len() + topic.len() + 6);
    item.put_u8(1);
    plexus::wire::varint::put(&mut item, topic.len() as u64);
    item.put_slice(topic.as_bytes());
    item.put_slice(&payload);
    Ok(item.freeze())
}

/// Sends every event to every matching subscriber; returns how many events
/// went out and how many subscribers took at least one.
async fn publish(
    subscribers: &Subscribers,
    topic: &str,
    bodies: &[Bytes],
) -> Result<(usize, usize), CliError> {
    let mut reached = 0;
    for sub in subscribers.all() {
        if !topic_matches(&sub.filters, topic) {
            continue;
        }
        let mut out = sub.out.lock().await;
        let mut ok = true;
        for body in bodies {
            if out.send(body.clone()).await.is_err() {
                ok = false;
                break;
            }
        }
        if ok {
            reached += 1;
        }
    }
    Ok((bodies.len(), reached))
}
