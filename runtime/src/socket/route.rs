//! How a message finds its way across sockets that forward it (switches):
//! its time to live, the hops back to where it came from, and — for a reply
//! retracing them — the hops still ahead. multisocket's source routing.
//!
//! Owns [`Route`] and the envelope every pipe message travels in; pure
//! functions over bytes, no I/O. The envelope is one flag byte, then, for a
//! routed message, the TTL and two hop lists:
//!
//! ```text
//! 0x00 content…                                       plain: TTL 16, no hops
//! 0x01 ttl:u8 n:varint hop:varint×n m:varint hop:varint×m content…
//!      ^ path back (oldest first)   ^ destination (last hop is the next)
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::peers::PeerId;
use crate::wire::varint;

/// Hops a message may make when its sender sets nothing else.
pub const DEFAULT_TTL: u8 = 16;

/// Most hops a path or destination may list; more is malformed.
pub const MAX_HOPS: usize = 255;

const PLAIN: u8 = 0;
const ROUTED: u8 = 1;

/// Where a received message has been and may still go.
///
/// Every socket that forwards a message ([`Socket::forward`](super::Socket::forward))
/// adds the peer it had it from to the `path`, so the path is the way back:
/// [`Socket::reply`](super::Socket::reply) sends along it, and each socket on
/// the way takes the next hop off the reply's `destination`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// Forwards it may still make; at 1, forwarding it fails with
    /// [`SocketError::TtlExpired`](super::SocketError::TtlExpired).
    pub ttl: u8,
    /// The way back, past the peer it came from: each hop a peer of the
    /// socket that forwarded it, oldest first.
    pub path: Vec<PeerId>,
    /// For a reply on its way back: the hops still ahead, the next one last.
    /// Empty for a message that has arrived.
    pub destination: Vec<PeerId>,
}

impl Route {
    /// A message's route when it starts out with `ttl` hops to live.
    pub(crate) fn start(ttl: u8) -> Route {
        Route {
            ttl,
            path: Vec::new(),
            destination: Vec::new(),
        }
    }
}

/// Puts `content` in its envelope.
pub(crate) fn wrap(route: &Route, content: &[u8]) -> Bytes {
    if route.ttl == DEFAULT_TTL && route.path.is_empty() && route.destination.is_empty() {
        let mut b = BytesMut::with_capacity(1 + content.len());
        b.put_u8(PLAIN);
        b.put_slice(content);
        return b.freeze();
    }
    let hops = route.path.len() + route.destination.len();
    let mut b = BytesMut::with_capacity(4 + hops * 2 + content.len());
    b.put_u8(ROUTED);
    b.put_u8(route.ttl);
    for list in [&route.path, &route.destination] {
        varint::put(&mut b, list.len() as u64);
        for hop in list {
            varint::put(&mut b, hop.0);
        }
    }
    b.put_slice(content);
    b.freeze()
}

/// Takes a message out of its envelope; the error says what is wrong.
pub(crate) fn unwrap(mut bytes: Bytes) -> Result<(Route, Bytes), String> {
    if !bytes.has_remaining() {
        return Err("an empty pipe message (no envelope byte)".into());
    }
    match bytes.get_u8() {
        PLAIN => Ok((Route::start(DEFAULT_TTL), bytes)),
        ROUTED => {
            if !bytes.has_remaining() {
                return Err("a routed pipe message without its TTL".into());
            }
            let ttl = bytes.get_u8();
            let path = hops(&mut bytes, "socket path")?;
            let destination = hops(&mut bytes, "socket destination")?;
            Ok((
                Route {
                    ttl,
                    path,
                    destination,
                },
                bytes,
            ))
        }
        other => Err(format!(
            "socket envelope flag {other:#04x} is neither plain (0) nor routed (1)"
        )),
    }
}

fn hops(bytes: &mut Bytes, field: &'static str) -> Result<Vec<PeerId>, String> {
    let n = varint::get(bytes, field).map_err(|e| e.to_string())?;
    if n > MAX_HOPS as u64 {
        return Err(format!("{field} lists {n} hops, more than {MAX_HOPS}"));
    }
    (0..n)
        .map(|_| {
            varint::get(bytes, field)
                .map(PeerId)
                .map_err(|e| e.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages_cost_one_byte_and_routed_ones_round_trip() {
        let plain = wrap(&Route::start(DEFAULT_TTL), b"hi");
        assert_eq!(&plain[..], b"\x00hi");
        assert_eq!(
            unwrap(plain).expect("plain"),
            (Route::start(DEFAULT_TTL), Bytes::from_static(b"hi"))
        );
        let route = Route {
            ttl: 3,
            path: vec![PeerId(1), PeerId(300)],
            destination: vec![PeerId(7)],
        };
        let routed = wrap(&route, b"body");
        assert_eq!(
            &routed[..],
            [1, 3, 2, 1, 0xac, 0x02, 1, 7, b'b', b'o', b'd', b'y']
        );
        assert_eq!(
            unwrap(routed).expect("routed"),
            (route, Bytes::from_static(b"body"))
        );
        assert_eq!(
            unwrap(wrap(&Route::start(5), b"")).expect("ttl only").0.ttl,
            5
        );
    }

    #[test]
    fn malformed_envelopes_are_errors_not_panics() {
        for bad in [
            &b""[..],
            &[2, 0][..],
            &[1][..],
            &[1, 3][..],
            &[1, 3, 2, 1][..],
            &[1, 3, 0xff, 0xff, 0xff, 0xff, 0x0f][..],
        ] {
            assert!(unwrap(Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }
}
