//! Whether a peer runs on this host, judged by the endpoints it announces
//! (for [`follow_locally`](super::NodeBuilder::follow_locally)).
//!
//! Pure but for one question put to the operating system: whether an
//! address can be bound here, which holds exactly for this host's own
//! addresses. Nothing is sent anywhere.

use std::net::{IpAddr, UdpSocket};

use crate::transport::{Host, Scheme, Url};

/// Whether any of `endpoints` is on this host: a `unix://` or `inproc://`
/// URL, a loopback address, `localhost`, or an address of one of this
/// host's interfaces.
pub(crate) fn on_this_host(endpoints: &[String]) -> bool {
    endpoints.iter().any(|e| {
        let Ok(url) = Url::parse(e) else {
            return false;
        };
        match url.scheme() {
            Scheme::Unix | Scheme::Inproc => true,
            _ => match url.host() {
                Some(Host::Ip(ip)) => ip.is_loopback() || bindable(*ip),
                Some(Host::Name(name)) => name == "localhost",
                None => false,
            },
        }
    })
}

/// Whether `ip` is an address of this host: only those can be bound.
fn bindable(ip: IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast() && UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_sockets_and_own_addresses_are_local_others_are_not() {
        let local = |e: &str| on_this_host(&[e.to_owned()]);
        assert!(local("tcp://127.0.0.1:4000"));
        assert!(local("tcp://127.9.9.9:4000"));
        assert!(local("tcp://localhost:4000"));
        assert!(local("unix:///tmp/plexus.sock"));
        assert!(local("inproc://room"));
        // TEST-NET-1 (RFC 5737) is never assigned to a host.
        assert!(!local("tcp://192.0.2.1:4000"));
        assert!(!local("tcp://example.invalid:4000"));
        assert!(!local("not a url"));
        assert!(!on_this_host(&[]));
        assert!(on_this_host(&[
            "tcp://192.0.2.1:1".to_owned(),
            "tcp://127.0.0.1:1".to_owned()
        ]));
    }
}
