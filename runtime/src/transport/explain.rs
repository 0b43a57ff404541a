//! Operating-system errors made readable: what was being attempted and, for
//! the common causes, what to do about it.
//!
//! The error kind is preserved and the original error stays reachable through
//! `source()`, so callers can still branch on `io::ErrorKind`.

use std::error::Error;
use std::fmt;
use std::io;

/// What a transport was doing when the operating system said no.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Attempt {
    /// Looking a host name up.
    Resolve,
    /// Binding a listening socket.
    Bind,
    /// Connecting to a listener.
    Connect,
    /// Accepting a connection.
    Accept,
}

impl Attempt {
    fn describe(self) -> &'static str {
        match self {
            Attempt::Resolve => "resolving the host failed",
            Attempt::Bind => "binding failed",
            Attempt::Connect => "connecting failed",
            Attempt::Accept => "accepting a connection failed",
        }
    }

    /// The likely remedy for `kind`, where there is a usual one.
    fn hint(self, kind: io::ErrorKind) -> Option<&'static str> {
        use io::ErrorKind::*;
        match (self, kind) {
            (Attempt::Resolve, _) => Some("check the host name, or use an IP address"),
            (Attempt::Bind, AddrInUse) => Some(
                "another socket already uses this address; stop it or pick another (port 0 lets the OS choose)",
            ),
            (Attempt::Bind, AddrNotAvailable) => {
                Some("this machine has no such address; bind 127.0.0.1, [::1] or 0.0.0.0")
            }
            (Attempt::Bind | Attempt::Connect, PermissionDenied) => Some(
                "ports below 1024 and protected socket paths need privileges; pick another address",
            ),
            (Attempt::Connect, ConnectionRefused) => {
                Some("nothing accepts connections there; start the listener or check the address")
            }
            (Attempt::Connect, NotFound) => {
                Some("no socket exists at this path; start the listener or check the path")
            }
            (Attempt::Connect, TimedOut) => {
                Some("the host did not answer; check the address and any firewall")
            }
            _ => None,
        }
    }
}

/// Wraps `error` with what was attempted and a hint, keeping its kind.
pub(crate) fn explain(attempt: Attempt, error: io::Error) -> io::Error {
    io::Error::new(
        error.kind(),
        Explained {
            attempt,
            hint: attempt.hint(error.kind()),
            source: error,
        },
    )
}

#[derive(Debug)]
struct Explained {
    attempt: Attempt,
    hint: Option<&'static str>,
    source: io::Error,
}

impl fmt::Display for Explained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.attempt.describe(), self.source)?;
        if let Some(hint) = self.hint {
            write!(f, " — {hint}")?;
        }
        Ok(())
    }
}

impl Error for Explained {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_kind_and_adds_the_remedy() {
        let error = explain(
            Attempt::Connect,
            io::Error::from(io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
        let text = error.to_string();
        assert!(text.starts_with("connecting failed: "), "{text}");
        assert!(text.contains("start the listener"), "{text}");
        let inner = error.get_ref().and_then(Error::source);
        assert!(inner.is_some(), "the original error stays reachable");
    }

    #[test]
    fn unusual_errors_get_no_hint() {
        let error = explain(Attempt::Accept, io::Error::other("odd"));
        assert_eq!(error.to_string(), "accepting a connection failed: odd");
    }
}
