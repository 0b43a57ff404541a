//! Two receive rules of PROTOCOL.md as small machines: operation-id
//! interning with its caps (§5, §13.2: [`OpTable`], which the core keeps)
//! and the stall rule that cuts off a peer that reads nothing while over the
//! memory budget (§13.2: [`StallWatch`], which the reader keeps while it
//! holds the peer back). Both are fed what arrived and the current instant
//! and answer what it means; the tests below run them on explicit instants.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most distinct operations a peer may define on one connection.
pub(crate) const MAX_OPS: usize = 4096;
/// Most bytes of operation names a peer may define on one connection.
pub(crate) const MAX_OP_BYTES: usize = 256 * 1024;
/// What one interned operation costs besides its name (table slot, route,
/// shared string header), as charged to the budget.
pub(crate) const OP_OVERHEAD: usize = 64;
/// While holding the peer back, how often the reader looks again even
/// without a wake-up (a safety net; releases and drains wake it).
pub(crate) const HOLD_RECHECK: Duration = Duration::from_millis(250);

/// Operations the peer has defined on this connection, by index, each with
/// what it resolved to (`R`: the handler's route, once looked up).
pub(crate) struct OpTable<R> {
    ops: Vec<(Arc<str>, Option<R>)>,
    name_bytes: usize,
}

impl<R> Default for OpTable<R> {
    fn default() -> Self {
        OpTable {
            ops: Vec::new(),
            name_bytes: 0,
        }
    }
}

impl<R: Clone> OpTable<R> {
    /// The peer defines operation `name` as `index` (§5): indices come in
    /// order from 0, within [`MAX_OPS`] and [`MAX_OP_BYTES`]. `resolve`
    /// looks the name up once (returning the shared name, so a known one is
    /// not stored twice). `Ok(bytes)`: what the definition holds for the
    /// connection's life, to charge to the budget; `Err`: the violation to
    /// close the connection for.
    pub(crate) fn define(
        &mut self,
        index: usize,
        name: &str,
        resolve: impl FnOnce(&str) -> (Arc<str>, Option<R>),
    ) -> Result<usize, String> {
        if index != self.ops.len() {
            return Err(format!(
                "operation `{name}` defined as index {index}, expected {}",
                self.ops.len()
            ));
        }
        if self.ops.len() >= MAX_OPS {
            return Err(format!(
                "more than {MAX_OPS} operations defined on one connection"
            ));
        }
        if self.name_bytes + name.len() > MAX_OP_BYTES {
            return Err(format!(
                "operation names on one connection exceed {MAX_OP_BYTES} bytes"
            ));
        }
        let (name, route) = resolve(name);
        self.name_bytes += name.len();
        let held = name.len() + OP_OVERHEAD;
        self.ops.push((name, route));
        Ok(held)
    }

    /// How many operations are defined.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    /// The operation a call names by `index`; `Err`: the violation.
    pub(crate) fn get(&self, index: usize) -> Result<(Arc<str>, Option<R>), String> {
        match self.ops.get(index) {
            Some((op, route)) => Ok((op.clone(), route.clone())),
            None => Err(format!("call uses undefined operation index {index}")),
        }
    }
}

/// What [`StallWatch::observe`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Keep holding the peer back; look again by `until` (or at a wake-up).
    Wait {
        /// When to look again at the latest.
        until: Instant,
    },
    /// The peer read none of the `queued` bytes for `after`: cut it off.
    Stalled {
        /// Bytes queued for the peer.
        queued: usize,
        /// How long nothing of them left.
        after: Duration,
    },
}

/// The stall rule while the reader holds the peer back (§13.2): a peer with
/// bytes queued for it of which none leave for `limit` is cut off; one that
/// drains slowly never is, and neither is one held back only by this side's
/// own handlers or stream readers (nothing queued for it).
pub(crate) struct StallWatch {
    limit: Duration,
    written: u64,
    progress: Instant,
}

impl StallWatch {
    /// Starts watching at `now`, with `written` bytes handed to the
    /// transport so far.
    pub(crate) fn new(limit: Duration, written: u64, now: Instant) -> StallWatch {
        StallWatch {
            limit,
            written,
            progress: now,
        }
    }

    /// At `now`, `written` bytes have left in all and `queued` wait.
    pub(crate) fn observe(&mut self, now: Instant, written: u64, queued: usize) -> Hold {
        if written != self.written || queued == 0 {
            self.written = written;
            self.progress = now;
        }
        let stalled = now.saturating_duration_since(self.progress);
        if stalled >= self.limit {
            return Hold::Stalled {
                queued,
                after: stalled,
            };
        }
        Hold::Wait {
            until: now + (self.limit - stalled).min(HOLD_RECHECK),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(name: &str) -> (Arc<str>, Option<u8>) {
        (Arc::from(name), None)
    }

    #[test]
    fn operations_are_defined_in_order_and_charged_for_life() {
        let mut ops = OpTable::<u8>::default();
        assert_eq!(
            ops.define(0, "Greeter/hello", |n| (Arc::from(n), Some(7))),
            Ok(13 + OP_OVERHEAD)
        );
        assert_eq!(ops.get(0), Ok((Arc::from("Greeter/hello"), Some(7))));
        let skipped = ops
            .define(2, "Greeter/bye", own)
            .expect_err("index 1 comes first");
        assert!(skipped.contains("expected 1"), "{skipped}");
        let redefined = ops.define(0, "Greeter/hello", own).expect_err("0 is taken");
        assert!(redefined.contains("expected 1"), "{redefined}");
        assert!(ops
            .get(1)
            .expect_err("undefined")
            .contains("undefined operation index 1"));
    }

    #[test]
    fn a_peer_cannot_define_more_than_max_ops() {
        let mut ops = OpTable::<u8>::default();
        for i in 0..MAX_OPS {
            assert!(ops.define(i, "o", own).is_ok());
        }
        let over = ops.define(MAX_OPS, "o", own).expect_err("over the cap");
        assert!(over.contains(&MAX_OPS.to_string()), "{over}");
    }

    #[test]
    fn a_peer_cannot_define_more_than_max_op_bytes_of_names() {
        let mut ops = OpTable::<u8>::default();
        let name = "n".repeat(64 * 1024);
        for i in 0..4 {
            assert!(ops.define(i, &name, own).is_ok());
        }
        let over = ops.define(4, "x", own).expect_err("over the byte cap");
        assert!(over.contains(&MAX_OP_BYTES.to_string()), "{over}");
        // The rejected name was not resolved, stored or charged.
        assert!(ops.get(4).is_err());
    }

    #[test]
    fn a_peer_that_reads_nothing_is_stalled_after_the_limit() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(10);
        let mut watch = StallWatch::new(limit, 100, t0);
        assert_eq!(
            watch.observe(t0, 100, 4096),
            Hold::Wait {
                until: t0 + HOLD_RECHECK
            }
        );
        let late = t0 + Duration::from_millis(9_900);
        assert_eq!(
            watch.observe(late, 100, 4096),
            Hold::Wait { until: t0 + limit }
        );
        assert_eq!(
            watch.observe(t0 + limit, 100, 4096),
            Hold::Stalled {
                queued: 4096,
                after: limit
            }
        );
    }

    #[test]
    fn a_peer_that_drains_slowly_is_never_stalled() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(10);
        let mut watch = StallWatch::new(limit, 0, t0);
        // One byte leaves every 9 s: slow, but reading.
        for step in 1..=20u64 {
            let now = t0 + Duration::from_secs(9 * step);
            assert!(matches!(
                watch.observe(now, step, 1 << 20),
                Hold::Wait { .. }
            ));
        }
    }

    #[test]
    fn nothing_queued_for_the_peer_is_no_stall() {
        // Held back by this side's own handlers: the peer is not to blame.
        let t0 = Instant::now();
        let limit = Duration::from_secs(10);
        let mut watch = StallWatch::new(limit, 0, t0);
        for s in [5, 15, 60] {
            assert!(matches!(
                watch.observe(t0 + Duration::from_secs(s), 0, 0),
                Hold::Wait { .. }
            ));
        }
        // Bytes queued from then on: the clock starts when they are.
        let queued_at = t0 + Duration::from_secs(60);
        assert!(matches!(
            watch.observe(queued_at + Duration::from_secs(9), 0, 10),
            Hold::Wait { .. }
        ));
        assert!(matches!(
            watch.observe(queued_at + limit, 0, 10),
            Hold::Stalled { .. }
        ));
    }
}
