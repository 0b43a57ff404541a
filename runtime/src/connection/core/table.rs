//! The call table: every call open on a connection, in either direction, in
//! one place, keyed by call id.
//!
//! Ids are chosen by the side that opens a call — odd for the dialer, even for
//! the listener — so the two directions never collide. An entry lives from
//! the call's open until its end (ack, reject, cancel, or the connection's
//! close); whoever removes it owns delivering the outcome.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::budget::Slot;
use super::flow::{RecvWindow, SendCredit};
use super::reply::ReplyTx;
use crate::error::{CallError, Reject};
use crate::wire::SystemCode;

/// How a call ended, before the caller dresses it with op and peer names.
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    /// The handler rejected the call.
    Rejected(Reject),
    /// The peer's runtime refused or ended the call.
    System { code: SystemCode, message: String },
    /// The connection ended.
    Lost(Arc<str>),
}

impl Failure {
    pub(crate) fn into_call_error(
        self,
        op: &Arc<str>,
        peer: &Arc<str>,
        timeout: Option<std::time::Duration>,
    ) -> CallError {
        let op = op.clone();
        let peer = peer.clone();
        match self {
            Failure::Rejected(r) => CallError::Rejected(r),
            Failure::Lost(reason) => CallError::ConnectionLost { op, peer, reason },
            Failure::System { code, message } => match code {
                SystemCode::NoSuchOperation => CallError::NoSuchOperation { op, peer },
                SystemCode::DeadlineExceeded => CallError::Timeout {
                    op,
                    peer,
                    after: timeout.unwrap_or_default(),
                },
                SystemCode::Cancelled => CallError::Cancelled { op, peer },
                SystemCode::InvalidPayload => CallError::Decode { op, peer, message },
                SystemCode::GoingAway => CallError::Closing { op, peer },
                SystemCode::SessionClosed => CallError::SessionClosed {
                    op,
                    peer,
                    session: message.into(),
                },
                SystemCode::ResourceExhausted => CallError::Overloaded { op, peer, message },
                SystemCode::PermissionDenied => CallError::PermissionDenied { op, peer, message },
                SystemCode::Protocol | SystemCode::TooLarge => {
                    CallError::Protocol { op, peer, message }
                }
                SystemCode::HandlerFailed | SystemCode::Unknown => {
                    CallError::HandlerFailed { op, peer, message }
                }
            },
        }
    }
}

/// One item delivered to a stream's receiving side.
#[derive(Debug)]
pub(crate) enum InItem {
    Data(Bytes),
    End,
    Failed(Failure),
}

/// The receiving half of a stream, as the reader sees it.
#[derive(Debug)]
pub(crate) struct InboundTx {
    pub(crate) tx: mpsc::UnboundedSender<InItem>,
    pub(crate) window: Arc<RecvWindow>,
    /// The sender ended the stream (End): nothing more may follow.
    pub(crate) ended: bool,
}

impl InboundTx {
    pub(crate) fn new(tx: mpsc::UnboundedSender<InItem>, window: Arc<RecvWindow>) -> Self {
        InboundTx {
            tx,
            window,
            ended: false,
        }
    }
}

/// One open call.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    /// Calls we opened: where the terminal ack or reject goes (unary, client stream).
    pub(crate) reply: Option<ReplyTx>,
    /// Where the peer's stream messages go (server stream and bidi replies;
    /// client stream and bidi requests of calls we serve).
    pub(crate) inbound: Option<InboundTx>,
    /// Credit for the messages we send on this call.
    pub(crate) credit: Option<Arc<SendCredit>>,
    /// Calls we serve: stops the handler.
    pub(crate) cancel: Option<CancellationToken>,
    /// Unary calls we opened: when the connection's sweeper fails them.
    pub(crate) deadline: Option<std::time::Instant>,
    /// Calls we opened: their place within the peer's call limit, given
    /// back when the entry leaves the table.
    pub(crate) slot: Option<Slot>,
    /// Calls we serve: which admission this entry belongs to (see
    /// `Core::attach`); 0 for calls we opened.
    pub(crate) serial: u64,
}

impl Entry {
    /// Delivers how the call ended: the peer's ack with its reply (which
    /// also ends the reply stream and this side's sending), or a failure.
    pub(crate) fn finish(self, outcome: Result<Bytes, Failure>) {
        let body = match outcome {
            Ok(body) => body,
            Err(failure) => return self.fail(failure),
        };
        if let Some(c) = &self.credit {
            c.close();
        }
        if let Some(i) = self.inbound {
            let _ = i.tx.send(InItem::End);
        }
        if let Some(r) = self.reply {
            let _ = r.send(Ok(body));
        }
    }

    /// Delivers a terminal failure to whoever waits on this call.
    pub(crate) fn fail(self, failure: Failure) {
        if let Some(c) = &self.credit {
            c.fail(failure.clone());
        }
        if let Some(t) = &self.cancel {
            t.cancel();
        }
        if let Some(i) = self.inbound {
            let _ = i.tx.send(InItem::Failed(failure.clone()));
        }
        if let Some(r) = self.reply {
            let _ = r.send(Err(failure));
        }
    }
}

/// The table itself. Call ids are small local integers chosen by this
/// connection's sides, so they need no keyed hash.
pub(crate) type CallTable = HashMap<u32, Entry, BuildHasherDefault<IdHasher>>;

/// Hashes a call id by spreading its bits with one multiplication (ids step
/// by two; the multiply keeps the table's buckets evenly used).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
