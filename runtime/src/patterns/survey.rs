//! Survey: one question to every peer of a set, answers until a deadline.
//!
//! Owns [`Survey`], the stream [`Node::survey`](crate::Node::survey)
//! returns. It differs from a broadcast in one way: the deadline ends the
//! survey itself. Answers that arrived by then are yielded; at the deadline
//! the stream ends, the questions still running are cancelled, and any
//! answer that would come later is discarded. Who did not answer is
//! [`missing`](Survey::missing).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::time::{Instant, Sleep};

use crate::node::{Broadcast, Client};
use crate::{CallError, Node, NodeId};

// Defined here rather than beside the node's other methods so that the node
// layer does not import the patterns built on top of it.
impl Node {
    /// Asks every member of `C`'s peer set the question `ask` puts, and
    /// streams the answers that arrive before `deadline` has passed; then
    /// the stream ends, the questions still running are cancelled and late
    /// answers are discarded. [`Survey::missing`] names who did not answer.
    /// Peers joining meanwhile are not asked.
    pub fn survey<C, F, Fut, T>(&self, deadline: std::time::Duration, ask: F) -> Survey<T>
    where
        C: Client,
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, CallError>> + Send + 'static,
        T: Send + 'static,
    {
        let ends = Instant::now() + deadline;
        Survey::new(self.broadcast(deadline, ask), ends)
    }
}

/// Answers to a survey, in the order they arrive, until its deadline; see
/// [`Node::survey`](crate::Node::survey). Dropping it cancels the questions
/// still running.
pub struct Survey<T> {
    asked: Vec<NodeId>,
    answered: BTreeSet<NodeId>,
    questions: Option<Broadcast<T>>,
    deadline: Pin<Box<Sleep>>,
}

impl<T> std::fmt::Debug for Survey<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Survey")
            .field("asked", &self.asked)
            .field("answered", &self.answered)
            .field("open", &self.questions.is_some())
            .finish()
    }
}

impl<T> Survey<T> {
    pub(crate) fn new(questions: Broadcast<T>, deadline: Instant) -> Self {
        Survey {
            asked: questions.peers().to_vec(),
            answered: BTreeSet::new(),
            questions: Some(questions),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// The peers asked: the members at the moment of the survey.
    pub fn asked(&self) -> &[NodeId] {
        &self.asked
    }

    /// The peers that answered (with a reply or an error) so far.
    pub fn answered(&self) -> Vec<NodeId> {
        self.answered.iter().copied().collect()
    }

    /// The peers asked that have not answered.
    pub fn missing(&self) -> Vec<NodeId> {
        self.asked
            .iter()
            .filter(|p| !self.answered.contains(p))
            .copied()
            .collect()
    }

    /// Whether the survey is over: every peer answered or the deadline passed.
    pub fn is_over(&self) -> bool {
        self.questions.is_none()
    }
}

impl<T: Send + 'static> Stream for Survey<T> {
    type Item = (NodeId, Result<T, CallError>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(questions) = this.questions.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match Pin::new(&mut *questions).poll_next(cx) {
                // A question's own timeout is the survey's deadline: that
                // peer did not answer in time, which `missing` reports.
                Poll::Ready(Some((_, Err(CallError::Timeout { .. })))) => continue,
                Poll::Ready(Some((peer, answer))) => {
                    this.answered.insert(peer);
                    return Poll::Ready(Some((peer, answer)));
                }
                Poll::Ready(None) => {
                    this.questions = None;
                    return Poll::Ready(None);
                }
                Poll::Pending => break,
            }
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                // Dropping the broadcast cancels what is still running; late
                // answers have nowhere to go.
                this.questions = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
