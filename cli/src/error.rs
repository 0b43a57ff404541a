//! What can go wrong, and the exit code each failure gives scripts.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success; for `health`, the service is `SERVING` |
//! | 1 | bad input: arguments, JSON, an unknown service or operation, a payload the server could not decode |
//! | 2 | could not reach the target: no such node, connection or TLS failure, handshake refused |
//! | 3 | the call failed: timeout, connection lost, handler failed, cancelled |
//! | 4 | `health`: the service is not serving (or unknown, or the server is draining) |
//! | 5 | the handler rejected the call (its code and message are printed) |

use plexus::wire::handshake::RefusalCode;
use plexus::{CallError, ConnectError};

/// A failure, carrying its message (with what to try) and its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input.
    #[error("{0}")]
    Usage(String),
    /// The target could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The target refused the connection because it is shutting down
    /// (unreachable, and for `health` not serving).
    #[error("{0}")]
    Draining(String),
    /// The call failed on the way.
    #[error("{0}")]
    Call(String),
    /// The health check did not say `SERVING`.
    #[error("{0}")]
    NotServing(String),
    /// The handler said no.
    #[error("{0}")]
    Rejected(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 1,
            CliError::Unreachable(_) | CliError::Draining(_) => 2,
            CliError::Call(_) => 3,
            CliError::NotServing(_) => 4,
            CliError::Rejected(_) => 5,
        }
    }

    /// Bad input, with what to try.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::Usage(message.into())
    }

    /// A failed connection attempt to `target`.
    pub fn connect(target: &str, error: &ConnectError) -> Self {
        let hint = match error {
            ConnectError::Refused { code, .. } => match code {
                RefusalCode::Rejected => {
                    "the server's accept hook refused this client; check the credentials or hello data it expects"
                }
                RefusalCode::TooManyConnections => "the server is at its connection limit; try again later",
                RefusalCode::ShuttingDown => "the server is shutting down",
                _ => "check that the target runs a compatible Plexus version",
            },
            ConnectError::VersionMismatch { .. } => {
                "upgrade the older side; both must speak the same protocol version"
            }
            ConnectError::HandshakeTimeout { .. } | ConnectError::Handshake { .. } => {
                "is the target a Plexus endpoint? for tls:// give --cacert (and --server-name if the certificate names another host)"
            }
            _ if target.starts_with("tls://") => {
                "for tls:// give --cacert with the CA that signed the server's certificate (and --server-name if it names another host)"
            }
            _ => "is a server listening there? `plexus ls` lists the nodes this host can hear",
        };
        let message = format!("cannot connect to {target}: {error}\n  try: {hint}");
        match error {
            ConnectError::Refused {
                code: RefusalCode::ShuttingDown,
                ..
            } => CliError::Draining(message),
            _ => CliError::Unreachable(message),
        }
    }

    /// A failed call to `op`; `shape` says what the operation expects, for
    /// payloads the server could not decode.
    pub fn call(op: &str, error: CallError, shape: Option<&str>) -> Self {
        match error {
            CallError::Rejected(reject) => CliError::Rejected(format!(
                "{op} rejected the call with code {}: {}",
                reject.code(),
                reject.message()
            )),
            CallError::NoSuchOperation { peer, .. } => CliError::Usage(format!(
                "{peer} has no operation `{op}`\n  try: `plexus describe <target>` lists what it serves"
            )),
            CallError::Decode { message, peer, .. } => {
                let mut text = format!("{peer} could not decode the request for {op}: {message}");
                if let Some(shape) = shape {
                    text.push_str(&format!("\n  expected: {shape}"));
                }
                CliError::Usage(text)
            }
            CallError::Timeout { after, .. } => CliError::Call(format!(
                "{op}: no reply within {}\n  try: a longer --timeout",
                humantime::format_duration(after)
            )),
            other => CliError::Call(other.to_string()),
        }
    }
}

/// `name` and the candidates closest to it, for "did you mean" lines.
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let lower = name.to_lowercase();
    let mut scored: Vec<(f64, &str)> = candidates
        .into_iter()
        .map(|c| {
            let candidate = c.to_lowercase();
            let mut score = strsim::jaro_winkler(&lower, &candidate);
            // The part after the last `/` or `.` carries the meaning: rank
            // `greet.Greeter/helo` next to `greet.Greeter/hello`.
            let tail = |s: &str| s.rsplit(['/', '.']).next().unwrap_or("").to_owned();
            score = score.max(strsim::jaro_winkler(&tail(&lower), &tail(&candidate)) - 0.05);
            if candidate.contains(&lower) || lower.contains(&candidate) {
                score += 0.1;
            }
            (score, c)
        })
        .filter(|(score, _)| *score > 0.7)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.into_iter().take(3).map(|(_, c)| c).collect()
}

/// ` — did you mean a, b?` or nothing.
pub fn did_you_mean(near: &[&str]) -> String {
    if near.is_empty() {
        String::new()
    } else {
        format!("\n  did you mean: {}?", near.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_names_rank_typos_first() {
        let ops = [
            "greet.Greeter/hello",
            "greet.Greeter/wave",
            "greet.Greeter/waves",
            "greet.Greeter/countdown",
        ];
        assert_eq!(nearest("greet.Greeter/helo", ops)[0], "greet.Greeter/hello");
        assert_eq!(
            nearest("greet.Greeter/wav", ops)[..2],
            ["greet.Greeter/wave", "greet.Greeter/waves"]
        );
        assert!(nearest("zzzz.Qqqq/xxxxxx", ops).is_empty());
    }
}
