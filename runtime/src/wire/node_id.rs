//! Node ids: the 128 random bits each side sends in the handshake
//! (`docs/PROTOCOL.md` §3), by which discovery, connections and nodes tell
//! nodes apart.

use std::fmt;

/// A node's identity on the wire: 128 random bits, fixed for an endpoint's life.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u128);

impl NodeId {
    /// A fresh random id.
    pub fn random() -> Self {
        NodeId(rand::random())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first eight hex digits are enough to tell nodes apart in logs.
        write!(f, "NodeId({:08x})", (self.0 >> 96) as u32)
    }
}
