//! The etcd backend: discovery beyond one LAN, through an etcd cluster.
//!
//! Owns one etcd client, one lease and one prefix watch. A node's
//! announcement is the value of `<prefix>/<node id as 32 hex digits>`, bound
//! to a lease kept alive by this backend's task; the lease expiring (the node
//! crashed or was cut off) deletes the key, which watchers report as lost.
//! Never opens a Plexus connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, GetOptions, KeyValue, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    WatchOptions, WatchStream,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::{
    Announcement, Counters, Discovery, DiscoveryError, DiscoveryEvent, DiscoveryEvents,
    DiscoveryFuture, DiscoveryStats, Liveness, LivenessConfig, Observation,
};
use crate::NodeId;

const BACKEND: &str = "etcd";

/// How long to wait before retrying a broken watch or lease.
const RETRY: Duration = Duration::from_secs(1);

/// Where the etcd backend registers and how long its registration outlives
/// its last keep-alive.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The key prefix shared by one fleet; nodes register at
    /// `<prefix>/<node id>`. A trailing `/` is ignored.
    pub prefix: String,
    /// Lease time-to-live, in whole seconds (at least 1): a crashed node is
    /// reported lost about this long after its last keep-alive. Keep-alives
    /// are sent every third of it.
    pub ttl: Duration,
    /// Bound on connecting to etcd.
    pub connect_timeout: Duration,
    /// Bound on each etcd request.
    pub request_timeout: Duration,
    /// Most peers tracked at once.
    pub max_peers: usize,
    /// With a key, records are written tagged under it (the beacon's
    /// envelope, `datagram`) and records without a valid tag are ignored: a
    /// writer to the etcd prefix without the key cannot inject a node.
    pub key: Option<super::SessionKey>,
}

impl EtcdConfig {
    /// Registers under `/plexus/nodes` on these etcd endpoints with a 10 s
    /// lease.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: "/plexus/nodes".into(),
            ttl: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            max_peers: 1024,
            key: None,
        }
    }

    /// The key of `node` under this prefix.
    pub fn key_of(&self, node: NodeId) -> String {
        format!("{}{node}", self.watch_prefix())
    }

    /// The prefix watched, with exactly one trailing `/`.
    pub fn watch_prefix(&self) -> String {
        format!("{}/", self.prefix.trim_end_matches('/'))
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX)
    }

    fn validate(&self) -> Result<(), DiscoveryError> {
        let invalid = |reason: &str| DiscoveryError::Config {
            backend: BACKEND,
            reason: reason.into(),
        };
        if self.endpoints.is_empty() {
            return Err(invalid("no etcd endpoints given"));
        }
        if self.ttl.as_secs() == 0 {
            return Err(invalid("the lease ttl must be at least one second"));
        }
        if self.prefix.trim_end_matches('/').is_empty() {
            return Err(invalid("the key prefix is empty; use e.g. /plexus/nodes"));
        }
        if self.max_peers == 0 {
            return Err(invalid("max_peers must be at least 1"));
        }
        Ok(())
    }
}

/// Discovery through etcd: a lease-bound key per node and a watch on the
/// prefix (cargo feature `etcd`).
///
/// What watchers report: a new key → [`DiscoveryEvent::Discovered`]; a
/// changed value → [`DiscoveryEvent::Updated`]; a value with the leave flag
/// (written by [`Discovery::leave`] just before it revokes the lease) →
/// [`DiscoveryEvent::Left`]; a key deleted without that (lease expiry) →
/// [`DiscoveryEvent::Lost`]; a key written again after that, or by a new
/// incarnation → [`DiscoveryEvent::Returned`]. There is no suspect state:
/// etcd's lease is the failure detector.
///
/// Dropping the backend aborts its keep-alive without revoking the lease, as
/// a crash would.
#[derive(Debug)]
pub struct Etcd {
    config: EtcdConfig,
    counters: Arc<Counters>,
    /// The next sequence number, kept across runs (see `Beacon`).
    sequence: Arc<AtomicU64>,
    running: tokio::sync::Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
enum Command {
    Update(Announcement, oneshot::Sender<Result<(), DiscoveryError>>),
    Leave(oneshot::Sender<Result<(), DiscoveryError>>),
}

impl Etcd {
    /// A backend with this configuration (nothing is contacted until
    /// [`Discovery::start`]).
    pub fn new(config: EtcdConfig) -> Self {
        Etcd {
            config,
            counters: Arc::default(),
            sequence: Arc::default(),
            running: tokio::sync::Mutex::new(None),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.prefix = prefix.into();
        self
    }

    /// Sets the lease time-to-live (whole seconds).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// Tags this node's record with `key` and ignores records not tagged
    /// under it (a node's `session_key` sets it too).
    pub fn key(mut self, key: super::SessionKey) -> Self {
        self.config.key = Some(key);
        self
    }

    fn error(context: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> DiscoveryError {
        let context = context.into();
        move |source| DiscoveryError::Backend {
            backend: BACKEND,
            context,
            source: Box::new(source),
        }
    }

    async fn start_now(
        &self,
        mut announcement: Announcement,
    ) -> Result<DiscoveryEvents, DiscoveryError> {
        let mut running = self.running.lock().await;
        if running.as_ref().is_some_and(|r| !r.task.is_finished()) {
            return Err(DiscoveryError::AlreadyStarted { backend: BACKEND });
        }
        self.config.validate()?;
        announcement.validate()?;
        announcement.leaving = false;
        announcement.sequence = announcement
            .sequence
            .max(self.sequence.load(Ordering::Relaxed));
        let endpoints = self.config.endpoints.join(",");
        let options = ConnectOptions::new()
            .with_connect_timeout(self.config.connect_timeout)
            .with_timeout(self.config.request_timeout);
        let client = Client::connect(&self.config.endpoints, Some(options))
            .await
            .map_err(Etcd::error(format!("connecting to {endpoints}")))?;
        let (events_tx, events) = DiscoveryEvents::channel();
        let mut liveness_config = LivenessConfig::for_interval(self.config.ttl);
        liveness_config.max_peers = self.config.max_peers;
        let mut task = Task {
            client,
            prefix: self.config.watch_prefix(),
            own_key: self.config.key_of(announcement.node_id),
            ttl_secs: self.config.ttl_secs(),
            lease: None,
            watch: None,
            revision: 0,
            current: announcement,
            counters: self.counters.clone(),
            sequence: self.sequence.clone(),
            events: events_tx,
            liveness: Liveness::new(liveness_config),
            key: self.config.key.clone(),
        };
        // Register, list and watch before returning, so a started backend is
        // visible and sees everyone already there.
        task.register().await?;
        task.list_and_watch().await?;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let keep_alive_every = (self.config.ttl / 3).max(Duration::from_millis(200));
        let handle = tokio::spawn(task.run(commands_rx, keep_alive_every));
        *running = Some(Running {
            commands,
            task: handle,
        });
        Ok(events)
    }

    async fn update_now(&self, announcement: Announcement) -> Result<(), DiscoveryError> {
        announcement.validate()?;
        let stopped = || DiscoveryError::Stopped { backend: BACKEND };
        let commands = self
            .running
            .lock()
            .await
            .as_ref()
            .map(|r| r.commands.clone())
            .ok_or(DiscoveryError::NotStarted { backend: BACKEND })?;
        let (done, result) = oneshot::channel();
        commands
            .send(Command::Update(announcement, done))
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    async fn leave_now(&self) -> Result<(), DiscoveryError> {
        let stopped = || DiscoveryError::Stopped { backend: BACKEND };
        let running = self
            .running
            .lock()
            .await
            .take()
            .ok_or(DiscoveryError::NotStarted { backend: BACKEND })?;
        let (done, result) = oneshot::channel();
        running
            .commands
            .send(Command::Leave(done))
            .map_err(|_| stopped())?;
        let outcome = result.await.map_err(|_| stopped())?;
        running.task.await.map_err(|_| stopped())?;
        outcome
    }
}

impl Discovery for Etcd {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn use_key(&mut self, key: &super::SessionKey) {
        self.config.key.get_or_insert_with(|| key.clone());
    }

    fn start(&self, announcement: Announcement) -> DiscoveryFuture<'_, DiscoveryEvents> {
        Box::pin(self.start_now(announcement))
    }

    fn update(&self, announcement: Announcement) -> DiscoveryFuture<'_, ()> {
        Box::pin(self.update_now(announcement))
    }

    fn leave(&self) -> DiscoveryFuture<'_, ()> {
        Box::pin(self.leave_now())
    }

    fn stats(&self) -> DiscoveryStats {
        self.counters.snapshot()
    }
}

impl Drop for Etcd {
    /// Aborts the keep-alive without revoking the lease: peers report this
    /// node lost when the lease expires, as after a crash.
    fn drop(&mut self) {
        if let Some(running) = self.running.get_mut().take() {
            running.task.abort();
        }
    }
}

/// The backend's single task: keeps the lease alive, follows the watch, and
/// obeys update/leave commands.
struct Task {
    client: Client,
    /// The watched prefix, ending in `/`.
    prefix: String,
    own_key: String,
    ttl_secs: i64,
    lease: Option<Lease>,
    watch: Option<WatchStream>,
    /// The last store revision seen, to resume a broken watch without gaps.
    revision: i64,
    current: Announcement,
    counters: Arc<Counters>,
    sequence: Arc<AtomicU64>,
    events: mpsc::UnboundedSender<DiscoveryEvent>,
    liveness: Liveness,
    key: Option<super::SessionKey>,
}

struct Lease {
    id: i64,
    keeper: LeaseKeeper,
    responses: LeaseKeepAliveStream,
}

impl Task {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        keep_alive_every: Duration,
    ) {
        let mut keep_alive = tokio::time::interval(keep_alive_every);
        keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut repair = tokio::time::interval(RETRY);
        repair.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Update(announcement, done)) => {
                        let sequence = self.current.sequence.max(announcement.sequence);
                        self.current = announcement;
                        self.current.sequence = sequence;
                        self.current.leaving = false;
                        let _ = done.send(self.put().await);
                    }
                    Some(Command::Leave(done)) => {
                        let _ = done.send(self.leave().await);
                        return;
                    }
                    None => return,
                },
                _ = keep_alive.tick() => self.keep_alive().await,
                _ = repair.tick() => self.repair().await,
                response = next_keep_alive(&mut self.lease) => self.on_keep_alive(response),
                response = next_watch(&mut self.watch) => self.on_watch(response),
            }
        }
    }

    /// Grants a lease, writes the announcement under it, and starts the
    /// keep-alive stream.
    async fn register(&mut self) -> Result<(), DiscoveryError> {
        let granted = self
            .client
            .lease_grant(self.ttl_secs, None)
            .await
            .map_err(Etcd::error("granting a lease"))?;
        let id = granted.id();
        let (keeper, responses) = self
            .client
            .lease_keep_alive(id)
            .await
            .map_err(Etcd::error("opening the lease keep-alive stream"))?;
        self.lease = Some(Lease {
            id,
            keeper,
            responses,
        });
        self.put().await
    }

    async fn put(&mut self) -> Result<(), DiscoveryError> {
        let lease = self
            .lease
            .as_ref()
            .map(|l| l.id)
            .ok_or(DiscoveryError::Stopped { backend: BACKEND })?;
        let value = match &self.key {
            Some(key) => super::datagram::seal(&self.current, Some(key))?,
            None => self.current.encode()?,
        };
        self.current.sequence = self.current.sequence.wrapping_add(1);
        self.sequence
            .store(self.current.sequence, Ordering::Relaxed);
        let put = self
            .client
            .put(
                self.own_key.clone(),
                value.to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await;
        match put {
            Ok(_) => {
                Counters::bump(&self.counters.sent);
                Ok(())
            }
            Err(error) => {
                Counters::bump(&self.counters.send_errors);
                Err(Etcd::error(format!("writing {}", self.own_key))(error))
            }
        }
    }

    /// Reads everyone registered now, then watches for changes after that
    /// revision.
    async fn list_and_watch(&mut self) -> Result<(), DiscoveryError> {
        let listed = self
            .client
            .get(self.prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(Etcd::error(format!("listing {}", self.prefix)))?;
        for kv in listed.kvs() {
            self.on_put(kv);
        }
        self.revision = listed.header().map_or(0, |h| h.revision());
        self.watch_from(self.revision + 1).await
    }

    async fn watch_from(&mut self, revision: i64) -> Result<(), DiscoveryError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        let watch = self
            .client
            .watch(self.prefix.clone(), Some(options))
            .await
            .map_err(Etcd::error(format!("watching {}", self.prefix)))?;
        self.watch = Some(watch);
        Ok(())
    }

    async fn keep_alive(&mut self) {
        if let Some(lease) = &mut self.lease {
            if let Err(error) = lease.keeper.keep_alive().await {
                tracing::debug!(%error, "etcd keep-alive failed; re-registering");
                self.lease = None;
            }
        }
    }

    fn on_keep_alive(&mut self, response: Result<Option<i64>, etcd_client::Error>) {
        match response {
            Ok(Some(ttl)) if ttl > 0 => {}
            Ok(_) => {
                // The lease expired (ttl 0) or the stream ended: this node's
                // key is gone; re-register at the next repair tick.
                tracing::debug!("etcd lease lost; re-registering");
                self.lease = None;
            }
            Err(error) => {
                tracing::debug!(%error, "etcd keep-alive stream failed; re-registering");
                self.lease = None;
            }
        }
    }

    fn on_watch(
        &mut self,
        response: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
    ) {
        let response = match response {
            Ok(Some(response)) => response,
            Ok(None) => {
                self.watch = None;
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "etcd watch failed; resuming");
                self.watch = None;
                return;
            }
        };
        if response.canceled() {
            tracing::debug!(
                reason = response.cancel_reason(),
                "etcd watch cancelled; resuming"
            );
            if response.compact_revision() > 0 {
                // History before this revision is gone; relist from scratch.
                self.revision = 0;
            }
            self.watch = None;
            return;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            Counters::bump(&self.counters.received);
            self.revision = self.revision.max(kv.mod_revision());
            // A deleted key comes back as a tombstone with version 0. (Read
            // this way rather than through `event_type`, which panics on an
            // unknown event type.)
            if kv.version() == 0 {
                self.on_delete(kv);
            } else {
                self.on_put(kv);
            }
        }
    }

    fn on_put(&mut self, kv: &KeyValue) {
        let Some(node) = self.node_of(kv.key()) else {
            Counters::bump(&self.counters.dropped_malformed);
            return;
        };
        // Err(true): not authenticated (counted apart from malformed). With a
        // key, a record is a sealed datagram, so anything that fails before
        // its tag verifies is unauthenticated; without one, a sealed record
        // is someone else's keyed fleet.
        let decoded = match &self.key {
            Some(key) => super::datagram::open(kv.value(), Some(key))
                .map_err(|e| !matches!(e, super::datagram::DatagramError::Announcement(_))),
            None => Announcement::decode(kv.value())
                .map_err(|_| kv.value().starts_with(&super::datagram::BEACON_MAGIC)),
        };
        let announcement = match decoded {
            Ok(announcement) if announcement.node_id == node => announcement,
            Err(true) => {
                Counters::bump(&self.counters.dropped_unauthenticated);
                return;
            }
            Ok(_) | Err(false) => {
                Counters::bump(&self.counters.dropped_malformed);
                return;
            }
        };
        if node == self.current.node_id {
            return;
        }
        let observation = self
            .liveness
            .observe(&announcement, Instant::now().into_std());
        self.counters.count_observation(&observation);
        if let Observation::Event(event) = observation {
            let _ = self.events.send(event);
        }
    }

    fn on_delete(&mut self, kv: &KeyValue) {
        let Some(node) = self.node_of(kv.key()) else {
            Counters::bump(&self.counters.dropped_malformed);
            return;
        };
        if node == self.current.node_id {
            return;
        }
        let now = Instant::now().into_std();
        if let Some(event) = self.liveness.mark_lost(node, now) {
            let _ = self.events.send(event);
        }
        self.liveness.forget(now);
    }

    /// The node id in `<prefix><32 hex digits>`, if the key has that shape.
    fn node_of(&self, key: &[u8]) -> Option<NodeId> {
        let hex = key.strip_prefix(self.prefix.as_bytes())?;
        if hex.len() != 32 {
            return None;
        }
        let hex = std::str::from_utf8(hex).ok()?;
        u128::from_str_radix(hex, 16).ok().map(NodeId)
    }

    /// Restores a lost lease or watch; called once per [`RETRY`].
    async fn repair(&mut self) {
        if self.lease.is_none() {
            if let Err(error) = self.register().await {
                tracing::debug!(%error, "etcd re-registration failed; will retry");
            }
        }
        if self.watch.is_none() {
            let resumed = if self.revision == 0 {
                self.list_and_watch().await
            } else {
                self.watch_from(self.revision + 1).await
            };
            if let Err(error) = resumed {
                tracing::debug!(%error, "etcd watch resumption failed; will retry");
            }
        }
    }

    /// Writes the leave flag (so watchers report a graceful leave rather
    /// than a loss), then revokes the lease, which deletes the key.
    async fn leave(&mut self) -> Result<(), DiscoveryError> {
        self.current.leaving = true;
        let written = self.put().await;
        let Some(lease) = self.lease.take() else {
            return written;
        };
        let revoked = self
            .client
            .lease_revoke(lease.id)
            .await
            .map(drop)
            .map_err(Etcd::error(format!(
                "revoking the lease of {}",
                self.own_key
            )));
        written.and(revoked)
    }
}

/// The next keep-alive response's TTL, or never when there is no lease.
async fn next_keep_alive(lease: &mut Option<Lease>) -> Result<Option<i64>, etcd_client::Error> {
    match lease {
        Some(lease) => lease.responses.message().await.map(|r| r.map(|r| r.ttl())),
        None => std::future::pending().await,
    }
}

/// The next watch response, or never when there is no watch.
async fn next_watch(
    watch: &mut Option<WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match watch {
        Some(watch) => watch.message().await,
        None => std::future::pending().await,
    }
}
