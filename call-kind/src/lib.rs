//! The five shapes a Plexus call can take on the wire, defined once.
//!
//! The runtime re-exports this type as `plexus::contract::CallKind` (it is in
//! every `MethodDescriptor`), and the code generator (`plexus-codegen`, behind
//! both `#[plexus::service]` and `.proto` contracts) classifies methods with
//! it and emits paths to the runtime's re-export. One definition means the
//! generator cannot name a kind the runtime does not have. It lives in a crate
//! of its own because the runtime must not depend on the generator (syn,
//! prost-build) and the generator runs at build time, before the runtime.
//!
//! This crate owns only the classification and its stable names; it knows
//! nothing of frames, codecs or tokens.

#![no_std]
#![warn(missing_docs)]

/// The shape of one operation's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// One request, then an ack carrying the reply, or a rejection.
    Unary,
    /// One request and no ack: fire-and-forget.
    OneWay,
    /// A stream of requests, then one reply.
    ClientStream,
    /// One request, then a stream of replies.
    ServerStream,
    /// Requests and replies streamed both ways at once.
    Bidi,
}

impl CallKind {
    /// Every kind, in declaration order.
    pub const ALL: [CallKind; 5] = [
        CallKind::Unary,
        CallKind::OneWay,
        CallKind::ClientStream,
        CallKind::ServerStream,
        CallKind::Bidi,
    ];

    /// The stable lowercase name used in descriptors and fingerprints
    /// (`unary`, `oneway`, `client_stream`, `server_stream`, `bidi`). It is
    /// part of every contract's fingerprint: never change one.
    pub const fn as_str(self) -> &'static str {
        match self {
            CallKind::Unary => "unary",
            CallKind::OneWay => "oneway",
            CallKind::ClientStream => "client_stream",
            CallKind::ServerStream => "server_stream",
            CallKind::Bidi => "bidi",
        }
    }

    /// Whether requests arrive as a stream.
    pub const fn streams_requests(self) -> bool {
        matches!(self, CallKind::ClientStream | CallKind::Bidi)
    }

    /// Whether replies leave as a stream.
    pub const fn streams_replies(self) -> bool {
        matches!(self, CallKind::ServerStream | CallKind::Bidi)
    }
}

impl core::fmt::Display for CallKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::CallKind;

    #[test]
    fn names_are_distinct_and_stable() {
        let names = CallKind::ALL.map(CallKind::as_str);
        assert_eq!(
            names,
            ["unary", "oneway", "client_stream", "server_stream", "bidi"]
        );
    }

    #[test]
    fn streaming_directions_follow_the_shape() {
        let requests = CallKind::ALL.map(CallKind::streams_requests);
        let replies = CallKind::ALL.map(CallKind::streams_replies);
        assert_eq!(requests, [false, false, true, false, true]);
        assert_eq!(replies, [false, false, false, true, true]);
    }
}
