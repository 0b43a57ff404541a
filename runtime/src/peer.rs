//! Who is on the other end of a connection: its node id and address, what
//! it sent in the handshake and the certificate it proved. Below the
//! connections that make a [`PeerInfo`] and the interceptors, observers and
//! handlers that are shown one.

use std::sync::Arc;

use bytes::Bytes;

use crate::wire::node_id::NodeId;

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    node: NodeId,
    // Shared, so that a clone (one per intercepted call) allocates nothing.
    remote: Arc<str>,
    data: Bytes,
    pub(crate) label: Arc<str>,
    identity: Option<crate::transport::PeerIdentity>,
}

impl PeerInfo {
    pub(crate) fn new(node: NodeId, remote: String, data: Bytes) -> Self {
        let label: Arc<str> = format!("node {:08x} at {remote}", (node.0 >> 96) as u32).into();
        PeerInfo {
            node,
            remote: remote.into(),
            data,
            label,
            identity: None,
        }
    }

    pub(crate) fn with_identity(
        mut self,
        identity: Option<crate::transport::PeerIdentity>,
    ) -> Self {
        self.identity = identity;
        self
    }

    /// The peer's verified certificate, on a secured transport that verified
    /// one: its subject (CN, OU, O), issuer, DNS and URI names (a SPIFFE id
    /// among them). `None` on a plain transport, and on a TLS listener that
    /// does not ask clients for certificates.
    pub fn identity(&self) -> Option<&crate::transport::PeerIdentity> {
        self.identity.as_ref()
    }

    /// The peer's node id.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The peer's address as the transport sees it.
    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// The application data the peer sent in the handshake (its hello data if
    /// it dialed us, its accept hook's reply if we dialed it).
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// `node xxxxxxxx at url`, as used in error messages.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }
}
