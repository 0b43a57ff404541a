//! The application's say in what a node does with its peers: invitations to
//! join a group ([`Node::invite`](super::Node::invite), LightImage's
//! `Add(peer)`/`JOIN`), and a per-peer decision on every link
//! ([`NodeBuilder::allow_connection`](super::NodeBuilder::allow_connection),
//! LightImage's `AllowConnection`).
//!
//! Owns the hook types, the built-in `plexus.Node/invite` operation (both
//! ends) and the check the describe exchange makes. It never decides
//! membership itself: the driver asks the link hook when it computes links.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::description::{services_link, NodeDescription};
use super::driver::{Contact, Input};
use super::events::NodeEvent;
use super::{NodeError, Shared};
use crate::codec::{decode_request, encode_reply, Codec, MsgPack};
use crate::wire::SystemCode;
use crate::{CallError, CallOptions, Endpoint, NodeId, Reject, Router};

/// The operation id of the built-in invitation every node serves.
pub const INVITE_OP: &str = "plexus.Node/invite";

/// The rejection code of a declined invitation, and of a describe exchange
/// refused by the peer's connection hook.
pub const INVITE_DECLINED: u32 = 403;

/// How long an invitation may take: dialing the peer, and its answer.
const INVITE_TIMEOUT: Duration = Duration::from_secs(10);

/// An invitation to join a group, as the invited node's hook sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Invitation {
    /// The inviting node (as its connection's handshake proved).
    pub from: NodeId,
    /// Its name.
    pub name: String,
    /// The group it invites to: its own.
    pub group: String,
}

/// One prospective link, as the [`allow_connection`](super::NodeBuilder::allow_connection)
/// hook sees it: a peer, and one service both nodes take part in whose
/// contract, scope and role rules let them link.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct LinkCandidate<'a> {
    /// The peer.
    pub peer: NodeId,
    /// Its name.
    pub name: &'a str,
    /// Its group.
    pub group: Option<&'a str>,
    /// The service's full name (`package.Service`).
    pub service: &'a str,
    /// The role the peer takes in it, if any.
    pub role: Option<&'a str>,
    /// The peer's address as this node's connection to it sees it, once
    /// there is one.
    pub remote: Option<&'a str>,
}

type InviteHook = Arc<dyn Fn(&Invitation) -> Result<(), String> + Send + Sync>;
type AllowHook = Arc<dyn Fn(&LinkCandidate<'_>) -> bool + Send + Sync>;

/// The hooks a node was built with.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) invite: Option<InviteHook>,
    pub(crate) allow: Option<AllowHook>,
}

impl Hooks {
    /// Whether the link hook lets `candidate` link (no hook: yes).
    pub(crate) fn allows(&self, candidate: &LinkCandidate<'_>) -> bool {
        self.allow.as_ref().is_none_or(|hook| hook(candidate))
    }
}

/// What an invitation carries on the wire (MessagePack).
#[derive(Debug, Serialize, Deserialize)]
struct InviteRequest {
    /// Named `session` on the wire, its first name.
    #[serde(rename = "session")]
    group: String,
    name: String,
}

/// Whether the link hook refuses every link the rules would make with the
/// node described by `theirs`, seen from `shared` — then the describe
/// exchange is refused, so the dialer stops dialing. `None`: go ahead.
pub(crate) fn describe_refusal(
    shared: &Shared,
    theirs: &NodeDescription,
    remote: &str,
) -> Option<Reject> {
    shared.hooks.allow.as_ref()?;
    let (Some(peer), mine) = (theirs.id(), shared.group()) else {
        return None;
    };
    let mut linkable = shared.services.iter().filter_map(|ours| {
        theirs
            .services
            .iter()
            .find(|t| services_link(ours, mine.as_deref(), t, theirs.group.as_deref()))
    });
    let first = linkable.next()?;
    let allowed = std::iter::once(first).chain(linkable).any(|service| {
        shared.hooks.allows(&LinkCandidate {
            peer,
            name: &theirs.name,
            group: theirs.group.as_deref(),
            service: &service.full_name,
            role: service.role.as_deref(),
            remote: Some(remote),
        })
    });
    (!allowed).then(|| {
        Reject::new(
            INVITE_DECLINED,
            format!(
                "node `{}` declines links with node `{}` (its allow_connection hook)",
                shared.name(),
                theirs.name
            ),
        )
    })
}

/// The invited side of `plexus.Node/invite`: asks the hook, joins the
/// group if it agrees, and answers once the move is announced.
pub(crate) fn invite_route(shared: Weak<Shared>) -> Router {
    Router::new().unary(INVITE_OP, move |ctx, body: Bytes| {
        let shared = shared.upgrade();
        async move {
            let shared = shared
                .filter(|s| !s.stopping.load(Ordering::Acquire))
                .ok_or_else(|| Reject::new(SystemCode::GoingAway as u32, "the node is stopping"))?;
            let request: InviteRequest = decode_request::<MsgPack, _>(body)?;
            let invitation = Invitation {
                from: ctx.peer().node_id(),
                name: request.name,
                group: request.group,
            };
            let verdict = match &shared.hooks.invite {
                Some(hook) => hook(&invitation),
                None => Err(
                    "this node takes no invitations (it was built without NodeBuilder::on_invite)"
                        .to_owned(),
                ),
            };
            let _ = shared.events.send(NodeEvent::Invited {
                by: invitation.from,
                group: invitation.group.clone(),
                accepted: verdict.is_ok(),
            });
            match verdict {
                Ok(()) => {
                    shared
                        .change_group(Some(invitation.group))
                        .await
                        .map_err(|e| Reject::handler_failed(e.to_string()))?;
                    encode_reply::<MsgPack, _>(&())
                }
                Err(reason) => Err(Reject::new(INVITE_DECLINED, reason)),
            }
        }
    })
}

/// The inviting side: finds the peer (over the link this node has, or by
/// dialing what it announced), puts the question, reads the answer.
pub(crate) async fn invite(
    shared: &Arc<Shared>,
    endpoint: &Endpoint,
    peer: NodeId,
) -> Result<(), NodeError> {
    let group = shared.group().ok_or_else(|| NodeError::NotInGroup {
        node: shared.name(),
    })?;
    let unknown = || NodeError::UnknownPeer {
        node: shared.name(),
        peer,
    };
    let failed = |reason: String| NodeError::InviteFailed {
        peer,
        group: group.clone(),
        reason,
    };
    let (reply, contact) = oneshot::channel();
    shared
        .inputs
        .send(Input::Lookup { peer, reply })
        .map_err(|_| NodeError::Stopped {
            node: shared.name(),
        })?;
    let Contact { conn, endpoints } = contact.await.ok().flatten().ok_or_else(unknown)?;
    let (conn, transient) = match conn.filter(|c| !c.is_closed()) {
        Some(conn) => (conn, false),
        None => (
            dial(endpoint, peer, &endpoints).await.map_err(failed)?,
            true,
        ),
    };
    let body = <MsgPack as Codec<InviteRequest>>::encode(&InviteRequest {
        group: group.clone(),
        name: shared.name(),
    })
    .map_err(|e| failed(e.to_string()))?;
    let answer = conn
        .call(INVITE_OP, body, CallOptions::new().timeout(INVITE_TIMEOUT))
        .await;
    if transient {
        conn.close().await;
    }
    match answer {
        Ok(_) => Ok(()),
        Err(CallError::Rejected(r)) if r.code() == INVITE_DECLINED => {
            Err(NodeError::InviteDeclined {
                peer,
                group,
                reason: r.message().to_owned(),
            })
        }
        Err(e) => Err(failed(e.to_string())),
    }
}

/// Dials the first of `endpoints` that answers as `peer`.
async fn dial(
    endpoint: &Endpoint,
    peer: NodeId,
    endpoints: &[String],
) -> Result<crate::Connection, String> {
    let mut failures = Vec::new();
    for url in endpoints {
        match tokio::time::timeout(INVITE_TIMEOUT, endpoint.connect(url.as_str())).await {
            Ok(Ok(conn)) if conn.peer().node_id() == peer => return Ok(conn),
            Ok(Ok(conn)) => {
                failures.push(format!("{url} is node {} now", conn.peer().node_id()));
                conn.abort();
            }
            Ok(Err(e)) => failures.push(format!("{url}: {e}")),
            Err(_) => failures.push(format!("{url}: no handshake within {INVITE_TIMEOUT:?}")),
        }
    }
    if failures.is_empty() {
        return Err("it announced no endpoint".into());
    }
    Err(failures.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An invitation as protocol v2 names it (the group was first called the
    /// session).
    #[derive(Serialize, Deserialize)]
    struct V2Invite {
        session: String,
        name: String,
    }

    #[test]
    fn an_invitation_keeps_its_v2_bytes_after_the_group_rename() {
        let ours = InviteRequest {
            group: "lab".into(),
            name: "ada".into(),
        };
        let v2 = V2Invite {
            session: "lab".into(),
            name: "ada".into(),
        };
        let bytes = <MsgPack as Codec<InviteRequest>>::encode(&ours).expect("encodes");
        assert_eq!(
            bytes,
            <MsgPack as Codec<V2Invite>>::encode(&v2).expect("encodes")
        );
        let back: InviteRequest = MsgPack::decode(bytes).expect("decodes");
        assert_eq!((back.group, back.name), (ours.group, ours.name));
    }
}
