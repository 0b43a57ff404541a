//! The live topology page a node serves on loopback
//! ([`NodeBuilder::topology_page`](crate::node::NodeBuilder::topology_page),
//! feature `topology`): what can go wrong starting it. The page itself —
//! its state, link counts and HTTP server — is the node's
//! (`node/topology.rs`); this is the part below nodes, where errors are
//! named.

use std::net::SocketAddr;

/// Why the topology page could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// The address is not a loopback address.
    #[error("the topology page serves on loopback only; {addr} is not a loopback address (use 127.0.0.1 or [::1])")]
    NotLoopback {
        /// The address given.
        addr: String,
    },
    /// The address is not `host:port`.
    #[error("the topology page's address {addr:?} is not host:port ({reason})")]
    BadAddress {
        /// The address given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Binding the HTTP listener failed.
    #[error("the topology page cannot listen on {addr}: {source} (is the port taken?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Parses and checks the page's address: an IP on loopback, and a port.
pub(crate) fn loopback_addr(addr: &str) -> Result<SocketAddr, TopologyError> {
    let parsed: SocketAddr =
        addr.parse()
            .map_err(|e: std::net::AddrParseError| TopologyError::BadAddress {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?;
    if !parsed.ip().is_loopback() {
        return Err(TopologyError::NotLoopback {
            addr: addr.to_owned(),
        });
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_listens_on_loopback_only() {
        assert!(loopback_addr("127.0.0.1:0").is_ok());
        assert!(loopback_addr("[::1]:8080").is_ok());
        assert!(matches!(
            loopback_addr("0.0.0.0:8080"),
            Err(TopologyError::NotLoopback { .. })
        ));
        assert!(matches!(
            loopback_addr("192.0.2.7:80"),
            Err(TopologyError::NotLoopback { .. })
        ));
        assert!(matches!(
            loopback_addr("localhost"),
            Err(TopologyError::BadAddress { .. })
        ));
    }
}
