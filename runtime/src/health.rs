//! Health: whether an endpoint and each of its services are serving, in the
//! shape of `grpc.health.v1`, so load balancers and orchestrators have
//! something to probe.
//!
//! Owns the [`Health`] table an application sets, and the two built-in
//! operations every endpoint, server and node serves unless built
//! `without_health()`:
//!
//! | operation | kind | answers |
//! |---|---|---|
//! | `plexus.Health/check` | unary | the status of one service (`""`: the endpoint as a whole); an unknown service is rejected with [`UNKNOWN_SERVICE`] |
//! | `plexus.Health/watch` | server stream | the status at once, then every change; [`ServingStatus::ServiceUnknown`] for a service not (yet) known |
//!
//! Requests are `{ service: string }` and replies `{ status: "SERVING" | … }`,
//! MessagePack maps keyed by field name. Every contract an endpoint serves
//! starts `SERVING`, and so does the endpoint as a whole (`""`).
//!
//! From the moment an endpoint or node begins a graceful shutdown
//! ([`Endpoint::drain`](crate::Endpoint::drain),
//! [`Endpoint::shutdown`](crate::Endpoint::shutdown), [`Node::stop`](crate::Node::stop))
//! every known service reports `NOT_SERVING` whatever the application set,
//! watchers are told at once, and their streams end when the connections
//! close.
//!
//! ```
//! use plexus::health::{Health, ServingStatus};
//! # async fn demo(server: plexus::Server) {
//! let health: &Health = server.health();
//! health.set("chat.Chat", ServingStatus::NotServing); // e.g. its database is down
//! assert_eq!(health.status("chat.Chat"), Some(ServingStatus::NotServing));
//! assert_eq!(health.status(""), Some(ServingStatus::Serving));
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::codec::{decode_reply, decode_request, encode_reply, Codec, MsgPack};
use crate::connection::CallContext;
use crate::connection::{Inbound, Outbound};
use crate::error::{CallError, Reject};
use crate::router::Router;
use crate::{CallOptions, Connection};

/// Operation id of the one-shot check.
pub const CHECK_OP: &str = "plexus.Health/check";
/// Operation id of the watch stream.
pub const WATCH_OP: &str = "plexus.Health/watch";
/// Reject code of a check naming a service the endpoint does not know.
pub const UNKNOWN_SERVICE: u32 = 0xffff_0003;

/// A service's serving status, as `grpc.health.v1` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServingStatus {
    /// The status is not known.
    Unknown,
    /// Taking calls.
    Serving,
    /// Not taking calls (set by the application, or draining).
    NotServing,
    /// The service is not known to the endpoint (watch only).
    ServiceUnknown,
}

impl ServingStatus {
    /// The `grpc.health.v1` name (`SERVING`, `NOT_SERVING`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            ServingStatus::Unknown => "UNKNOWN",
            ServingStatus::Serving => "SERVING",
            ServingStatus::NotServing => "NOT_SERVING",
            ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN",
        }
    }
}

impl fmt::Display for ServingStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A check or watch request: the service asked about (`""`: overall).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRequest {
    /// `package.Service`, or `""` for the endpoint as a whole.
    #[serde(default)]
    pub service: String,
}

/// A check's answer, and each item of a watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReply {
    /// The status.
    pub status: ServingStatus,
}

/// The health table of one endpoint. Cheap to clone; every clone is the same table.
#[derive(Clone)]
pub struct Health {
    state: Arc<State>,
}

struct State {
    statuses: Mutex<BTreeMap<String, ServingStatus>>,
    draining: AtomicBool,
    /// Bumped on every change, so watchers wake.
    changed: watch::Sender<u64>,
    /// Cancelled when the endpoint shuts down: watch streams end.
    stopped: CancellationToken,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("statuses", &*self.statuses())
            .field("draining", &self.is_draining())
            .finish()
    }
}

impl Health {
    /// A table where `""` and each of `services` is `SERVING`; watch streams
    /// end when `stopped` is cancelled.
    pub(crate) fn new<'a>(
        services: impl IntoIterator<Item = &'a str>,
        stopped: CancellationToken,
    ) -> Health {
        let statuses = std::iter::once("")
            .chain(services)
            .map(|s| (s.to_owned(), ServingStatus::Serving))
            .collect();
        Health {
            state: Arc::new(State {
                statuses: Mutex::new(statuses),
                draining: AtomicBool::new(false),
                changed: watch::channel(0).0,
                stopped,
            }),
        }
    }

    fn statuses(&self) -> MutexGuard<'_, BTreeMap<String, ServingStatus>> {
        // Each critical section is one map operation; a panic cannot tear it.
        self.state
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.state.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Sets the status of `service` (`""`: the endpoint as a whole), adding
    /// it if it is new. While draining, checks still say `NOT_SERVING`.
    pub fn set(&self, service: impl Into<String>, status: ServingStatus) {
        let previous = self.statuses().insert(service.into(), status);
        if previous != Some(status) {
            self.notify();
        }
    }

    /// Forgets `service`: checks are then rejected as unknown, watchers see
    /// `SERVICE_UNKNOWN`.
    pub fn remove(&self, service: &str) {
        if self.statuses().remove(service).is_some() {
            self.notify();
        }
    }

    /// What a check of `service` answers now: `None` for an unknown service,
    /// `NOT_SERVING` for every known one while draining, else what was set.
    pub fn status(&self, service: &str) -> Option<ServingStatus> {
        let set = self.statuses().get(service).copied()?;
        Some(if self.is_draining() {
            ServingStatus::NotServing
        } else {
            set
        })
    }

    /// The services with a status, `""` first.
    pub fn services(&self) -> Vec<String> {
        self.statuses().keys().cloned().collect()
    }

    /// Whether a graceful shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.state.draining.load(Ordering::Acquire)
    }

    /// Marks the endpoint as draining: everything reports `NOT_SERVING` from now on.
    pub(crate) fn drain(&self) {
        if !self.state.draining.swap(true, Ordering::AcqRel) {
            self.notify();
        }
    }

    /// The built-in check and watch routes over this table.
    pub(crate) fn routes(&self) -> Router {
        let check = self.clone();
        let watch = self.clone();
        Router::new()
            .unary(CHECK_OP, move |_ctx, body: Bytes| {
                let health = check.clone();
                async move {
                    let request = decode_health_request(body)?;
                    match health.status(&request.service) {
                        Some(status) => encode_reply::<MsgPack, _>(&HealthReply { status }),
                        None => Err(Reject::new(
                            UNKNOWN_SERVICE,
                            format!(
                                "no health status for service `{}`; known: {}",
                                request.service,
                                health.known_list()
                            ),
                        )),
                    }
                }
            })
            .server_stream(
                WATCH_OP,
                move |ctx: CallContext, body: Bytes, out: Outbound| {
                    let health = watch.clone();
                    async move {
                        let request = decode_health_request(body)?;
                        health.serve_watch(ctx, &request.service, out).await;
                        Ok(())
                    }
                },
            )
    }

    fn known_list(&self) -> String {
        let names: Vec<String> = self
            .services()
            .into_iter()
            .map(|s| if s.is_empty() { "\"\"".into() } else { s })
            .collect();
        names.join(", ")
    }

    /// Sends the status of `service` now and at every change, until the
    /// caller goes away or the endpoint has shut down.
    async fn serve_watch(&self, ctx: CallContext, service: &str, mut out: Outbound) {
        let mut changes = self.state.changed.subscribe();
        let mut last = None;
        loop {
            changes.borrow_and_update();
            let now = self
                .status(service)
                .unwrap_or(ServingStatus::ServiceUnknown);
            if last != Some(now) {
                let Ok(item) =
                    <MsgPack as Codec<HealthReply>>::encode(&HealthReply { status: now })
                else {
                    return;
                };
                if out.send(item).await.is_err() {
                    return;
                }
                last = Some(now);
            }
            if self.state.stopped.is_cancelled() {
                return;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = self.state.stopped.cancelled() => {}
                _ = ctx.cancelled() => return,
            }
        }
    }
}

fn decode_health_request(body: Bytes) -> Result<HealthRequest, Reject> {
    if body.is_empty() {
        return Ok(HealthRequest::default());
    }
    decode_request::<MsgPack, HealthRequest>(body)
}

fn encode_health_request(conn: &Connection, op: &str, service: &str) -> Result<Bytes, CallError> {
    let request = HealthRequest {
        service: service.to_owned(),
    };
    <MsgPack as Codec<HealthRequest>>::encode(&request)
        .map_err(|e| CallError::encode(op, conn.peer().label().clone(), e))
}

/// Asks the peer of `conn` for the status of `service` (`""`: overall).
///
/// An unknown service is [`CallError::Rejected`] with [`UNKNOWN_SERVICE`].
pub async fn check(
    conn: &Connection,
    service: &str,
    opts: CallOptions,
) -> Result<ServingStatus, CallError> {
    let body = encode_health_request(conn, CHECK_OP, service)?;
    let reply = conn.call(CHECK_OP, body, opts).await?;
    decode_reply::<MsgPack, HealthReply>(CHECK_OP, conn, reply).map(|r| r.status)
}

/// Watches the status of `service` on the peer of `conn`: the current
/// status first, then every change, until the peer shuts down.
pub async fn watch(
    conn: &Connection,
    service: &str,
    opts: CallOptions,
) -> Result<HealthWatch, CallError> {
    let body = encode_health_request(conn, WATCH_OP, service)?;
    let inbound = conn.server_stream(WATCH_OP, body, opts).await?;
    Ok(HealthWatch {
        inbound,
        conn: conn.clone(),
    })
}

/// The statuses a [`watch()`] receives.
#[derive(Debug)]
pub struct HealthWatch {
    inbound: Inbound,
    conn: Connection,
}

impl HealthWatch {
    /// The next status; `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<Result<ServingStatus, CallError>> {
        use futures_util::StreamExt;
        let item = self.inbound.next().await?;
        Some(item.and_then(|bytes| {
            decode_reply::<MsgPack, HealthReply>(WATCH_OP, &self.conn, bytes).map(|r| r.status)
        }))
    }
}
