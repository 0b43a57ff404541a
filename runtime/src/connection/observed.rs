//! How the connection's types meet the observation hooks below them
//! (`observe::call`): a call's options carry its trace context and record,
//! a stream's handles carry the record on, and a handler's context says
//! what a served call's record needs.

use std::sync::Arc;

use bytes::Bytes;

use super::{CallContext, CallOptions, Inbound, Outbound, Reply};
use crate::observe::call::{CallRecord, Opened, Options, ServedCall};

impl Options for CallOptions {
    fn metadata_mut(&mut self) -> &mut Vec<(String, Bytes)> {
        &mut self.metadata
    }

    fn keep_record(&mut self, record: Arc<CallRecord>) {
        self.record = Some(record);
    }
}

// A stream's opening ends nothing: its handles carry the record on.
impl Opened for Inbound {
    fn settle(&self, _: &CallRecord) {}
}

impl Opened for (Outbound, Reply) {
    fn settle(&self, _: &CallRecord) {}
}

impl Opened for (Outbound, Inbound) {
    fn settle(&self, _: &CallRecord) {}
}

impl ServedCall for CallContext {
    fn served_op(&self) -> &str {
        &self.op
    }

    fn session_name(&self) -> Option<&str> {
        self.session.as_ref().map(|s| &*s.state.name)
    }

    fn sent_metadata(&self) -> Option<&[(String, Bytes)]> {
        self.metadata.as_deref()
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline
    }
}
