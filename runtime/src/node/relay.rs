//! Mesh relay: a broadcast that reaches every node of a mesh, not only this
//! node's own links (TCPPeer's mesh broadcast).
//!
//! A relayed call travels as the built-in server-stream operation
//! [`RELAY_OP`] over the links of one service. Every node it reaches
//! 1. drops it if it has seen its broadcast id within the id's lifetime
//!    (the call's deadline), answering with an empty stream — so in a mesh
//!    with cycles each node answers once;
//! 2. runs its own handler for the operation;
//! 3. relays it, one hop further, to its members of the service except the
//!    one it came from and the origin, unless the hop limit is reached;
//! 4. streams back its own reply and every reply relayed to it, each tagged
//!    with the node that produced it.
//!
//! The origin merges the members' streams into one [`Broadcast`]. Deadlines
//! cascade: every hop relays with the time it has left, less a small margin,
//! so that a node whose neighbour never answers can still say so before its
//! own deadline. Dropping the broadcast cancels the whole tree.
//!
//! Items on the wire: 16 bytes of the answering node's id (big-endian), one
//! byte of hops from the origin, then the MessagePack [`Outcome`].

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::broadcast::Broadcast;
use super::Shared;
use crate::codec::{decode_request, Codec, CodecError, MsgPack};
use crate::connection::Outbound;
use crate::connection::Route;
use crate::wire::SystemCode;
use crate::{CallContext, CallError, CallOptions, Connection, NodeId, Reject, Router};

/// The operation id of the built-in relay every node serves.
pub const RELAY_OP: &str = "plexus.Node/relay";

/// Hops a relayed call goes from its origin unless told otherwise.
pub const DEFAULT_MAX_HOPS: u8 = 32;

/// Most broadcast ids a node remembers at once; beyond it, new relays are
/// refused as overloaded rather than letting a flood grow memory.
const MAX_REMEMBERED: usize = 65_536;

/// How long an id is remembered at least, and when the call has no deadline.
const MIN_MEMORY: Duration = Duration::from_secs(1);
const NO_DEADLINE_MEMORY: Duration = Duration::from_secs(60);

/// What a relayed call carries (MessagePack).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RelayRequest {
    /// The broadcast id, random at the origin.
    id: (u64, u64),
    /// The origin's node id (32 hex digits).
    origin: String,
    /// The service whose links it travels.
    service: String,
    /// The operation every node runs.
    op: String,
    body: Bytes,
    oneway: bool,
    /// Hops from the origin to the node receiving this request (1 for the
    /// origin's members).
    hops: u8,
    max_hops: u8,
}

/// How one node's run of a relayed call ended.
#[derive(Debug, Serialize, Deserialize)]
enum Outcome {
    Reply(Bytes),
    Rejected {
        code: u32,
        message: String,
        details: Bytes,
    },
    Failed {
        kind: FailKind,
        message: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum FailKind {
    NoSuchOperation,
    HandlerFailed,
    Decode,
    Timeout,
    Cancelled,
    Unreachable,
    Overloaded,
}

/// The broadcast ids seen lately, each until it expires.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    ids: Mutex<HashMap<(u64, u64), Instant>>,
}

impl Seen {
    /// Remembers `id` for `keep`; `Ok(false)` if it was remembered already,
    /// `Err(())` if the table is full of live ids.
    fn first_time(&self, id: (u64, u64), keep: Duration) -> Result<bool, ()> {
        let now = Instant::now();
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.get(&id).is_some_and(|until| *until > now) {
            return Ok(false);
        }
        if ids.len() >= MAX_REMEMBERED / 2 {
            ids.retain(|_, until| *until > now);
        }
        if ids.len() >= MAX_REMEMBERED {
            return Err(());
        }
        ids.insert(id, now + keep.max(MIN_MEMORY));
        Ok(true)
    }
}

/// A relayed call as the origin starts it.
pub(crate) struct Call {
    pub(crate) service: &'static str,
    pub(crate) op: &'static str,
    pub(crate) body: Result<Bytes, CodecError>,
    pub(crate) oneway: bool,
    pub(crate) deadline: Duration,
    pub(crate) max_hops: u8,
}

fn id_bytes(id: NodeId) -> [u8; 16] {
    id.0.to_be_bytes()
}

fn item(from: NodeId, hops: u8, outcome: &Outcome) -> Bytes {
    let body = <MsgPack as Codec<Outcome>>::encode(outcome).unwrap_or_default();
    let mut b = BytesMut::with_capacity(17 + body.len());
    b.put_slice(&id_bytes(from));
    b.put_u8(hops);
    b.put_slice(&body);
    b.freeze()
}

/// Splits an item into who answered and how.
fn parse(mut bytes: Bytes) -> Option<(NodeId, u8, Outcome)> {
    if bytes.len() < 17 {
        return None;
    }
    let head = bytes.split_to(17);
    let id = u128::from_be_bytes(head[..16].try_into().ok()?);
    let outcome = <MsgPack as Codec<Outcome>>::decode(bytes).ok()?;
    Some((NodeId(id), head[16], outcome))
}

fn from_call_error(e: &CallError) -> Outcome {
    let kind = match e {
        CallError::Rejected(r) => {
            return Outcome::Rejected {
                code: r.code(),
                message: r.message().to_owned(),
                details: r.details().clone(),
            }
        }
        CallError::Timeout { .. } => FailKind::Timeout,
        CallError::Cancelled { .. } => FailKind::Cancelled,
        CallError::NoSuchOperation { .. } => FailKind::NoSuchOperation,
        CallError::HandlerFailed { .. } => FailKind::HandlerFailed,
        CallError::Decode { .. } => FailKind::Decode,
        CallError::Overloaded { .. } => FailKind::Overloaded,
        _ => FailKind::Unreachable,
    };
    Outcome::Failed {
        kind,
        message: e.to_string(),
    }
}

fn from_reject(r: Reject) -> Outcome {
    let kind = match r.system_code() {
        None => {
            return Outcome::Rejected {
                code: r.code(),
                message: r.message().to_owned(),
                details: r.details().clone(),
            }
        }
        Some(SystemCode::InvalidPayload) => FailKind::Decode,
        Some(SystemCode::ResourceExhausted) => FailKind::Overloaded,
        Some(_) => FailKind::HandlerFailed,
    };
    Outcome::Failed {
        kind,
        message: r.message().to_owned(),
    }
}

/// The origin's view of one node's outcome.
fn into_result<R>(
    outcome: Outcome,
    op: &'static str,
    from: NodeId,
    deadline: Duration,
    decode: fn(Bytes) -> Result<R, CodecError>,
) -> Result<R, CallError> {
    let peer: Arc<str> = format!("node {:08x} (relayed)", (from.0 >> 96) as u32).into();
    match outcome {
        Outcome::Reply(bytes) => decode(bytes).map_err(|e| CallError::decode(op, peer, e)),
        Outcome::Rejected {
            code,
            message,
            details,
        } => Err(CallError::Rejected(
            Reject::new(code, message).with_details(details),
        )),
        Outcome::Failed { kind, message } => Err(match kind {
            FailKind::NoSuchOperation => CallError::NoSuchOperation {
                op: op.into(),
                peer,
            },
            FailKind::HandlerFailed => CallError::HandlerFailed {
                op: op.into(),
                peer,
                message,
            },
            FailKind::Decode => CallError::Decode {
                op: op.into(),
                peer,
                message,
            },
            FailKind::Timeout => CallError::Timeout {
                op: op.into(),
                peer,
                after: deadline,
            },
            FailKind::Cancelled => CallError::Cancelled {
                op: op.into(),
                peer,
            },
            FailKind::Overloaded => CallError::Overloaded {
                op: op.into(),
                peer,
                message,
            },
            FailKind::Unreachable => CallError::ConnectionLost {
                op: op.into(),
                peer,
                reason: message.into(),
            },
        }),
    }
}

/// The time a hop relays with: what it has left, less a margin (1/32,
/// at most 20 ms), so that its neighbours time out first and it can still
/// report them.
fn onward(left: Option<Duration>) -> Option<Duration> {
    left.map(|l| l.saturating_sub((l / 32).min(Duration::from_millis(20))))
}

/// Starts a relayed call at its origin: to every member, merged.
pub(crate) fn start<R: Send + 'static>(
    node: &Arc<Shared>,
    call: Call,
    members: Vec<(NodeId, Connection)>,
    decode: fn(Bytes) -> Result<R, CodecError>,
) -> Broadcast<R> {
    let peers: Vec<NodeId> = members.iter().map(|(id, _)| *id).collect();
    let (tx, replies) = mpsc::channel(64);
    let open = Arc::new(AtomicUsize::new(members.len()));
    let id: u128 = rand::random();
    let id = ((id >> 64) as u64, id as u64);
    // Echoes of our own broadcast, come round a cycle, are dropped.
    let _ = node
        .relayed
        .first_time(id, call.deadline.saturating_add(MIN_MEMORY));
    let op = call.op;
    let deadline = call.deadline;
    let request = call.body.map(|body| RelayRequest {
        id,
        origin: node.id.to_string(),
        service: call.service.to_owned(),
        op: op.to_owned(),
        body,
        oneway: call.oneway,
        hops: 1,
        max_hops: call.max_hops,
    });
    let request = request.and_then(|r| <MsgPack as Codec<RelayRequest>>::encode(&r));
    let counter = open.clone();
    // The relay runs on a task of its own: it is a child of the call being
    // served here, if any, only by being told so.
    let parent = crate::connection::scope::CallScope::current();
    let task = tokio::spawn(async move {
        let each = members.into_iter().map(|(member, conn)| {
            let (tx, request, counter) = (tx.clone(), request.clone(), counter.clone());
            let parent = parent.clone();
            async move {
                let label = conn.peer().label().clone();
                let opened = match request {
                    Ok(request) => {
                        let mut opts = CallOptions::new().timeout(deadline);
                        if let Some(parent) = parent {
                            opts = opts.child_of(parent);
                        }
                        conn.server_stream(RELAY_OP, request, opts).await
                    }
                    Err(e) => Err(CallError::encode(op, label, e)),
                };
                match opened {
                    Ok(mut inbound) => {
                        let mut heard_member = false;
                        while let Some(next) = inbound.recv().await {
                            let reply = match next {
                                Ok(bytes) => match parse(bytes) {
                                    Some((from, _hops, outcome)) => {
                                        heard_member |= from == member;
                                        (from, into_result(outcome, op, from, deadline, decode))
                                    }
                                    None => (
                                        member,
                                        Err(CallError::decode(
                                            RELAY_OP,
                                            conn.peer().label().clone(),
                                            "a relayed reply that is not one",
                                        )),
                                    ),
                                },
                                Err(e) => {
                                    if !heard_member {
                                        let _ = tx.send((member, Err(e))).await;
                                    }
                                    break;
                                }
                            };
                            if tx.send(reply).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send((member, Err(e))).await;
                    }
                }
                counter.fetch_sub(1, Ordering::AcqRel);
            }
        });
        futures_util::future::join_all(each).await;
    });
    Broadcast::relayed(peers, replies, task, open)
}

/// The built-in `plexus.Node/relay` operation, over `router` (the node's
/// own services).
pub(crate) fn route(shared: Weak<Shared>, router: Router) -> Router {
    Router::new().server_stream(RELAY_OP, move |ctx, body: Bytes, out: Outbound| {
        let shared = shared.upgrade();
        let router = router.clone();
        async move {
            let shared = shared
                .filter(|s| !s.stopping.load(Ordering::Acquire))
                .ok_or_else(|| Reject::new(SystemCode::GoingAway as u32, "the node is stopping"))?;
            let request: RelayRequest = decode_request::<MsgPack, _>(body)?;
            let keep = ctx.remaining().unwrap_or(NO_DEADLINE_MEMORY);
            match shared.relayed.first_time(request.id, keep) {
                Ok(true) => relay_here(&shared, &router, ctx, request, out).await,
                // Seen already (it came round a cycle): answered elsewhere.
                Ok(false) => Ok(()),
                Err(()) => Err(Reject::overloaded(format!(
                    "node `{}` is relaying {MAX_REMEMBERED} broadcasts already",
                    shared.name()
                ))),
            }
        }
    })
}

/// Runs a relayed call here and relays it on; streams every reply back.
async fn relay_here(
    shared: &Arc<Shared>,
    router: &Router,
    ctx: CallContext,
    request: RelayRequest,
    mut out: Outbound,
) -> Result<(), Reject> {
    let came_from = ctx.peer().node_id();
    let origin = NodeId(u128::from_str_radix(&request.origin, 16).unwrap_or(0));
    let hops = request.hops;
    let onward_to: Vec<(NodeId, Connection)> = if hops < request.max_hops {
        shared
            .members(&request.service)
            .into_iter()
            .filter(|(id, _)| *id != came_from && *id != origin && *id != shared.id)
            .collect()
    } else {
        Vec::new()
    };
    let next = RelayRequest {
        hops: hops.saturating_add(1),
        ..request.clone()
    };
    let next = <MsgPack as Codec<RelayRequest>>::encode(&next)
        .map_err(|e| Reject::handler_failed(e.to_string()))?;
    let (tx, mut items) = mpsc::channel::<Bytes>(16);
    let me = shared.id;
    let local = {
        let tx = tx.clone();
        let ctx = ctx.clone();
        async move {
            let outcome = run_here(shared, router, ctx, &request).await;
            let _ = tx.send(item(me, hops, &outcome)).await;
        }
    };
    let timeout = onward(ctx.remaining());
    let relayed = onward_to.into_iter().map(|(neighbour, conn)| {
        let (tx, next) = (tx.clone(), next.clone());
        async move {
            let mut opts = CallOptions::new();
            if let Some(t) = timeout {
                opts = opts.timeout(t);
            }
            let failed = match conn.server_stream(RELAY_OP, next, opts).await {
                Ok(mut inbound) => {
                    let mut heard = false;
                    let mut failure = None;
                    while let Some(next) = inbound.recv().await {
                        match next {
                            Ok(bytes) => {
                                heard |= bytes.get(..16) == Some(&id_bytes(neighbour)[..]);
                                if tx.send(bytes).await.is_err() {
                                    break;
                                }
                            }
                            Err(e) => {
                                failure = (!heard).then_some(e);
                                break;
                            }
                        }
                    }
                    failure
                }
                Err(e) => Some(e),
            };
            if let Some(e) = failed {
                let hop = hops.saturating_add(1);
                let _ = tx.send(item(neighbour, hop, &from_call_error(&e))).await;
            }
        }
    });
    let relayed: Vec<_> = relayed.collect();
    drop(tx);
    let produce = futures_util::future::join(local, futures_util::future::join_all(relayed));
    let consume = async {
        while let Some(bytes) = items.recv().await {
            if out.send(bytes).await.is_err() {
                // The caller went away: nothing more to do for it.
                return;
            }
        }
    };
    futures_util::future::join(produce, consume).await;
    Ok(())
}

/// Runs the relayed operation on this node's own handler.
async fn run_here(
    shared: &Shared,
    router: &Router,
    mut ctx: CallContext,
    request: &RelayRequest,
) -> Outcome {
    let no_such = |why: String| Outcome::Failed {
        kind: FailKind::NoSuchOperation,
        message: why,
    };
    let serves = shared
        .services
        .iter()
        .any(|s| s.serves && s.full_name == request.service);
    let in_service = request
        .op
        .strip_prefix(request.service.as_str())
        .is_some_and(|rest| rest.starts_with('/'));
    if !serves || !in_service {
        return no_such(format!(
            "node `{}` serves no `{}` in service {}",
            shared.name(),
            request.op,
            request.service
        ));
    }
    let Some((name, route)) = router.route_named(&request.op) else {
        return no_such(format!("no handler for `{}`", request.op));
    };
    ctx.op = name;
    let body = request.body.clone();
    let ran = match (route, request.oneway) {
        (Route::Unary(f), false) => AssertUnwindSafe(f.call(ctx, body)).catch_unwind().await,
        (Route::OneWay(f), true) => AssertUnwindSafe(f(ctx, body))
            .catch_unwind()
            .await
            .map(|()| Ok(Bytes::new())),
        (other, _) => {
            return no_such(format!(
                "`{}` is a {} operation; relays carry unary and one-way operations",
                request.op,
                other.kind_name()
            ))
        }
    };
    match ran {
        Ok(Ok(reply)) => Outcome::Reply(reply),
        Ok(Err(reject)) => from_reject(reject),
        Err(_) => Outcome::Failed {
            kind: FailKind::HandlerFailed,
            message: "handler panicked".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_id_is_answered_once_while_remembered() {
        let seen = Seen::default();
        assert_eq!(seen.first_time((1, 2), Duration::from_secs(5)), Ok(true));
        assert_eq!(seen.first_time((1, 2), Duration::from_secs(5)), Ok(false));
        assert_eq!(seen.first_time((3, 4), Duration::from_secs(5)), Ok(true));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(seen.first_time((1, 2), Duration::from_secs(5)), Ok(true));
    }

    #[test]
    fn items_carry_who_answered_and_how() {
        let from = NodeId(0xabcd << 100);
        let bytes = item(from, 7, &Outcome::Reply(Bytes::from_static(b"hi")));
        let (who, hops, outcome) = parse(bytes).expect("parses");
        assert_eq!((who, hops), (from, 7));
        assert!(matches!(outcome, Outcome::Reply(b) if &b[..] == b"hi"));
        assert!(parse(Bytes::from_static(b"short")).is_none());
    }

    #[test]
    fn each_hop_leaves_time_to_report_its_neighbours() {
        assert_eq!(
            onward(Some(Duration::from_secs(2))),
            Some(Duration::from_millis(1980))
        );
        assert_eq!(
            onward(Some(Duration::from_millis(320))),
            Some(Duration::from_millis(310))
        );
        assert_eq!(onward(None), None);
    }
}
