//! The beacon: discovery by UDP multicast on one network segment.
//!
//! Owns the multicast socket and the one task that announces, listens and
//! ticks the [`Liveness`] table. It sends to exactly one address — the
//! configured multicast group and port, out of the configured interface — and never
//! opens a Plexus connection.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::datagram::{self, MAX_DATAGRAM_LEN};
use super::{
    Announcement, Counters, Discovery, DiscoveryError, DiscoveryEvent, DiscoveryEvents,
    DiscoveryFuture, DiscoveryStats, Liveness, LivenessConfig, Observation, SessionKey,
};

/// The default multicast group: in 239.255.0.0/16, the organisation-local
/// scope, which routers do not forward beyond a site.
pub const DEFAULT_MULTICAST_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 73, 1);

/// The default UDP port of the multicast group.
pub const DEFAULT_PORT: u16 = 47473;

const BACKEND: &str = "beacon";

/// Where and how often a [`Beacon`] announces.
#[derive(Clone, Debug)]
pub struct BeaconConfig {
    /// The IPv4 multicast group announcements are sent to and heard on.
    pub multicast_group: Ipv4Addr,
    /// The UDP port of the multicast group; every node on it uses the same one.
    pub port: u16,
    /// The local interface address to send from and join the multicast group on
    /// (`127.0.0.1` for loopback; `0.0.0.0` lets the OS choose).
    pub interface: Ipv4Addr,
    /// Time between announcements.
    pub interval: Duration,
    /// Multicast TTL: 0 keeps datagrams on this host, 1 on the local segment.
    pub ttl: u32,
    /// With a key, announcements are tagged and untagged ones ignored.
    pub key: Option<SessionKey>,
    /// Liveness bounds; `None` derives them from `interval`
    /// ([`LivenessConfig::for_interval`]).
    pub liveness: Option<LivenessConfig>,
    /// How many copies of the leave announcement to send (UDP may drop one).
    pub leave_repeats: u32,
    /// With a key: a tagged announcement sealed further than this from now
    /// is ignored as a replay (a recording played back later). Keep it above
    /// the clock skew between hosts.
    pub replay_window: Duration,
}

impl BeaconConfig {
    /// Loopback only: multicast group [`DEFAULT_MULTICAST_GROUP`], port [`DEFAULT_PORT`], interface
    /// 127.0.0.1, TTL 0, one announcement a second. Nothing leaves the host.
    pub fn loopback() -> Self {
        BeaconConfig {
            multicast_group: DEFAULT_MULTICAST_GROUP,
            port: DEFAULT_PORT,
            interface: Ipv4Addr::LOCALHOST,
            interval: Duration::from_secs(1),
            ttl: 0,
            key: None,
            liveness: None,
            leave_repeats: 3,
            replay_window: Duration::from_secs(30),
        }
    }

    /// The local network segment through `interface` (the address of one of
    /// this host's interfaces): TTL 1, otherwise like
    /// [`BeaconConfig::loopback`].
    pub fn on_interface(interface: Ipv4Addr) -> Self {
        BeaconConfig {
            interface,
            ttl: 1,
            ..BeaconConfig::loopback()
        }
    }

    /// The liveness bounds in force: the configured ones, or those derived
    /// from the interval.
    pub fn liveness_config(&self) -> LivenessConfig {
        self.liveness
            .clone()
            .unwrap_or_else(|| LivenessConfig::for_interval(self.interval))
    }

    fn validate(&self) -> Result<(), DiscoveryError> {
        let invalid = |reason: String| DiscoveryError::Config {
            backend: BACKEND,
            reason,
        };
        if !self.multicast_group.is_multicast() {
            return Err(invalid(format!(
                "multicast group {} is not an IPv4 multicast address (224.0.0.0/4); use e.g. {DEFAULT_MULTICAST_GROUP}",
                self.multicast_group
            )));
        }
        if self.port == 0 {
            return Err(invalid(
                "port 0 would give every node a different port; choose a fixed port".into(),
            ));
        }
        if self.interval.is_zero() {
            return Err(invalid("interval must be greater than zero".into()));
        }
        if self.ttl > 255 {
            return Err(invalid(format!("ttl {} exceeds 255", self.ttl)));
        }
        if self.key.as_ref().is_some_and(SessionKey::is_empty) {
            return Err(invalid("the session key is empty".into()));
        }
        self.liveness_config().validate().map_err(invalid)
    }
}

impl Default for BeaconConfig {
    /// [`BeaconConfig::loopback`]: a beacon reaches the network only when
    /// asked to.
    fn default() -> Self {
        BeaconConfig::loopback()
    }
}

/// Discovery by UDP multicast announcements: the embedded default.
///
/// Every `interval` the beacon sends its [`Announcement`] to the multicast group; it
/// hears the others' and reports them through a [`Liveness`] table. Any
/// number of beacons — in one process or many — can share a multicast group and port
/// (the socket uses `SO_REUSEADDR`/`SO_REUSEPORT`).
///
/// Datagrams that are not valid announcements, or fail the session-key
/// check, are counted in [`DiscoveryStats`] and otherwise ignored.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use plexus::discovery::{Announcement, Beacon, Discovery};
/// use plexus::wire::key::SessionKey;
///
/// let beacon = Beacon::loopback()
///     .port(47500)
///     .interval(Duration::from_millis(100))
///     .key(SessionKey::new(b"lab-3 secret"));
/// let mut events = beacon.start(Announcement::new(plexus::NodeId::random(), "alice")).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Beacon {
    config: BeaconConfig,
    counters: Arc<Counters>,
    /// The next sequence number, kept across runs so that a beacon started
    /// again after `leave` (same incarnation) is not taken for stale.
    sequence: Arc<AtomicU64>,
    running: Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
enum Command {
    Update(Announcement),
    Leave(oneshot::Sender<()>),
}

impl Beacon {
    /// A beacon with this configuration (nothing is opened until
    /// [`Discovery::start`]).
    pub fn new(config: BeaconConfig) -> Self {
        Beacon {
            config,
            counters: Arc::default(),
            sequence: Arc::default(),
            running: Mutex::new(None),
        }
    }

    /// A loopback-only beacon ([`BeaconConfig::loopback`]): what tests and
    /// examples use.
    pub fn loopback() -> Self {
        Beacon::new(BeaconConfig::loopback())
    }

    /// The configuration.
    pub fn config(&self) -> &BeaconConfig {
        &self.config
    }

    /// Sets the multicast group's UDP port.
    pub fn port(mut self, port: u16) -> Self {
        self.config.port = port;
        self
    }

    /// Sets the multicast group.
    pub fn multicast_group(mut self, group: Ipv4Addr) -> Self {
        self.config.multicast_group = group;
        self
    }

    /// Sets the interface address to send from and join on.
    pub fn interface(mut self, interface: Ipv4Addr) -> Self {
        self.config.interface = interface;
        self
    }

    /// Sets the announcement interval (liveness bounds follow it unless set).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.config.interval = interval;
        self
    }

    /// Sets the multicast TTL.
    pub fn ttl(mut self, ttl: u32) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// Authenticates announcements with a session key.
    pub fn key(mut self, key: SessionKey) -> Self {
        self.config.key = Some(key);
        self
    }

    /// With a key: how far from now a tagged announcement's send time may
    /// be before it is ignored as a replay (30 s by default; keep it above
    /// the clock skew between hosts and below the liveness `forget_after`).
    pub fn replay_window(mut self, window: Duration) -> Self {
        self.config.replay_window = window;
        self
    }

    /// Sets the liveness bounds explicitly.
    pub fn liveness(mut self, liveness: LivenessConfig) -> Self {
        self.config.liveness = Some(liveness);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Option<Running>> {
        // The guarded state is a handle; a panic elsewhere cannot leave it torn.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Listens without announcing: reports every node heard on the multicast group,
    /// with its liveness, while this process stays invisible to them — for
    /// observers such as `plexus ls`. [`Discovery::leave`] stops it, sending
    /// nothing; [`Discovery::update`] is accepted and ignored.
    pub fn observe(&self) -> Result<DiscoveryEvents, DiscoveryError> {
        // The id only tells our own datagrams apart, and an observer sends none.
        self.start_task(
            Announcement::new(crate::NodeId::random(), "observer"),
            false,
        )
    }

    fn start_now(&self, announcement: Announcement) -> Result<DiscoveryEvents, DiscoveryError> {
        self.start_task(announcement, true)
    }

    fn start_task(
        &self,
        announcement: Announcement,
        announcing: bool,
    ) -> Result<DiscoveryEvents, DiscoveryError> {
        let mut running = self.lock();
        if running.as_ref().is_some_and(|r| !r.task.is_finished()) {
            return Err(DiscoveryError::AlreadyStarted { backend: BACKEND });
        }
        self.config.validate()?;
        announcement.validate()?;
        let (socket, waiting) = bind(&self.config)?;
        let (events_tx, events) = DiscoveryEvents::channel();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let mut current = announcement;
        current.leaving = false;
        current.sequence = current.sequence.max(self.sequence.load(Ordering::Relaxed));
        let task = Task {
            socket,
            waiting,
            target: SocketAddr::V4(SocketAddrV4::new(
                self.config.multicast_group,
                self.config.port,
            )),
            key: self.config.key.clone(),
            counters: self.counters.clone(),
            sequence: self.sequence.clone(),
            events: events_tx,
            liveness: Liveness::new(self.config.liveness_config()),
            current,
            interval: self.config.interval,
            leave_repeats: self.config.leave_repeats.max(1),
            replay_window: self.config.replay_window,
            announcing,
        };
        let task = tokio::spawn(task.run(commands_rx));
        *running = Some(Running { commands, task });
        Ok(events)
    }

    fn send(&self, command: Command) -> Result<(), DiscoveryError> {
        let running = self.lock();
        let running = running
            .as_ref()
            .ok_or(DiscoveryError::NotStarted { backend: BACKEND })?;
        running
            .commands
            .send(command)
            .map_err(|_| DiscoveryError::Stopped { backend: BACKEND })
    }
}

impl Discovery for Beacon {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn use_key(&mut self, key: &SessionKey) {
        self.config.key.get_or_insert_with(|| key.clone());
    }

    fn start(&self, announcement: Announcement) -> DiscoveryFuture<'_, DiscoveryEvents> {
        // Everything happens when the future is polled, inside the runtime.
        Box::pin(async move { self.start_now(announcement) })
    }

    fn update(&self, announcement: Announcement) -> DiscoveryFuture<'_, ()> {
        Box::pin(async move {
            announcement.validate()?;
            self.send(Command::Update(announcement))
        })
    }

    fn leave(&self) -> DiscoveryFuture<'_, ()> {
        Box::pin(async move {
            let running = self
                .lock()
                .take()
                .ok_or(DiscoveryError::NotStarted { backend: BACKEND })?;
            let (done, acknowledged) = oneshot::channel();
            running
                .commands
                .send(Command::Leave(done))
                .map_err(|_| DiscoveryError::Stopped { backend: BACKEND })?;
            acknowledged
                .await
                .map_err(|_| DiscoveryError::Stopped { backend: BACKEND })?;
            running
                .task
                .await
                .map_err(|_| DiscoveryError::Stopped { backend: BACKEND })
        })
    }

    fn stats(&self) -> DiscoveryStats {
        self.counters.snapshot()
    }
}

impl Drop for Beacon {
    /// Stops at once without a leave: peers see this node go suspect, then
    /// lost — exactly what a crash looks like.
    fn drop(&mut self) {
        if let Some(running) = self.lock().take() {
            running.task.abort();
        }
    }
}

/// Opens the multicast group socket: shared port, joined on `interface` only, sending
/// out of `interface` only, looped back so other sockets on this host hear it.
/// Also returns a second handle to the same socket (see [`Task::waiting`]).
fn bind(config: &BeaconConfig) -> Result<(UdpSocket, std::net::UdpSocket), DiscoveryError> {
    let io = |what: &str| {
        let context = format!(
            "{what} (multicast group {}:{}, interface {})",
            config.multicast_group, config.port, config.interface
        );
        move |source| DiscoveryError::Io { context, source }
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(io("creating the UDP socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(io("setting SO_REUSEADDR"))?;
    #[cfg(unix)]
    socket
        .set_reuse_port(true)
        .map_err(io("setting SO_REUSEPORT"))?;
    // Binding to the multicast group address (where the OS allows it) means unicast
    // datagrams to this port, and other groups, are never delivered here.
    #[cfg(unix)]
    let bind_ip = config.multicast_group;
    #[cfg(not(unix))]
    let bind_ip = Ipv4Addr::UNSPECIFIED;
    socket
        .bind(&SocketAddrV4::new(bind_ip, config.port).into())
        .map_err(io(
            "binding the multicast group port (is another program using it without SO_REUSEPORT?)",
        ))?;
    #[cfg(target_os = "linux")]
    socket
        .set_multicast_all_v4(false)
        .map_err(io("clearing IP_MULTICAST_ALL"))?;
    socket
        .join_multicast_v4(&config.multicast_group, &config.interface)
        .map_err(io("joining the multicast group on the interface"))?;
    socket
        .set_multicast_if_v4(&config.interface)
        .map_err(io("choosing the outgoing multicast interface"))?;
    socket
        .set_multicast_loop_v4(true)
        .map_err(io("enabling multicast loopback"))?;
    socket
        .set_multicast_ttl_v4(config.ttl)
        .map_err(io("setting the multicast TTL"))?;
    // A larger buffer absorbs bursts when many beacons announce together;
    // the OS may cap it, which is fine.
    let _ = socket.set_recv_buffer_size(1 << 20);
    socket
        .set_nonblocking(true)
        .map_err(io("making the socket non-blocking"))?;
    let waiting = socket
        .try_clone()
        .map_err(io("duplicating the socket's handle"))?;
    let socket =
        UdpSocket::from_std(socket.into()).map_err(io("registering the socket with tokio"))?;
    Ok((socket, waiting.into()))
}

/// Most waiting datagrams heard before a liveness check: far more than a
/// socket's receive buffer holds of announcements.
const HEAR_WAITING_MAX: usize = 4096;

/// The beacon's single task: announces on a timer, hears datagrams, ticks the
/// liveness table, and obeys update/leave commands. Owning all of it in one
/// task means no locks.
struct Task {
    socket: UdpSocket,
    /// The same socket (a second handle), read without the reactor: see
    /// [`Task::hear_waiting`].
    waiting: std::net::UdpSocket,
    target: SocketAddr,
    key: Option<SessionKey>,
    counters: Arc<Counters>,
    sequence: Arc<AtomicU64>,
    events: mpsc::UnboundedSender<DiscoveryEvent>,
    liveness: Liveness,
    /// The next announcement to send; its `sequence` is the next to use.
    current: Announcement,
    interval: Duration,
    leave_repeats: u32,
    replay_window: Duration,
    /// `false` for an observer: it hears, and never sends.
    announcing: bool,
}

impl Task {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        // One byte more than the largest valid datagram, so an oversized one
        // is seen as oversized rather than silently truncated.
        let mut buf = vec![0u8; MAX_DATAGRAM_LEN + 1];
        let mut announce = tokio::time::interval(self.interval);
        announce.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(self.liveness.config().check_interval);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Update(announcement)) => {
                        if self.announcing {
                            self.adopt(announcement);
                            self.announce().await;
                            announce.reset();
                        }
                    }
                    Some(Command::Leave(done)) => {
                        if self.announcing {
                            self.leave().await;
                        }
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                _ = announce.tick(), if self.announcing => self.announce().await,
                _ = check.tick() => {
                    // Silence is judged on what has arrived, not on what this
                    // task got round to reading: after it ran late (a starved
                    // or frozen process), the peers' announcements of the
                    // meantime wait in the socket, and the tick would
                    // otherwise find them silent first.
                    self.hear_waiting(&mut buf);
                    for event in self.liveness.tick(Instant::now().into_std()) {
                        self.emit(event);
                    }
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.hear(&buf[..len], from),
                    Err(error) => {
                        // E.g. an ICMP error surfacing on the socket; the
                        // next datagram is unaffected.
                        tracing::debug!(%error, "beacon receive failed");
                    }
                },
            }
        }
    }

    fn adopt(&mut self, announcement: Announcement) {
        let sequence = self.current.sequence.max(announcement.sequence);
        self.current = announcement;
        self.current.sequence = sequence;
        self.current.leaving = false;
    }

    async fn announce(&mut self) {
        let sealed = datagram::seal(&self.current, self.key.as_ref());
        self.current.sequence = self.current.sequence.wrapping_add(1);
        self.sequence
            .store(self.current.sequence, Ordering::Relaxed);
        let datagram = match sealed {
            Ok(datagram) => datagram,
            Err(error) => {
                // Unreachable in practice: start/update validated it.
                Counters::bump(&self.counters.send_errors);
                tracing::warn!(%error, "beacon announcement cannot be encoded");
                return;
            }
        };
        match self.socket.send_to(&datagram, self.target).await {
            Ok(_) => Counters::bump(&self.counters.sent),
            Err(error) => {
                Counters::bump(&self.counters.send_errors);
                tracing::debug!(%error, target = %self.target, "beacon send failed");
            }
        }
    }

    async fn leave(&mut self) {
        self.current.leaving = true;
        for i in 0..self.leave_repeats {
            if i > 0 {
                // Spread the copies a little so one burst of loss does not
                // take them all.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.announce().await;
        }
    }

    /// Hears every datagram already in the socket, without waiting for
    /// more: at most [`HEAR_WAITING_MAX`], so a flood cannot hold the task
    /// here. Read through [`Task::waiting`], straight from the socket: the
    /// reactor may not have seen them yet (its readiness comes with its next
    /// turn, which a timer due at the same time can precede).
    fn hear_waiting(&mut self, buf: &mut [u8]) {
        for _ in 0..HEAR_WAITING_MAX {
            match self.waiting.recv_from(buf) {
                Ok((len, from)) => self.hear(&buf[..len], from),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(error) => tracing::debug!(%error, "beacon receive failed"),
            }
        }
    }

    fn hear(&mut self, bytes: &[u8], from: SocketAddr) {
        Counters::bump(&self.counters.received);
        let announcement = match datagram::open_fresh(
            bytes,
            self.key.as_ref(),
            std::time::SystemTime::now(),
            self.replay_window,
        ) {
            Ok(announcement) => announcement,
            Err(error) => {
                let counter = if error.is_unauthenticated() {
                    &self.counters.dropped_unauthenticated
                } else {
                    &self.counters.dropped_malformed
                };
                Counters::bump(counter);
                tracing::trace!(%from, %error, "beacon datagram dropped");
                return;
            }
        };
        if announcement.node_id == self.current.node_id {
            // Our own announcement, looped back.
            return;
        }
        let observation = self
            .liveness
            .observe(&announcement, Instant::now().into_std());
        self.counters.count_observation(&observation);
        if let Observation::Event(event) = observation {
            self.emit(event);
        }
    }

    fn emit(&self, event: DiscoveryEvent) {
        // A dropped event stream means nobody listens any more; announcing
        // goes on until leave or drop.
        let _ = self.events.send(event);
    }
}
