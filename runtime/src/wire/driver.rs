//! The handshake as two state machines, one per side, with no I/O.
//!
//! [`ListenerHandshake`] and [`DialerHandshake`] own every rule of
//! PROTOCOL.md §3: the order of the listener's checks (§3.3), the version and
//! self-connect rules, the session-key exchange both ways (§3.6) and the hello
//! and handshake timeouts. They are fed the bytes that arrived, the end of the
//! stream and the current instant, and answer with a step: what to send, what
//! to wait for, or how the handshake ended. They never read a socket, a clock
//! or a task; the endpoint's shells do that and nothing else, and the unit
//! tests below drive both sides on explicit instants.
//!
//! What the listener cannot know from the bytes alone — whether its endpoint
//! has a place under its connection limit, is shutting down, admits the
//! dialer's certificate (§3.7), and what its accept hook says — the shell
//! supplies as an [`Admission`] once the hello is in; the driver applies it in
//! the protocol's order.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::handshake::{self, Answer, Hello, Refusal, RefusalCode, Welcome};
use super::key::{HelloKey, SessionKey, WelcomeKey};
use super::WireError;

/// Why a handshake did not establish a connection, as either side sees it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The peer speaks another protocol version.
    #[error(
        "the peer speaks Plexus protocol v{theirs}, this side v{}",
        handshake::VERSION
    )]
    VersionMismatch {
        /// The peer's version.
        theirs: u16,
    },
    /// The peer is this node itself.
    #[error("the peer is this node itself")]
    SelfConnect,
    /// The listener refused (this side, for a listener; the peer, for a dialer).
    #[error("refused ({code:?}): {reason}")]
    Refused {
        /// Why, as a code.
        code: RefusalCode,
        /// Why, in words.
        reason: String,
    },
    /// The peer's handshake bytes are malformed.
    #[error(transparent)]
    Malformed(WireError),
    /// The peer could not prove the session key (or proved none).
    #[error("refused to trust the peer: {0}")]
    Untrusted(String),
    /// The handshake did not complete within its limit.
    #[error("the handshake did not complete within {after:?}")]
    TimedOut {
        /// The limit that passed.
        after: Duration,
    },
    /// The stream ended, or the listener is shutting down.
    #[error("closed during the handshake: {0}")]
    Closed(String),
}

/// What a completed handshake agreed: the peer's identity, limits and data,
/// and the bytes that followed the handshake (the first frames, if the peer
/// was quick).
#[derive(Debug)]
pub struct Agreed {
    /// The peer's node id.
    pub peer_node: u128,
    /// Largest frame payload the peer accepts.
    pub peer_max_frame: u32,
    /// The peer's per-stream receive window.
    pub peer_window: u32,
    /// Most calls the peer serves at once.
    pub peer_max_calls: u32,
    /// The peer's application data (its hello data, or its accept hook's reply).
    pub data: Bytes,
    /// Bytes received past the handshake: the start of the frame stream.
    pub leftover: BytesMut,
}

/// What one side announces about itself.
#[derive(Clone, Debug)]
pub struct LocalSide {
    /// This node's id.
    pub node_id: u128,
    /// Largest frame payload this side accepts.
    pub max_frame: u32,
    /// This side's per-stream receive window.
    pub window: u32,
    /// Most calls this side serves at once for the peer.
    pub max_calls: u32,
    /// The group's session key, if it has one (§3.6).
    pub key: Option<SessionKey>,
}

/// The endpoint's verdict on what a hello alone cannot decide (§3.3 steps
/// 5–7), given to [`ListenerHandshake::admit`].
#[derive(Clone, Debug)]
pub struct Admission {
    /// `Some(limit)` when the endpoint is at its connection limit.
    pub at_limit: Option<usize>,
    /// Whether the endpoint began shutting down.
    pub shutting_down: bool,
    /// `Err(reason)` when the allow-list does not admit the dialer.
    pub allowed: Result<(), String>,
}

impl Admission {
    /// Room, running, and no allow-list in the way.
    pub fn open() -> Admission {
        Admission {
            at_limit: None,
            shutting_down: false,
            allowed: Ok(()),
        }
    }
}

/// What the listener's shell does next.
#[derive(Debug)]
pub enum ListenerStep {
    /// Read more bytes, giving up at [`ListenerHandshake::deadline`].
    Read,
    /// The whole hello is in and passed the checks it decides alone; call
    /// [`ListenerHandshake::admit`] with the endpoint's verdict.
    Admit,
    /// Send the welcome, then read the dialer's key proof.
    SendAndRead(Bytes),
    /// The connection is established: send `answer` first if there is one.
    Accepted {
        /// The welcome, unless it was already sent.
        answer: Option<Bytes>,
        /// What the handshake agreed.
        agreed: Agreed,
    },
    /// The handshake failed: send `answer` (a refusal) if there is one, shut
    /// down the sending side and drop the stream.
    Failed {
        /// The refusal to send; `None` means close without a word.
        answer: Option<Bytes>,
        /// Why.
        failure: HandshakeFailure,
    },
}

enum ListenerState {
    /// Reading the hello.
    Hello,
    /// The hello is in; waiting for the endpoint's verdict.
    Admitting(Hello),
    /// The welcome proved the key; reading the dialer's proof.
    Proof {
        hello: Hello,
        theirs: HelloKey,
        ours: WelcomeKey,
    },
    /// Accepted or failed; nothing more to do.
    Done,
}

/// The listener's side of one handshake (PROTOCOL.md §3.3, §3.6).
pub struct ListenerHandshake {
    local: LocalSide,
    buf: BytesMut,
    state: ListenerState,
    hello_limit: Duration,
    handshake_limit: Duration,
    hello_deadline: Instant,
    deadline: Instant,
}

impl ListenerHandshake {
    /// A handshake on a stream accepted at `now`: the hello must be in within
    /// `hello_limit`, the whole handshake (the key proof included) within
    /// `handshake_limit`.
    pub fn new(
        local: LocalSide,
        hello_limit: Duration,
        handshake_limit: Duration,
        now: Instant,
    ) -> ListenerHandshake {
        ListenerHandshake {
            local,
            buf: BytesMut::with_capacity(256),
            state: ListenerState::Hello,
            hello_limit,
            handshake_limit,
            hello_deadline: now + hello_limit,
            deadline: now + handshake_limit,
        }
    }

    /// When the shell gives up waiting (and calls [`timed_out`](Self::timed_out)):
    /// the hello deadline while the hello is arriving, the handshake deadline after.
    pub fn deadline(&self) -> Instant {
        match self.state {
            ListenerState::Hello => self.hello_deadline.min(self.deadline),
            _ => self.deadline,
        }
    }

    /// The hello, once it is in (for the accept hook's request).
    pub fn hello(&self) -> Option<&Hello> {
        match &self.state {
            ListenerState::Admitting(h) | ListenerState::Proof { hello: h, .. } => Some(h),
            _ => None,
        }
    }

    /// Bytes arrived at `now`.
    pub fn receive(&mut self, bytes: &[u8], now: Instant) -> ListenerStep {
        if let Some(step) = self.timed_out(now) {
            return step;
        }
        self.buf.extend_from_slice(bytes);
        match self.state {
            ListenerState::Hello => self.read_hello(),
            ListenerState::Proof { .. } => self.read_proof(),
            // Bytes past the hello before the verdict are the first frames.
            ListenerState::Admitting(_) => ListenerStep::Admit,
            ListenerState::Done => ListenerStep::Read,
        }
    }

    /// The stream ended.
    pub fn end_of_stream(&mut self) -> ListenerStep {
        let reason = match self.state {
            ListenerState::Proof { .. } => {
                "the dialer closed the stream before proving the session key"
            }
            _ => "the dialer closed the stream during the hello",
        };
        self.fail(None, HandshakeFailure::Closed(reason.into()))
    }

    /// `Some(failure)` if `now` is past the deadline for what is awaited. The
    /// listener answers a late hello with nothing (§3.3).
    pub fn timed_out(&mut self, now: Instant) -> Option<ListenerStep> {
        let after = match self.state {
            ListenerState::Hello if now >= self.hello_deadline => self.hello_limit,
            ListenerState::Done => return None,
            _ if now >= self.deadline => self.handshake_limit,
            _ => return None,
        };
        Some(self.fail(None, HandshakeFailure::TimedOut { after }))
    }

    fn fail(&mut self, answer: Option<Bytes>, failure: HandshakeFailure) -> ListenerStep {
        self.state = ListenerState::Done;
        ListenerStep::Failed { answer, failure }
    }

    fn refuse(
        &mut self,
        code: RefusalCode,
        reason: String,
        failure: HandshakeFailure,
    ) -> ListenerStep {
        let mut out = BytesMut::new();
        Answer::Refusal(Refusal {
            version: handshake::VERSION,
            code,
            reason,
        })
        .encode(&mut out);
        self.fail(Some(out.freeze()), failure)
    }

    fn refuse_with(&mut self, code: RefusalCode, reason: String) -> ListenerStep {
        let failure = HandshakeFailure::Refused {
            code,
            reason: reason.clone(),
        };
        self.refuse(code, reason, failure)
    }

    fn malformed(&mut self, source: WireError) -> ListenerStep {
        self.refuse(
            RefusalCode::Malformed,
            source.to_string(),
            HandshakeFailure::Malformed(source),
        )
    }

    /// §3.3 steps 1–4.
    fn read_hello(&mut self) -> ListenerStep {
        match handshake::peek_version(&self.buf) {
            Ok(Some(v)) if v != handshake::VERSION => {
                let reason = format!(
                    "this node speaks Plexus protocol v{}, the dialer v{v}",
                    handshake::VERSION
                );
                return self.refuse(
                    RefusalCode::VersionMismatch,
                    reason,
                    HandshakeFailure::VersionMismatch { theirs: v },
                );
            }
            Ok(_) => {}
            Err(source) => return self.malformed(source),
        }
        let hello = match Hello::decode(&mut self.buf) {
            Ok(Some(h)) => h,
            Ok(None) => return ListenerStep::Read,
            Err(source) => return self.malformed(source),
        };
        if hello.node_id == self.local.node_id {
            return self.refuse(
                RefusalCode::SelfConnect,
                "the dialer is this node itself".into(),
                HandshakeFailure::SelfConnect,
            );
        }
        self.state = ListenerState::Admitting(hello);
        ListenerStep::Admit
    }

    /// §3.3 steps 5–10: the endpoint's verdict, the key, then the accept
    /// hook (called only if everything before it passed; its `Err` is the
    /// refusal's reason, its `Ok` the welcome's data).
    pub fn admit(
        &mut self,
        admission: Admission,
        hook: impl FnOnce(&Hello) -> Result<Bytes, String>,
    ) -> ListenerStep {
        let hello = match std::mem::replace(&mut self.state, ListenerState::Done) {
            ListenerState::Admitting(h) => h,
            other => {
                // Out of order: nothing to admit; stay where we were.
                self.state = other;
                return ListenerStep::Read;
            }
        };
        if let Some(max) = admission.at_limit {
            let reason = format!("at its limit of {max} connections; try again later or elsewhere");
            return self.refuse_with(RefusalCode::TooManyConnections, reason);
        }
        if admission.shutting_down {
            return self.refuse(
                RefusalCode::ShuttingDown,
                "the node is shutting down".into(),
                HandshakeFailure::Closed("shutting down".into()),
            );
        }
        if let Err(reason) = admission.allowed {
            return self.refuse_with(RefusalCode::NotAllowed, reason);
        }
        let key_exchange = match &self.local.key {
            None => None,
            Some(key) => match HelloKey::find(&hello.extensions) {
                Err(source) => return self.malformed(source),
                Ok(None) => {
                    return self.refuse_with(
                        RefusalCode::KeyRequired,
                        "this node requires its group's session key and the dialer proved none \
                         (give both sides the same SessionKey)"
                            .into(),
                    )
                }
                Ok(Some(theirs)) if theirs.key_id != key.id() => {
                    return self.refuse_with(
                        RefusalCode::KeyMismatch,
                        "the dialer holds another session key than this node".into(),
                    )
                }
                Ok(Some(theirs)) => {
                    let ours = WelcomeKey::answer(key, &theirs, hello.node_id, self.local.node_id);
                    Some((theirs, ours))
                }
            },
        };
        let reply = match hook(&hello) {
            Ok(d) if d.len() > handshake::MAX_HANDSHAKE_DATA as usize => {
                let reason = format!(
                    "the accept hook's reply of {} bytes exceeds the handshake limit of {} bytes",
                    d.len(),
                    handshake::MAX_HANDSHAKE_DATA
                );
                return self.refuse_with(RefusalCode::Rejected, reason);
            }
            Ok(d) => d,
            Err(reason) => return self.refuse_with(RefusalCode::Rejected, reason),
        };
        let welcome = Welcome {
            version: handshake::VERSION,
            node_id: self.local.node_id,
            max_frame: self.local.max_frame,
            window: self.local.window,
            max_calls: self.local.max_calls,
            extensions: key_exchange
                .iter()
                .map(|(_, ours)| ours.extension())
                .collect(),
            data: reply,
        };
        let mut out = BytesMut::new();
        Answer::Welcome(welcome).encode(&mut out);
        let answer = out.freeze();
        match key_exchange {
            None => ListenerStep::Accepted {
                answer: Some(answer),
                agreed: self.agree(hello),
            },
            Some((theirs, ours)) => {
                self.state = ListenerState::Proof {
                    hello,
                    theirs,
                    ours,
                };
                // The proof may already be in, behind the hello.
                match self.read_proof() {
                    ListenerStep::Read => ListenerStep::SendAndRead(answer),
                    // Decided before the welcome went out: a bad proof
                    // closes without a word, a good one still needs the
                    // welcome sent.
                    ListenerStep::Accepted { agreed, .. } => ListenerStep::Accepted {
                        answer: Some(answer),
                        agreed,
                    },
                    other => other,
                }
            }
        }
    }

    /// §3.6 step 4: the dialer's proof, checked in constant time.
    fn read_proof(&mut self) -> ListenerStep {
        let ListenerState::Proof {
            hello,
            theirs,
            ours,
        } = &self.state
        else {
            return ListenerStep::Read;
        };
        let Some(key) = &self.local.key else {
            return ListenerStep::Read;
        };
        match ours.check_dialer_proof(
            &mut self.buf,
            key,
            theirs,
            hello.node_id,
            self.local.node_id,
        ) {
            Ok(None) => ListenerStep::Read,
            Ok(Some(true)) => {
                let ListenerState::Proof { hello, .. } =
                    std::mem::replace(&mut self.state, ListenerState::Done)
                else {
                    return ListenerStep::Read;
                };
                ListenerStep::Accepted {
                    answer: None,
                    agreed: self.agree(hello),
                }
            }
            // Nothing more is said: a dialer that held the key would have
            // proved it; this one (a replay, a forgery) learns nothing.
            Ok(Some(false)) => self.fail(
                None,
                HandshakeFailure::Untrusted(
                    "its proof of the session key is wrong for this handshake (replayed or forged)"
                        .into(),
                ),
            ),
            Err(source) => self.fail(None, HandshakeFailure::Malformed(source)),
        }
    }

    fn agree(&mut self, hello: Hello) -> Agreed {
        self.state = ListenerState::Done;
        Agreed {
            peer_node: hello.node_id,
            peer_max_frame: hello.max_frame,
            peer_window: hello.window,
            peer_max_calls: hello.max_calls,
            data: hello.data,
            leftover: std::mem::take(&mut self.buf),
        }
    }
}

/// What the dialer's shell does next.
#[derive(Debug)]
pub enum DialerStep {
    /// Read more bytes, giving up at [`DialerHandshake::deadline`].
    Read,
    /// The connection is established: send `proof` first if there is one.
    Accepted {
        /// The key proof message (§3.6), with a key.
        proof: Option<Bytes>,
        /// What the handshake agreed.
        agreed: Agreed,
    },
    /// The handshake failed; the dialer sends nothing more.
    Failed(HandshakeFailure),
}

/// The dialer's hello, checked and ready before anything is dialed.
pub struct DialerHello {
    local: LocalSide,
    hello_key: Option<HelloKey>,
    hello: Hello,
}

impl DialerHello {
    /// The hello announcing `local` with application `data`. Data over the
    /// handshake limit fails here, before anything is dialed.
    pub fn new(local: LocalSide, data: Bytes) -> Result<DialerHello, HandshakeFailure> {
        if data.len() > handshake::MAX_HANDSHAKE_DATA as usize {
            return Err(HandshakeFailure::Malformed(
                WireError::HandshakeDataTooLarge {
                    len: u32::try_from(data.len()).unwrap_or(u32::MAX),
                    max: handshake::MAX_HANDSHAKE_DATA,
                },
            ));
        }
        let hello_key = local.key.as_ref().map(HelloKey::new);
        let hello = Hello {
            version: handshake::VERSION,
            node_id: local.node_id,
            max_frame: local.max_frame,
            window: local.window,
            max_calls: local.max_calls,
            extensions: hello_key.iter().map(HelloKey::extension).collect(),
            data,
        };
        Ok(DialerHello {
            local,
            hello_key,
            hello,
        })
    }

    /// The stream is up at `now`: the handshake, to finish within `limit`,
    /// and the encoded hello to send first.
    pub fn start(self, limit: Duration, now: Instant) -> (DialerHandshake, Bytes) {
        let mut out = BytesMut::new();
        self.hello.encode(&mut out);
        let driver = DialerHandshake {
            local: self.local,
            hello_key: self.hello_key,
            buf: BytesMut::with_capacity(256),
            limit,
            deadline: now + limit,
            done: false,
        };
        (driver, out.freeze())
    }
}

/// The dialer's side of one handshake (PROTOCOL.md §3.3, §3.6), from the
/// hello sent on.
pub struct DialerHandshake {
    local: LocalSide,
    hello_key: Option<HelloKey>,
    buf: BytesMut,
    limit: Duration,
    deadline: Instant,
    done: bool,
}

impl DialerHandshake {
    /// When the shell gives up (and calls [`timed_out`](Self::timed_out)).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// `Some(failure)` if `now` is past the deadline.
    pub fn timed_out(&mut self, now: Instant) -> Option<DialerStep> {
        if self.done || now < self.deadline {
            return None;
        }
        self.done = true;
        Some(DialerStep::Failed(HandshakeFailure::TimedOut {
            after: self.limit,
        }))
    }

    /// The stream ended before the answer.
    pub fn end_of_stream(&mut self) -> DialerStep {
        self.done = true;
        DialerStep::Failed(HandshakeFailure::Closed(
            "the peer closed the stream before answering".into(),
        ))
    }

    /// Bytes arrived at `now`.
    pub fn receive(&mut self, bytes: &[u8], now: Instant) -> DialerStep {
        if let Some(step) = self.timed_out(now) {
            return step;
        }
        if self.done {
            return DialerStep::Read;
        }
        self.buf.extend_from_slice(bytes);
        let answer = match Answer::decode(&mut self.buf) {
            Ok(Some(a)) => a,
            Ok(None) => return DialerStep::Read,
            Err(WireError::UnsupportedVersion(theirs)) => {
                return self.failed(HandshakeFailure::VersionMismatch { theirs })
            }
            Err(source) => return self.failed(HandshakeFailure::Malformed(source)),
        };
        let welcome = match answer {
            Answer::Welcome(w) => w,
            Answer::Refusal(r) => {
                let failure = match r.code {
                    RefusalCode::VersionMismatch => {
                        HandshakeFailure::VersionMismatch { theirs: r.version }
                    }
                    RefusalCode::SelfConnect => HandshakeFailure::SelfConnect,
                    code => HandshakeFailure::Refused {
                        code,
                        reason: r.reason,
                    },
                };
                return self.failed(failure);
            }
        };
        if welcome.version != handshake::VERSION {
            return self.failed(HandshakeFailure::VersionMismatch {
                theirs: welcome.version,
            });
        }
        if welcome.node_id == self.local.node_id {
            return self.failed(HandshakeFailure::SelfConnect);
        }
        let proof = match (&self.local.key, &self.hello_key) {
            (Some(key), Some(hello_key)) => {
                match prove_to_listener(key, hello_key, &welcome, self.local.node_id) {
                    Ok(p) => Some(p),
                    Err(reason) => return self.failed(HandshakeFailure::Untrusted(reason)),
                }
            }
            _ => None,
        };
        self.done = true;
        DialerStep::Accepted {
            proof,
            agreed: Agreed {
                peer_node: welcome.node_id,
                peer_max_frame: welcome.max_frame,
                peer_window: welcome.window,
                peer_max_calls: welcome.max_calls,
                data: welcome.data,
                leftover: std::mem::take(&mut self.buf),
            },
        }
    }

    fn failed(&mut self, failure: HandshakeFailure) -> DialerStep {
        self.done = true;
        DialerStep::Failed(failure)
    }
}

/// The dialer's side of the key proof, given the listener's welcome: the
/// listener must have proved the same key in this handshake (a keyed dialer
/// never accepts a keyless listener: that would be a downgrade). Returns the
/// dialer's own proof, to send before any frame.
fn prove_to_listener(
    key: &SessionKey,
    hello: &HelloKey,
    welcome: &Welcome,
    me: u128,
) -> Result<Bytes, String> {
    let theirs = WelcomeKey::find(&welcome.extensions)
        .map_err(|e| format!("its key proof is malformed: {e}"))?
        .ok_or_else(|| {
            "it proved no session key, and this side has one (a keyed node never \
             accepts a keyless peer; give both the same SessionKey)"
                .to_owned()
        })?;
    if theirs.key_id != key.id() {
        return Err("it holds another session key than this side".to_owned());
    }
    if !theirs.verify(key, hello, me, welcome.node_id) {
        return Err("its proof of the session key is wrong for this handshake".to_owned());
    }
    Ok(theirs.dialer_proof(key, hello, me, welcome.node_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::handshake::Extension;
    use bytes::BufMut;

    const DIALER: u128 = 0xd1;
    const LISTENER: u128 = 0x11;
    const HELLO_LIMIT: Duration = Duration::from_secs(4);
    const LIMIT: Duration = Duration::from_secs(10);

    fn side(node_id: u128, key: Option<&SessionKey>) -> LocalSide {
        LocalSide {
            node_id,
            max_frame: 1 << 20,
            window: 1 << 16,
            max_calls: 64,
            key: key.cloned(),
        }
    }

    fn listener(key: Option<&SessionKey>, t0: Instant) -> ListenerHandshake {
        ListenerHandshake::new(side(LISTENER, key), HELLO_LIMIT, LIMIT, t0)
    }

    fn dialer(key: Option<&SessionKey>, t0: Instant) -> (DialerHandshake, Bytes) {
        DialerHello::new(side(DIALER, key), Bytes::from_static(b"hi"))
            .expect("small data")
            .start(LIMIT, t0)
    }

    fn hello_bytes(edit: impl FnOnce(&mut Hello)) -> Bytes {
        let mut hello = Hello {
            version: handshake::VERSION,
            node_id: DIALER,
            max_frame: 1 << 20,
            window: 1 << 16,
            max_calls: 64,
            extensions: Vec::new(),
            data: Bytes::new(),
        };
        edit(&mut hello);
        let mut out = BytesMut::new();
        hello.encode(&mut out);
        out.freeze()
    }

    fn no_hook(_: &Hello) -> Result<Bytes, String> {
        Ok(Bytes::new())
    }

    /// The refusal a failed step sends, decoded, with the failure.
    fn refusal(step: ListenerStep) -> (Refusal, HandshakeFailure) {
        match step {
            ListenerStep::Failed {
                answer: Some(bytes),
                failure,
            } => match Answer::decode(&mut BytesMut::from(&bytes[..])) {
                Ok(Some(Answer::Refusal(r))) => (r, failure),
                other => panic!("not a refusal: {other:?}"),
            },
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn admitted(
        l: &mut ListenerHandshake,
        hello: &[u8],
        admission: Admission,
        t: Instant,
    ) -> ListenerStep {
        match l.receive(hello, t) {
            ListenerStep::Admit => l.admit(admission, no_hook),
            other => other,
        }
    }

    /// Runs a whole handshake between the two drivers; returns both ends.
    fn run(lkey: Option<&SessionKey>, dkey: Option<&SessionKey>) -> (ListenerStep, DialerStep) {
        let t0 = Instant::now();
        let mut l = listener(lkey, t0);
        let (mut d, hello) = dialer(dkey, t0);
        let welcome = match l.receive(&hello, t0) {
            ListenerStep::Admit => l.admit(Admission::open(), no_hook),
            other => return (other, DialerStep::Read),
        };
        let (answer, after) = match welcome {
            ListenerStep::Accepted {
                answer: Some(a),
                agreed,
            } => (a, Some(agreed)),
            ListenerStep::SendAndRead(a) => (a, None),
            other => return (other, DialerStep::Read),
        };
        let dstep = d.receive(&answer, t0);
        let lstep = match (after, &dstep) {
            (Some(agreed), _) => ListenerStep::Accepted {
                answer: None,
                agreed,
            },
            (
                None,
                DialerStep::Accepted {
                    proof: Some(proof), ..
                },
            ) => l.receive(proof, t0),
            (None, _) => ListenerStep::Read,
        };
        (lstep, dstep)
    }

    #[test]
    fn keyless_handshake_agrees_both_sides_limits_and_data() {
        let (l, d) = run(None, None);
        let ListenerStep::Accepted { agreed: la, .. } = l else {
            panic!("listener: {l:?}")
        };
        let DialerStep::Accepted { proof, agreed: da } = d else {
            panic!("dialer: {d:?}")
        };
        assert!(proof.is_none());
        assert_eq!(la.peer_node, DIALER);
        assert_eq!(la.data, Bytes::from_static(b"hi"));
        assert_eq!(
            (la.peer_max_frame, la.peer_window, la.peer_max_calls),
            (1 << 20, 1 << 16, 64)
        );
        assert_eq!(da.peer_node, LISTENER);
    }

    #[test]
    fn hello_in_single_bytes_and_the_first_frames_behind_it_are_kept() {
        let t0 = Instant::now();
        let mut l = listener(None, t0);
        let (_, hello) = dialer(None, t0);
        let mut stream = hello.to_vec();
        stream.extend_from_slice(b"first frame bytes");
        let mut step = ListenerStep::Read;
        for (i, b) in stream.iter().enumerate() {
            step = l.receive(&[*b], t0);
            if i + 1 < hello.len() {
                assert!(matches!(step, ListenerStep::Read), "byte {i}: {step:?}");
            }
        }
        assert!(matches!(step, ListenerStep::Admit));
        let ListenerStep::Accepted { agreed, .. } = l.admit(Admission::open(), no_hook) else {
            panic!("not accepted")
        };
        assert_eq!(&agreed.leftover[..], b"first frame bytes");
    }

    #[test]
    fn another_version_is_refused_at_six_bytes_naming_ours() {
        let t0 = Instant::now();
        let mut l = listener(None, t0);
        let (r, f) = refusal(l.receive(b"PLXS\x00\x01", t0));
        assert_eq!(r.code, RefusalCode::VersionMismatch);
        assert_eq!(r.version, handshake::VERSION);
        assert!(matches!(f, HandshakeFailure::VersionMismatch { theirs: 1 }));
        // The dialer of that other version reads our refusal.
        let (mut d, _) = dialer(None, t0);
        let mut answer = BytesMut::new();
        Answer::Refusal(Refusal {
            version: 3,
            code: RefusalCode::VersionMismatch,
            reason: String::new(),
        })
        .encode(&mut answer);
        assert!(matches!(
            d.receive(&answer, t0),
            DialerStep::Failed(HandshakeFailure::VersionMismatch { theirs: 3 })
        ));
    }

    #[test]
    fn a_welcome_of_another_version_is_a_version_mismatch_for_the_dialer() {
        let t0 = Instant::now();
        let (mut d, _) = dialer(None, t0);
        assert!(matches!(
            d.receive(b"PLXS\x00\x03\x00", t0),
            DialerStep::Failed(HandshakeFailure::VersionMismatch { theirs: 3 })
        ));
    }

    #[test]
    fn malformed_hellos_are_refused_malformed() {
        let t0 = Instant::now();
        let cases: Vec<(&str, Bytes)> = vec![
            ("bad magic", Bytes::from_static(b"HTTP/1")),
            ("max frame", hello_bytes(|h| h.max_frame = 10)),
            ("max calls", hello_bytes(|h| h.max_calls = 0)),
            (
                "duplicate extension",
                hello_bytes(|h| {
                    let e = Extension {
                        kind: 0x7f00,
                        value: Bytes::new(),
                    };
                    h.extensions = vec![e.clone(), e];
                }),
            ),
        ];
        for (what, bytes) in cases {
            let mut l = listener(None, t0);
            let (r, f) = refusal(l.receive(&bytes, t0));
            assert_eq!(r.code, RefusalCode::Malformed, "{what}");
            assert!(matches!(f, HandshakeFailure::Malformed(_)), "{what}");
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_the_body_arrives() {
        let t0 = Instant::now();
        let mut fixed = BytesMut::new();
        fixed.put_slice(b"PLXS");
        fixed.put_u16(handshake::VERSION);
        fixed.put_u16(0);
        fixed.put_u128(DIALER);
        fixed.put_u32(1 << 20);
        fixed.put_u32(1 << 16);
        fixed.put_u32(1);
        fixed.put_u16(0);
        fixed.put_u32(handshake::MAX_HANDSHAKE_DATA + 1);
        let mut l = listener(None, t0);
        let (r, _) = refusal(l.receive(&fixed, t0));
        assert_eq!(r.code, RefusalCode::Malformed);
    }

    #[test]
    fn self_connect_is_refused_by_the_listener_and_dropped_by_the_dialer() {
        let t0 = Instant::now();
        let mut l = listener(None, t0);
        let (r, f) = refusal(l.receive(&hello_bytes(|h| h.node_id = LISTENER), t0));
        assert_eq!(r.code, RefusalCode::SelfConnect);
        assert!(matches!(f, HandshakeFailure::SelfConnect));
        // A welcome bearing the dialer's own id.
        let mut d = DialerHello::new(side(LISTENER, None), Bytes::new())
            .expect("no data")
            .start(LIMIT, t0)
            .0;
        let (_, welcome) = run_listener_welcome(t0);
        assert!(matches!(
            d.receive(&welcome, t0),
            DialerStep::Failed(HandshakeFailure::SelfConnect)
        ));
    }

    /// A keyless listener's welcome to a keyless dialer.
    fn run_listener_welcome(t0: Instant) -> (Agreed, Bytes) {
        let mut l = listener(None, t0);
        match admitted(&mut l, &hello_bytes(|_| {}), Admission::open(), t0) {
            ListenerStep::Accepted {
                answer: Some(a),
                agreed,
            } => (agreed, a),
            other => panic!("not accepted: {other:?}"),
        }
    }

    #[test]
    fn the_endpoints_verdict_is_applied_in_protocol_order() {
        let t0 = Instant::now();
        let hello = hello_bytes(|_| {});
        let everything_wrong = Admission {
            at_limit: Some(7),
            shutting_down: true,
            allowed: Err("not on the list".into()),
        };
        let (r, _) = refusal(admitted(
            &mut listener(None, t0),
            &hello,
            everything_wrong.clone(),
            t0,
        ));
        assert_eq!(r.code, RefusalCode::TooManyConnections);
        assert!(r.reason.contains("limit of 7"), "{}", r.reason);
        let shutting = Admission {
            at_limit: None,
            ..everything_wrong.clone()
        };
        let (r, f) = refusal(admitted(
            &mut listener(None, t0),
            &hello,
            shutting.clone(),
            t0,
        ));
        assert_eq!(r.code, RefusalCode::ShuttingDown);
        assert!(matches!(f, HandshakeFailure::Closed(_)));
        let not_allowed = Admission {
            shutting_down: false,
            ..shutting
        };
        // The allow-list comes before the key: a keyed listener refuses a
        // keyless dialer it does not admit as NotAllowed.
        let key = SessionKey::new(b"k");
        let (r, _) = refusal(admitted(
            &mut listener(Some(&key), t0),
            &hello,
            not_allowed,
            t0,
        ));
        assert_eq!(r.code, RefusalCode::NotAllowed);
        assert_eq!(r.reason, "not on the list");
    }

    #[test]
    fn the_accept_hook_decides_last_and_only_when_all_else_passed() {
        let t0 = Instant::now();
        let hello = hello_bytes(|h| h.data = Bytes::from_static(b"token"));
        let mut l = listener(None, t0);
        assert!(matches!(l.receive(&hello, t0), ListenerStep::Admit));
        let full = Admission {
            at_limit: Some(1),
            ..Admission::open()
        };
        let step = l.admit(full, |_| panic!("the hook runs after the limit check"));
        assert_eq!(refusal(step).0.code, RefusalCode::TooManyConnections);

        let mut l = listener(None, t0);
        l.receive(&hello, t0);
        let step = l.admit(Admission::open(), |h| {
            assert_eq!(h.data, Bytes::from_static(b"token"));
            Err("wrong token".into())
        });
        let (r, _) = refusal(step);
        assert_eq!(
            (r.code, r.reason.as_str()),
            (RefusalCode::Rejected, "wrong token")
        );

        let mut l = listener(None, t0);
        l.receive(&hello, t0);
        let huge = Bytes::from(vec![0u8; handshake::MAX_HANDSHAKE_DATA as usize + 1]);
        let (r, _) = refusal(l.admit(Admission::open(), |_| Ok(huge)));
        assert_eq!(r.code, RefusalCode::Rejected);

        let mut l = listener(None, t0);
        l.receive(&hello, t0);
        let ListenerStep::Accepted {
            answer: Some(a), ..
        } = l.admit(Admission::open(), |_| Ok(Bytes::from_static(b"reply")))
        else {
            panic!("not accepted")
        };
        let (mut d, _) = dialer(None, t0);
        let DialerStep::Accepted { agreed, .. } = d.receive(&a, t0) else {
            panic!("dialer did not accept")
        };
        assert_eq!(agreed.data, Bytes::from_static(b"reply"));
    }

    #[test]
    fn every_refusal_code_reaches_the_dialer_as_its_error() {
        let t0 = Instant::now();
        for code in 1..=9u16 {
            let (mut d, _) = dialer(None, t0);
            let mut answer = BytesMut::new();
            Answer::Refusal(Refusal {
                version: handshake::VERSION,
                code: RefusalCode::from_u16(code),
                reason: format!("reason {code}"),
            })
            .encode(&mut answer);
            let DialerStep::Failed(f) = d.receive(&answer, t0) else {
                panic!("code {code} did not fail the dial")
            };
            match (code, f) {
                (1, HandshakeFailure::VersionMismatch { theirs }) => assert_eq!(theirs, 2),
                (2, HandshakeFailure::SelfConnect) => {}
                (3..=9, HandshakeFailure::Refused { code: c, reason }) => {
                    assert_eq!(c as u16, code);
                    assert_eq!(reason, format!("reason {code}"));
                }
                (code, f) => panic!("code {code}: {f:?}"),
            }
        }
    }

    #[test]
    fn a_shared_key_is_proved_both_ways() {
        let key = SessionKey::new(b"group key");
        let (l, d) = run(Some(&key), Some(&key));
        assert!(
            matches!(d, DialerStep::Accepted { proof: Some(_), .. }),
            "{d:?}"
        );
        assert!(
            matches!(l, ListenerStep::Accepted { answer: None, .. }),
            "{l:?}"
        );
    }

    #[test]
    fn a_keyed_listener_refuses_a_keyless_dialer_and_another_key() {
        let key = SessionKey::new(b"group key");
        let (l, _) = run(Some(&key), None);
        assert_eq!(refusal(l).0.code, RefusalCode::KeyRequired);
        let (l, _) = run(Some(&key), Some(&SessionKey::new(b"other key")));
        assert_eq!(refusal(l).0.code, RefusalCode::KeyMismatch);
        // A key extension of the wrong length is malformed.
        let t0 = Instant::now();
        let bad = hello_bytes(|h| {
            h.extensions = vec![Extension {
                kind: crate::wire::key::KEY_EXTENSION,
                value: Bytes::from_static(b"short"),
            }]
        });
        let (r, _) = refusal(admitted(
            &mut listener(Some(&key), t0),
            &bad,
            Admission::open(),
            t0,
        ));
        assert_eq!(r.code, RefusalCode::Malformed);
    }

    #[test]
    fn a_keyed_dialer_never_accepts_a_keyless_or_stripped_welcome() {
        let key = SessionKey::new(b"group key");
        // A keyless listener skips the dialer's key extension and welcomes it...
        let (l, d) = run(None, Some(&key));
        assert!(matches!(l, ListenerStep::Accepted { .. }));
        // ...which the dialer refuses: no downgrade.
        assert!(
            matches!(d, DialerStep::Failed(HandshakeFailure::Untrusted(_))),
            "{d:?}"
        );

        // A keyed listener's welcome with its key extension stripped on the way.
        let t0 = Instant::now();
        let mut l = listener(Some(&key), t0);
        let (mut d, hello) = dialer(Some(&key), t0);
        l.receive(&hello, t0);
        let ListenerStep::SendAndRead(welcome) = l.admit(Admission::open(), no_hook) else {
            panic!("no welcome")
        };
        let Ok(Some(Answer::Welcome(mut w))) = Answer::decode(&mut BytesMut::from(&welcome[..]))
        else {
            panic!("not a welcome")
        };
        w.extensions.clear();
        let mut stripped = BytesMut::new();
        Answer::Welcome(w).encode(&mut stripped);
        assert!(matches!(
            d.receive(&stripped, t0),
            DialerStep::Failed(HandshakeFailure::Untrusted(_))
        ));
    }

    #[test]
    fn a_replayed_dialer_proof_is_closed_on_without_a_word() {
        let key = SessionKey::new(b"group key");
        let t0 = Instant::now();
        // A recorded handshake: its hello and its proof.
        let mut l1 = listener(Some(&key), t0);
        let (mut d1, hello) = dialer(Some(&key), t0);
        l1.receive(&hello, t0);
        let ListenerStep::SendAndRead(welcome) = l1.admit(Admission::open(), no_hook) else {
            panic!("no welcome")
        };
        let DialerStep::Accepted {
            proof: Some(proof), ..
        } = d1.receive(&welcome, t0)
        else {
            panic!("no proof")
        };
        // Played back to a new handshake: the listener's nonce is new.
        let mut l2 = listener(Some(&key), t0);
        l2.receive(&hello, t0);
        assert!(matches!(
            l2.admit(Admission::open(), no_hook),
            ListenerStep::SendAndRead(_)
        ));
        match l2.receive(&proof, t0) {
            ListenerStep::Failed {
                answer: None,
                failure: HandshakeFailure::Untrusted(_),
            } => {}
            other => panic!("replay accepted or answered: {other:?}"),
        }
        // Sent together with the hello, before any welcome, the same.
        let mut l3 = listener(Some(&key), t0);
        let mut both = hello.to_vec();
        both.extend_from_slice(&proof);
        l3.receive(&both, t0);
        assert!(matches!(
            l3.admit(Admission::open(), no_hook),
            ListenerStep::Failed { answer: None, .. }
        ));
        // Garbage instead of a proof is malformed, also without a word.
        let mut l4 = listener(Some(&key), t0);
        l4.receive(&hello, t0);
        l4.admit(Admission::open(), no_hook);
        assert!(matches!(
            l4.receive(&[0u8; 64], t0),
            ListenerStep::Failed {
                answer: None,
                failure: HandshakeFailure::Malformed(_)
            }
        ));
    }

    #[test]
    fn a_hello_not_in_within_the_hello_limit_gets_no_answer() {
        let t0 = Instant::now();
        let mut l = listener(None, t0);
        assert_eq!(l.deadline(), t0 + HELLO_LIMIT);
        let hello = hello_bytes(|_| {});
        assert!(matches!(
            l.receive(&hello[..10], t0 + Duration::from_secs(3)),
            ListenerStep::Read
        ));
        assert!(l.timed_out(t0 + Duration::from_millis(3999)).is_none());
        match l.timed_out(t0 + HELLO_LIMIT) {
            Some(ListenerStep::Failed {
                answer: None,
                failure: HandshakeFailure::TimedOut { after },
            }) => assert_eq!(after, HELLO_LIMIT),
            other => panic!("{other:?}"),
        }
        // The rest arriving late changes nothing.
        let mut late = listener(None, t0);
        assert!(matches!(
            late.receive(&hello, t0 + HELLO_LIMIT),
            ListenerStep::Failed { answer: None, .. }
        ));
    }

    #[test]
    fn the_key_proof_is_bounded_by_the_handshake_limit_not_the_hello_limit() {
        let key = SessionKey::new(b"group key");
        let t0 = Instant::now();
        let mut l = listener(Some(&key), t0);
        let (_, hello) = dialer(Some(&key), t0);
        l.receive(&hello, t0 + Duration::from_secs(1));
        assert!(matches!(
            l.admit(Admission::open(), no_hook),
            ListenerStep::SendAndRead(_)
        ));
        assert_eq!(l.deadline(), t0 + LIMIT);
        assert!(l.timed_out(t0 + Duration::from_secs(5)).is_none());
        assert!(matches!(
            l.timed_out(t0 + LIMIT),
            Some(ListenerStep::Failed {
                failure: HandshakeFailure::TimedOut { after: LIMIT },
                ..
            })
        ));
    }

    #[test]
    fn the_stream_ending_early_closes_either_side() {
        let t0 = Instant::now();
        let mut l = listener(None, t0);
        l.receive(b"PLX", t0);
        assert!(matches!(
            l.end_of_stream(),
            ListenerStep::Failed {
                answer: None,
                failure: HandshakeFailure::Closed(_)
            }
        ));
        let (mut d, _) = dialer(None, t0);
        assert!(matches!(
            d.end_of_stream(),
            DialerStep::Failed(HandshakeFailure::Closed(_))
        ));
    }

    #[test]
    fn the_dialer_gives_up_at_its_handshake_limit() {
        let t0 = Instant::now();
        let (mut d, _) = dialer(None, t0);
        assert_eq!(d.deadline(), t0 + LIMIT);
        assert!(matches!(
            d.receive(b"PLXS", t0 + Duration::from_secs(9)),
            DialerStep::Read
        ));
        assert!(d.timed_out(t0 + Duration::from_secs(9)).is_none());
        assert!(matches!(
            d.timed_out(t0 + LIMIT),
            Some(DialerStep::Failed(HandshakeFailure::TimedOut {
                after: LIMIT
            }))
        ));
    }

    #[test]
    fn the_dialer_refuses_oversized_data_before_dialing() {
        let data = Bytes::from(vec![0u8; handshake::MAX_HANDSHAKE_DATA as usize + 1]);
        assert!(matches!(
            DialerHello::new(side(DIALER, None), data),
            Err(HandshakeFailure::Malformed(
                WireError::HandshakeDataTooLarge { .. }
            ))
        ));
    }

    #[test]
    fn a_malformed_answer_fails_the_dial() {
        let t0 = Instant::now();
        let (mut d, _) = dialer(None, t0);
        assert!(matches!(
            d.receive(b"PLXS\x00\x02\x07", t0),
            DialerStep::Failed(HandshakeFailure::Malformed(WireError::BadAnswerStatus(7)))
        ));
        let (mut d, _) = dialer(None, t0);
        assert!(matches!(
            d.receive(b"SSH-2.0-", t0),
            DialerStep::Failed(HandshakeFailure::Malformed(WireError::BadMagic(_)))
        ));
    }
}
