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
}

impl Scheme {
    /// Every scheme this build understands, in the order error messages list them.
    pub const ALL: [Scheme; 4] = [Scheme::Tcp, Scheme::Tls, Scheme::Unix, Scheme::Inproc];

    /// The scheme as written before `://`, e.g. `"tcp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Tls => "tls",
            Scheme::Unix => "unix",
            Scheme::Inproc => "inproc",
        }
    }

    /// Looks a scheme up by name, ignoring ASCII case.
    fn from_name(name: &str) -> Option<Scheme> {
        Scheme::ALL
            .into_iter()
            .find(|scheme| scheme.as_str().eq_ignore_ascii_case(name))
    }

    /// `tcp://, tls://, unix://, inproc://`, for error messages.
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

/// The host part of a `tcp://` or `tls://` URL.
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
/// variant: tcp/tls → `Socket`, unix → `Path`, inproc → `Name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Target {
    Socket { host: Host, port: u16 },
    Path(String),
    Name(String),
}

/// A transport address such as `tcp://127.0.0.1:4000`, `tls://[::1]:4443`,
/// `unix:///run/app.sock` or `inproc://jobs`.
///
/// Parse one with [`Url::parse`] (or `str::parse`), or build one with
/// [`Url::tcp`], [`Url::tls`], [`Url::unix`] and [`Url::inproc`]. Printing a
/// `Url` gives a string that parses back to an equal `Url`.
///
/// Forms accepted:
/// - `tcp://HOST:PORT` and `tls://HOST:PORT`, where `HOST` is an IPv4 address,
///   an IPv6 address in brackets (`[::1]`), or a DNS name such as `localhost`
///   (resolved at bind/dial time). Port `0` asks the OS to choose when binding.
///   IPv6 scope ids (`%eth0`) are not carried.
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
            Scheme::Tcp | Scheme::Tls => parse_socket(input, rest)?,
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

    fn socket(scheme: Scheme, addr: SocketAddr) -> Url {
        Url {
            scheme,
            target: Target::Socket {
                host: Host::Ip(addr.ip()),
                port: addr.port(),
            },
        }
    }

    /// The transport this URL selects.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host of a `tcp://` or `tls://` URL; `None` for other schemes.
    pub fn host(&self) -> Option<&Host> {
        match &self.target {
            Target::Socket { host, .. } => Some(host),
            Target::Path(_) | Target::Name(_) => None,
        }
    }

    /// The port of a `tcp://` or `tls://` URL; `None` for other schemes.
    pub fn port(&self) -> Option<u16> {
        match &self.target {
            Target::Socket { port, .. } => Some(*port),
            Target::Path(_) | Target::Name(_) => None,
        }
    }

    /// The socket address of a `tcp://` or `tls://` URL whose host is a literal
    /// IP address; `None` for DNS names (which need resolving) and other schemes.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match &self.target {
            Target::Socket {
                host: Host::Ip(ip),
                port,
            } => Some(SocketAddr::new(*ip, *port)),
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

/// Parses the `HOST:PORT` part of a tcp/tls URL. `url` is the whole input, for
/// error messages.
fn parse_socket(url: &str, rest: &str) -> Result<Target, UrlError> {
    let bad_host = |reason: &'static str| UrlError::BadHost {
        url: url.to_owned(),
        reason,
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
        return Err(UrlError::MissingPort {
            url: url.to_owned(),
        });
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
    Ok(Target::Socket { host, port })
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
                host: Host::Ip(IpAddr::V6(ip)),
                port,
            } => write!(f, "[{ip}]:{port}"),
            Target::Socket { host, port } => write!(f, "{host}:{port}"),
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
    /// The host of a tcp/tls URL is missing or malformed.
    #[error("invalid transport URL {url:?}: {reason}")]
    BadHost {
        /// The input.
        url: String,
        /// What is wrong with the host.
        reason: &'static str,
    },
    /// A tcp/tls URL has no `:PORT`.
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

    fn any_url() -> impl Strategy<Value = Url> {
        prop_oneof![
            (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| Url::tcp((ip, port).into())),
            (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| Url::tls((ip, port).into())),
            ("[a-z][a-z0-9-]{0,10}(\\.[a-z0-9_]{1,8}){0,3}", any::<u16>()).prop_map(
                |(host, port)| Url::parse(&format!("tcp://{host}:{port}")).expect("valid host")
            ),
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
