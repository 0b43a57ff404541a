//! Transport addresses: the `scheme://address` strings every listener and
//! dialer is named by.
//!
//! This module only parses and prints; it never resolves a host name or
//! touches a socket. Host names stay names here and are resolved when a
//! transport binds or dials, so a `Url` can be built long before the network
//! is up.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;

/// The transport a [`Url`] selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// Plain TCP: `tcp://host:port`.
    Tcp,
    /// TCP wrapped in TLS (rustls): `tls://host:port`.
    Tls,
    /// A Unix domain socket: `unix:///path/to.sock`.
    Unix,
    /// A connection inside this process, no socket: `inproc://name`.
    Inproc,
    /// WebSocket over TCP, binary messages: `ws://host:port/path`.
    Ws,
    /// WebSocket over TLS (rustls): `wss://host:port/path`.
    Wss,
    /// QUIC (quinn), TLS 1.3 built in: `quic://host:port`.
    Quic,
}

impl Scheme {
    /// Every scheme this build understands, in the order error messages list them.
    pub const ALL: [Scheme; 7] = [
        Scheme::Tcp,
        Scheme::Tls,
        Scheme::Unix,
        Scheme::Inproc,
        Scheme::Ws,
        Scheme::Wss,
        Scheme::Quic,
    ];

    /// The scheme as written before `://`, e.g. `"tcp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Tls => "tls",
            Scheme::Unix => "unix",
            Scheme::Inproc => "inproc",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
            Scheme::Quic => "quic",
        }
    }

    /// True for the schemes secured by TLS, which need a [`TlsConfig`]:
    /// `tls`, `wss` and `quic`.
    ///
    /// [`TlsConfig`]: super::TlsConfig
    pub fn needs_tls(self) -> bool {
        matches!(self, Scheme::Tls | Scheme::Wss | Scheme::Quic)
    }

    /// The port a URL of this scheme means when it names none: 80 for `ws`,
    /// 443 for `wss`, as browsers assume. Every other scheme needs an
    /// explicit port.
    fn default_port(self) -> Option<u16> {
        match self {
            Scheme::Ws => Some(80),
            Scheme::Wss => Some(443),
            _ => None,
        }
    }

    /// Looks a scheme up by name, ignoring ASCII case.
    fn from_name(name: &str) -> Option<Scheme> {
        Scheme::ALL
            .into_iter()
            .find(|scheme| scheme.as_str().eq_ignore_ascii_case(name))
    }

    /// `tcp://, tls://, unix://, ...`, for error messages.
    fn supported_list() -> String {
        Scheme::ALL
            .iter()
            .map(|scheme| format!("{scheme}://"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host part of a URL whose address is `host:port` (every scheme but
/// `unix://` and `inproc://`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A literal IPv4 or IPv6 address; used as is.
    Ip(IpAddr),
    /// A DNS name (stored in lower case), resolved when the URL is bound or dialed.
    Name(String),
}

impl fmt::Display for Host {
    /// Prints the bare host: IPv6 addresses without brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// What a URL points at once the scheme is known. The scheme decides the
/// variant: tcp/tls/ws/wss/quic → `Socket`, unix → `Path`, inproc → `Name`.
/// Only ws/wss carry a `resource` (the HTTP request path and query), and
/// only when it is not the default `/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Target {
    Socket {
        host: Host,
        port: u16,
        resource: Option<String>,
    },
    Path(String),
    Name(String),
}

/// A transport address such as `tcp://127.0.0.1:4000`, `tls://[::1]:4443`,
/// `unix:///run/app.sock`, `inproc://jobs`, `ws://127.0.0.1:8080/plexus` or
/// `quic://localhost:4433`.
///
/// Parse one with [`Url::parse`] (or `str::parse`), or build one with
/// [`Url::tcp`], [`Url::tls`], [`Url::ws`], [`Url::wss`], [`Url::quic`],
/// [`Url::unix`] and [`Url::inproc`]. Printing a `Url` gives a string that
/// parses back to an equal `Url`.
///
/// Forms accepted:
/// - `tcp://HOST:PORT`, `tls://HOST:PORT` and `quic://HOST:PORT`, where `HOST`
///   is an IPv4 address, an IPv6 address in brackets (`[::1]`), or a DNS name
///   such as `localhost` (resolved at bind/dial time). Port `0` asks the OS to
///   choose when binding. IPv6 scope ids (`%eth0`) are not carried.
/// - `ws://HOST[:PORT][/PATH]` and `wss://HOST[:PORT][/PATH]`: as above, with
///   the port defaulting to 80 and 443, and an optional HTTP request path
///   (with query, no fragment; visible ASCII, at most 1024 bytes). The dialer
///   asks for that path; a listener upgrades requests for exactly that path
///   (the query is not compared) and answers 404 to others. No path means `/`.
/// - `unix://PATH`: `unix:///abs/path.sock` (absolute) or `unix://rel.sock`
///   (relative to the working directory).
/// - `inproc://NAME`: any non-empty name, meaningful only inside this process.
///
/// The scheme is matched ignoring case and printed in lower case; DNS names
/// are stored in lower case.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Url {
    scheme: Scheme,
    target: Target,
}

impl Url {
    /// Parses `scheme://address`; see the type's documentation for the forms.
    ///
    /// ```
    /// # fn main() -> Result<(), plexus::transport::UrlError> {
    /// use plexus::transport::{Scheme, Url};
    /// let url = Url::parse("tcp://[::1]:4000")?;
    /// assert_eq!(url.scheme(), Scheme::Tcp);
    /// assert_eq!(url.port(), Some(4000));
    /// assert_eq!(url.to_string(), "tcp://[::1]:4000");
    /// # Ok(()) }
    /// ```
    pub fn parse(input: &str) -> Result<Url, UrlError> {
        let Some((scheme_name, rest)) = input.split_once("://") else {
            return Err(UrlError::MissingSeparator {
                url: input.to_owned(),
            });
        };
        let Some(scheme) = Scheme::from_name(scheme_name) else {
            return Err(UrlError::UnknownScheme {
                url: input.to_owned(),
                scheme: scheme_name.to_owned(),
            });
        };
        let target = match scheme {
            Scheme::Unix if rest.is_empty() => {
                return Err(UrlError::EmptyUnixPath {
                    url: input.to_owned(),
                })
            }
            Scheme::Unix => Target::Path(rest.to_owned()),
            Scheme::Inproc if rest.is_empty() => {
                return Err(UrlError::EmptyInprocName {
                    url: input.to_owned(),
                })
            }
            Scheme::Inproc => Target::Name(rest.to_owned()),
            Scheme::Tcp | Scheme::Tls | Scheme::Ws | Scheme::Wss | Scheme::Quic => {
                parse_socket(input, scheme, rest)?
            }
        };
        Ok(Url { scheme, target })
    }

    /// A `tcp://` URL for a socket address, e.g. one a listener reported.
    pub fn tcp(addr: SocketAddr) -> Url {
        Url::socket(Scheme::Tcp, addr)
    }

    /// A `tls://` URL for a socket address.
    pub fn tls(addr: SocketAddr) -> Url {
        Url::socket(Scheme::Tls, addr)
    }

    /// A `ws://` URL for a socket address, with the default path `/`.
    pub fn ws(addr: SocketAddr) -> Url {
        Url::socket(Scheme::Ws, addr)
    }

    /// A `wss://` URL for a socket address, with the default path `/`.
    pub fn wss(addr: SocketAddr) -> Url {
        Url::socket(Scheme::Wss, addr)
    }

    /// A `quic://` URL for a socket address.
    pub fn quic(addr: SocketAddr) -> Url {
        Url::socket(Scheme::Quic, addr)
    }

    /// This URL with its host and port replaced by `addr`, keeping the scheme
    /// and any ws/wss path: what a listener bound to port 0 reports.
    pub(crate) fn with_socket_addr(&self, addr: SocketAddr) -> Url {
        let resource = match &self.target {
            Target::Socket { resource, .. } => resource.clone(),
            Target::Path(_) | Target::Name(_) => None,
        };
        Url {
            scheme: self.scheme,
            target: Target::Socket {
                host: Host::Ip(addr.ip()),
                port: addr.port(),
                resource,
            },
        }
    }

    /// A `unix://` URL for a socket path. Fails if the path is empty or is not
    /// valid UTF-8 (a URL is text).
    pub fn unix(path: impl AsRef<Path>) -> Result<Url, UrlError> {
        let path = path.as_ref();
        let Some(text) = path.to_str() else {
            return Err(UrlError::NonUtf8UnixPath {
                path: path.to_string_lossy().into_owned(),
            });
        };
        if text.is_empty() {
            return Err(UrlError::EmptyUnixPath {
                url: "unix://".to_owned(),
            });
        }
        Ok(Url {
            scheme: Scheme::Unix,
            target: Target::Path(text.to_owned()),
        })
    }

    /// An `inproc://` URL for a name. Fails if the name is empty.
    pub fn inproc(name: impl Into<String>) -> Result<Url, UrlError> {
        let name = name.into();
        if name.is_empty() {
            return Err(UrlError::EmptyInprocName {
                url: "inproc://".to_owned(),
            });
        }
        Ok(Url {
            scheme: Scheme::Inproc,
            target: Target::Name(name),
        })
    }

    /// A URL of a `host:port` scheme for a socket address, without a path.
    pub(crate) fn socket(scheme: Scheme, addr: SocketAddr) -> Url {
        Url {
            scheme,
            target: Target::Socket {
                host: Host::Ip(addr.ip()),
                port: addr.port(),
                resource: None,
            },
        }
    }

    /// The transport this URL selects.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host of a URL with a `host:port` address; `None` for `unix://` and
    /// `inproc://`.
    pub fn host(&self) -> Option<&Host> {
        match &self.target {
            Target::Socket { host, .. } => Some(host),
            Target::Path(_) | Target::Name(_) => None,
        }
    }

    /// The port of a URL with a `host:port` address (the default port where
    /// a ws/wss URL names none); `None` for `unix://` and `inproc://`.
    pub fn port(&self) -> Option<u16> {
        match &self.target {
            Target::Socket { port, .. } => Some(*port),
            Target::Path(_) | Target::Name(_) => None,
        }
    }

    /// The socket address of a URL with a `host:port` address whose host is
    /// a literal IP address; `None` for DNS names (which need resolving),
    /// `unix://` and `inproc://`.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match &self.target {
            Target::Socket {
                host: Host::Ip(ip),
                port,
                ..
            } => Some(SocketAddr::new(*ip, *port)),
            _ => None,
        }
    }

    /// The HTTP request path (with any query) of a `ws://` or `wss://` URL,
    /// `/` when the URL names none; `None` for other schemes.
    pub fn ws_path(&self) -> Option<&str> {
        match (&self.target, self.scheme) {
            (Target::Socket { resource, .. }, Scheme::Ws | Scheme::Wss) => {
                Some(resource.as_deref().unwrap_or("/"))
            }
            _ => None,
        }
    }

    /// The socket path of a `unix://` URL; `None` for other schemes.
    pub fn path(&self) -> Option<&Path> {
        match &self.target {
            Target::Path(path) => Some(Path::new(path)),
            Target::Socket { .. } | Target::Name(_) => None,
        }
    }

    /// The name of an `inproc://` URL; `None` for other schemes.
    pub fn name(&self) -> Option<&str> {
        match &self.target {
            Target::Name(name) => Some(name),
            Target::Socket { .. } | Target::Path(_) => None,
        }
    }
}

/// Parses the `HOST:PORT` part of a URL with a socket address, and the
/// optional `/PATH` of ws/wss. `url` is the whole input, for error messages.
fn parse_socket(url: &str, scheme: Scheme, rest: &str) -> Result<Target, UrlError> {
    let bad_host = |reason: &'static str| UrlError::BadHost {
        url: url.to_owned(),
        reason,
    };
    // A `/` cannot occur in a host or a port, so the first one starts the path.
    let (rest, resource) = match (scheme, rest.find('/')) {
        (Scheme::Ws | Scheme::Wss, Some(at)) => {
            let path = &rest[at..];
            check_ws_path(url, path)?;
            (&rest[..at], (path != "/").then(|| path.to_owned()))
        }
        _ => (rest, None),
    };
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (inside, after) = bracketed
            .split_once(']')
            .ok_or_else(|| bad_host("`[` opens an IPv6 address but no `]` closes it"))?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| bad_host("the text inside `[...]` is not an IPv6 address"))?;
        let port = match after.strip_prefix(':') {
            Some(port) => port,
            None if after.is_empty() => "",
            None => return Err(bad_host("expected `:PORT` right after `]`")),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = rest.rsplit_once(':').unwrap_or((rest, ""));
        (parse_host(host).map_err(bad_host)?, port)
    };
    if port.is_empty() {
        return match scheme.default_port() {
            Some(port) => Ok(Target::Socket {
                host,
                port,
                resource,
            }),
            None => Err(UrlError::MissingPort {
                url: url.to_owned(),
            }),
        };
    }
    // `u16::from_str` also takes a leading `+`; a URL port is digits only.
    let port = port
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| port.parse::<u16>().ok())
        .flatten()
        .ok_or_else(|| UrlError::BadPort {
            url: url.to_owned(),
            port: port.to_owned(),
        })?;
    Ok(Target::Socket {
        host,
        port,
        resource,
    })
}

/// The longest ws/wss request path accepted, query included.
const MAX_WS_PATH: usize = 1024;

/// Checks a ws/wss request path: `/` first, visible ASCII, no fragment.
fn check_ws_path(url: &str, path: &str) -> Result<(), UrlError> {
    let reason = if path.len() > MAX_WS_PATH {
        Some("the path is longer than 1024 bytes")
    } else if path.contains('#') {
        Some("a fragment (`#...`) means nothing to a WebSocket server; remove it")
    } else if !path.bytes().all(|b| b.is_ascii_graphic()) {
        Some("the path may hold only visible ASCII (percent-encode anything else)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(UrlError::BadPath {
            url: url.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Parses a host that is not in brackets: an IPv4 address or a DNS name.
fn parse_host(host: &str) -> Result<Host, &'static str> {
    if host.is_empty() {
        return Err("the host is missing (write e.g. 127.0.0.1, [::1] or localhost)");
    }
    if host.contains(':') {
        return Err("IPv6 addresses must be written in brackets, e.g. tcp://[::1]:4000");
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    // Digits and dots only is meant as an IPv4 address; do not send it to DNS.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err("not a valid IPv4 address");
    }
    let labels_ok = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !labels_ok {
        return Err("not a valid host name (letters, digits, `-` and `_` in dot-separated labels)");
    }
    Ok(Host::Name(host.to_ascii_lowercase()))
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        match &self.target {
            Target::Socket {
                host,
                port,
                resource,
            } => {
                match host {
                    Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{port}")?,
                    host => write!(f, "{host}:{port}")?,
                }
                f.write_str(resource.as_deref().unwrap_or(""))
            }
            Target::Path(path) => f.write_str(path),
            Target::Name(name) => f.write_str(name),
        }
    }
}

impl FromStr for Url {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Url, UrlError> {
        Url::parse(s)
    }
}

impl TryFrom<&str> for Url {
    type Error = UrlError;

    fn try_from(s: &str) -> Result<Url, UrlError> {
        Url::parse(s)
    }
}

impl TryFrom<String> for Url {
    type Error = UrlError;

    fn try_from(s: String) -> Result<Url, UrlError> {
        Url::parse(&s)
    }
}

impl TryFrom<&String> for Url {
    type Error = UrlError;

    fn try_from(s: &String) -> Result<Url, UrlError> {
        Url::parse(s)
    }
}

/// Why a string is not a transport [`Url`]. Every message quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The input has no `://` between scheme and address.
    #[error(
        "invalid transport URL {url:?}: missing `://` — write scheme://address, \
         e.g. tcp://127.0.0.1:4000"
    )]
    MissingSeparator {
        /// The input.
        url: String,
    },
    /// The scheme is not one this build supports.
    #[error(
        "invalid transport URL {url:?}: unknown scheme {scheme:?} — supported schemes are {}",
        Scheme::supported_list()
    )]
    UnknownScheme {
        /// The input.
        url: String,
        /// The scheme as written.
        scheme: String,
    },
    /// The host of a URL with a `host:port` address is missing or malformed.
    #[error("invalid transport URL {url:?}: {reason}")]
    BadHost {
        /// The input.
        url: String,
        /// What is wrong with the host.
        reason: &'static str,
    },
    /// A URL that needs a port (every `host:port` scheme but ws/wss) has no `:PORT`.
    #[error("invalid transport URL {url:?}: missing port — add `:PORT` (use :0 to let the OS choose when binding)")]
    MissingPort {
        /// The input.
        url: String,
    },
    /// The port is not a number from 0 to 65535.
    #[error("invalid transport URL {url:?}: port {port:?} is not a number from 0 to 65535")]
    BadPort {
        /// The input.
        url: String,
        /// The port as written.
        port: String,
    },
    /// The path of a ws/wss URL is malformed.
    #[error("invalid transport URL {url:?}: {reason}")]
    BadPath {
        /// The input.
        url: String,
        /// What is wrong with the path.
        reason: &'static str,
    },
    /// A `unix://` URL without a path.
    #[error("invalid transport URL {url:?}: the unix socket path is empty — write e.g. unix:///run/app.sock")]
    EmptyUnixPath {
        /// The input.
        url: String,
    },
    /// A unix socket path that is not UTF-8 and so cannot be written as a URL.
    #[error("unix socket path {path:?} is not valid UTF-8 and cannot be written as a URL — choose a UTF-8 path")]
    NonUtf8UnixPath {
        /// The path, with invalid bytes replaced.
        path: String,
    },
    /// An `inproc://` URL without a name.
    #[error("invalid transport URL {url:?}: the inproc name is empty — write e.g. inproc://jobs")]
    EmptyInprocName {
        /// The input.
        url: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(input: &str) -> Url {
        let url = Url::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(url.to_string(), input);
        assert_eq!(Url::parse(&url.to_string()), Ok(url.clone()));
        url
    }

    #[test]
    fn tcp_ipv4_parses_and_prints_back() {
        let url = round_trip("tcp://127.0.0.1:4000");
        assert_eq!(url.scheme(), Scheme::Tcp);
        assert_eq!(url.host(), Some(&Host::Ip([127, 0, 0, 1].into())));
        assert_eq!(url.port(), Some(4000));
        assert_eq!(url.socket_addr(), Some(([127, 0, 0, 1], 4000).into()));
        assert_eq!(url.path(), None);
        assert_eq!(url.name(), None);
    }

    #[test]
    fn ipv6_needs_brackets_and_prints_with_them() {
        let url = round_trip("tcp://[::1]:0");
        assert_eq!(url.host(), Some(&Host::Ip(Ipv6Addr::LOCALHOST.into())));
        assert_eq!(url.port(), Some(0));
        assert!(matches!(
            Url::parse("tcp://::1:4000"),
            Err(UrlError::BadHost { .. })
        ));
    }

    #[test]
    fn host_names_stay_names_until_dial_time() {
        let url = round_trip("tls://localhost:4443");
        assert_eq!(url.scheme(), Scheme::Tls);
        assert_eq!(url.host(), Some(&Host::Name("localhost".into())));
        assert_eq!(url.socket_addr(), None);
        round_trip("tcp://node-1.example_internal.lan:1");
    }

    #[test]
    fn scheme_and_host_name_are_case_insensitive() {
        let url = Url::parse("TCP://LocalHost:80").expect("valid");
        assert_eq!(url.to_string(), "tcp://localhost:80");
    }

    #[test]
    fn unix_paths_absolute_and_relative() {
        let abs = round_trip("unix:///run/app.sock");
        assert_eq!(abs.path(), Some(Path::new("/run/app.sock")));
        let rel = round_trip("unix://rel.sock");
        assert_eq!(rel.path(), Some(Path::new("rel.sock")));
        assert_eq!(Url::unix("/run/app.sock"), Ok(abs));
    }

    #[test]
    fn inproc_names() {
        let url = round_trip("inproc://jobs");
        assert_eq!(url.name(), Some("jobs"));
        assert_eq!(Url::inproc("jobs"), Ok(url));
    }

    #[test]
    fn built_from_socket_addrs() {
        let v4: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let v6: SocketAddr = "[::1]:9".parse().expect("addr");
        assert_eq!(Url::tcp(v4).to_string(), "tcp://127.0.0.1:9");
        assert_eq!(Url::tls(v6).to_string(), "tls://[::1]:9");
    }

    #[test]
    fn try_from_and_from_str_agree_with_parse() {
        let parsed: Url = "inproc://a".parse().expect("valid");
        assert_eq!(Url::try_from("inproc://a"), Ok(parsed.clone()));
        assert_eq!(Url::try_from(String::from("inproc://a")), Ok(parsed));
    }

    #[test]
    fn unknown_scheme_lists_the_supported_ones() {
        let err = Url::parse("http://127.0.0.1:80").expect_err("unknown scheme");
        assert!(matches!(err, UrlError::UnknownScheme { ref scheme, .. } if scheme == "http"));
        let msg = err.to_string();
        assert!(msg.contains("\"http://127.0.0.1:80\""), "{msg}");
        for scheme in Scheme::ALL {
            assert!(msg.contains(&format!("{scheme}://")), "{msg}");
        }
    }

    #[test]
    fn missing_separator_is_reported() {
        let err = Url::parse("127.0.0.1:4000").expect_err("no scheme");
        assert!(matches!(err, UrlError::MissingSeparator { .. }));
        assert!(err.to_string().contains("\"127.0.0.1:4000\""));
    }

    #[test]
    fn bad_hosts_are_reported() {
        for input in [
            "tcp://:4000",
            "tcp://[::1:4000",
            "tcp://[nope]:4000",
            "tcp://[::1]4000",
            "tcp://999.0.0.1:4000",
            "tcp://bad host:4000",
            "tcp://a..b:4000",
        ] {
            let err = Url::parse(input).expect_err(input);
            assert!(matches!(err, UrlError::BadHost { .. }), "{input}: {err}");
            assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
        }
    }

    #[test]
    fn missing_and_bad_ports_are_reported() {
        for input in ["tcp://127.0.0.1", "tcp://127.0.0.1:", "tls://[::1]"] {
            let err = Url::parse(input).expect_err(input);
            assert!(
                matches!(err, UrlError::MissingPort { .. }),
                "{input}: {err}"
            );
        }
        for input in [
            "tcp://127.0.0.1:65536",
            "tcp://127.0.0.1:+80",
            "tcp://127.0.0.1:80/",
            "tcp://localhost:http",
        ] {
            let err = Url::parse(input).expect_err(input);
            assert!(matches!(err, UrlError::BadPort { .. }), "{input}: {err}");
            assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
        }
    }

    #[test]
    fn empty_unix_path_and_inproc_name_are_reported() {
        assert!(matches!(
            Url::parse("unix://"),
            Err(UrlError::EmptyUnixPath { .. })
        ));
        assert!(matches!(
            Url::parse("inproc://"),
            Err(UrlError::EmptyInprocName { .. })
        ));
        assert!(matches!(Url::unix(""), Err(UrlError::EmptyUnixPath { .. })));
        assert!(matches!(
            Url::inproc(""),
            Err(UrlError::EmptyInprocName { .. })
        ));
    }

    #[test]
    fn websocket_urls_default_their_port_and_keep_their_path() {
        let url = round_trip("ws://127.0.0.1:8080/plexus?room=3");
        assert_eq!(url.scheme(), Scheme::Ws);
        assert_eq!(url.port(), Some(8080));
        assert_eq!(url.ws_path(), Some("/plexus?room=3"));
        assert_eq!(url.socket_addr(), Some(([127, 0, 0, 1], 8080).into()));

        let bare = Url::parse("ws://localhost").expect("no port");
        assert_eq!(bare.port(), Some(80));
        assert_eq!(bare.ws_path(), Some("/"));
        assert_eq!(bare.to_string(), "ws://localhost:80");
        let secure = Url::parse("wss://[::1]/x").expect("no port");
        assert_eq!(secure.port(), Some(443));
        assert_eq!(secure.to_string(), "wss://[::1]:443/x");
        // `/` is the default path, so it is not printed and compares equal.
        assert_eq!(Url::parse("ws://h:1/"), Url::parse("ws://h:1"));
        assert_eq!(
            Url::ws(([127, 0, 0, 1], 9).into()).to_string(),
            "ws://127.0.0.1:9"
        );
        assert_eq!(Url::tcp(([127, 0, 0, 1], 9).into()).ws_path(), None);
    }

    #[test]
    fn quic_urls_need_a_port_and_have_no_path() {
        let url = round_trip("quic://[::1]:4433");
        assert_eq!(url.scheme(), Scheme::Quic);
        assert!(url.scheme().needs_tls());
        assert_eq!(url.ws_path(), None);
        assert!(matches!(
            Url::parse("quic://127.0.0.1"),
            Err(UrlError::MissingPort { .. })
        ));
        assert!(matches!(
            Url::parse("quic://127.0.0.1:4433/x"),
            Err(UrlError::BadPort { .. })
        ));
        assert_eq!(
            Url::quic(([127, 0, 0, 1], 9).into()).to_string(),
            "quic://127.0.0.1:9"
        );
    }

    #[test]
    fn bad_websocket_paths_are_reported() {
        for input in [
            "ws://127.0.0.1:80/a b",
            "ws://127.0.0.1:80/a#frag",
            "wss://127.0.0.1:80/caf\u{e9}",
        ] {
            let err = Url::parse(input).expect_err(input);
            assert!(matches!(err, UrlError::BadPath { .. }), "{input}: {err}");
            assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
        }
        let long = format!("ws://h:1/{}", "a".repeat(1024));
        assert!(matches!(Url::parse(&long), Err(UrlError::BadPath { .. })));
    }

    fn any_url() -> impl Strategy<Value = Url> {
        prop_oneof![
            (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| Url::tcp((ip, port).into())),
            (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| Url::tls((ip, port).into())),
            ("[a-z][a-z0-9-]{0,10}(\\.[a-z0-9_]{1,8}){0,3}", any::<u16>()).prop_map(
                |(host, port)| Url::parse(&format!("tcp://{host}:{port}")).expect("valid host")
            ),
            (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| Url::quic((ip, port).into())),
            (
                any::<IpAddr>(),
                any::<u16>(),
                "(/[a-zA-Z0-9._~%!$&'()*+,;=:@?-]{0,20}){0,3}"
            )
                .prop_map(|(ip, port, path)| {
                    let url = Url::wss((ip, port).into()).to_string();
                    Url::parse(&format!("{url}{path}")).expect("valid path")
                }),
            "/?[^\\x00]{1,40}".prop_map(|path| Url::unix(path).expect("non-empty")),
            ".{1,40}".prop_map(|name| Url::inproc(name).expect("non-empty")),
        ]
    }

    proptest! {
        #[test]
        fn display_round_trips_through_parse(url in any_url()) {
            prop_assert_eq!(Url::parse(&url.to_string()), Ok(url));
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,60}") {
            let _ = Url::parse(&input);
        }
    }
}
