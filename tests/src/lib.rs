//! Shared support for the integration tests in `tests/tests/`: certificates
//! made at test time, a listening server on every transport, and bounded waits.

pub mod observe;
pub mod topology;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use plexus::{
    server::{EndpointBuilder, IntoRouter},
    transport::TlsConfig,
    ConnectionConfig, Endpoint,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The longest any single step of a test may take before the test fails.
pub const STEP: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test if it takes longer than [`STEP`].
pub async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {STEP:?}"),
    }
}

/// Waits until `done()` holds, checking every 2 ms; fails the test after [`STEP`].
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    bounded(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

/// Waits until `find()` gives a value, checking every 2 ms; fails the test
/// after [`STEP`].
pub async fn eventually<T>(what: &str, mut find: impl FnMut() -> Option<T>) -> T {
    bounded(what, async {
        loop {
            if let Some(v) = find() {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

/// A certificate authority made for one test, and identities it issues.
pub struct TestPki {
    /// The CA certificate in PEM.
    pub ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A PEM certificate chain and its key.
pub struct Identity {
    /// Certificate (PEM).
    pub cert_pem: String,
    /// Private key (PEM).
    pub key_pem: String,
}

impl TestPki {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> TestPki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key"))
            .expect("self-signed ca");
        TestPki {
            ca_pem: issuer.pem(),
            issuer,
        }
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Identity {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server identity for exactly `names` (DNS names or IP addresses).
    pub fn issue_for(&self, names: &[&str]) -> Identity {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A server identity for localhost, 127.0.0.1 and ::1.
    pub fn server(&self) -> Identity {
        self.issue(
            &["localhost", "127.0.0.1", "::1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client identity.
    pub fn client(&self) -> Identity {
        self.issue(&["client.test"], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// An identity for a mesh member, usable as TLS server and client: the
    /// subject and names of `member`, and `localhost`, `127.0.0.1` and `::1`
    /// as DNS/IP names so peers dialing it by address accept it.
    pub fn member(&self, member: &Member<'_>) -> Identity {
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        names.extend(member.dns.iter().map(|d| d.to_string()));
        let mut params = CertificateParams::new(names).expect("leaf params");
        for uri in member.uris {
            params.subject_alt_names.push(rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(uri.to_string()).expect("ascii uri"),
            ));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, member.cn);
        if let Some(ou) = member.ou {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, ou);
        }
        if let Some(o) = member.o {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        match member.validity {
            Validity::Current => {}
            Validity::Expired => {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            Validity::NotYet => {
                params.not_before = rcgen::date_time_ymd(2090, 1, 1);
                params.not_after = rcgen::date_time_ymd(2091, 1, 1);
            }
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A mesh node's TLS: listens and dials with `id`, trusts this CA, and
    /// requires peers to show a certificate from it.
    pub fn node_tls(&self, id: &Identity) -> TlsConfig {
        TlsConfig::mutual(
            self.ca_pem.as_bytes(),
            id.cert_pem.as_bytes(),
            id.key_pem.as_bytes(),
        )
        .expect("mutual tls")
    }

    /// Server-side TLS config: this CA's server identity.
    pub fn server_tls(&self) -> TlsConfig {
        let id = self.server();
        TlsConfig::server(id.cert_pem.as_bytes(), id.key_pem.as_bytes()).expect("server tls")
    }

    /// Client-side TLS config trusting this CA.
    pub fn client_tls(&self) -> TlsConfig {
        TlsConfig::client(self.ca_pem.as_bytes()).expect("client tls")
    }
}

/// Who a test certificate names.
#[derive(Clone, Copy, Debug)]
pub struct Member<'a> {
    /// Subject CN.
    pub cn: &'a str,
    /// Subject OU.
    pub ou: Option<&'a str>,
    /// Subject O.
    pub o: Option<&'a str>,
    /// URI SANs (SPIFFE ids).
    pub uris: &'a [&'a str],
    /// Extra DNS SANs.
    pub dns: &'a [&'a str],
    /// When it is valid.
    pub validity: Validity,
}

impl<'a> Member<'a> {
    /// A currently valid certificate for CN `cn` and nothing else.
    pub fn named(cn: &'a str) -> Member<'a> {
        Member {
            cn,
            ou: None,
            o: None,
            uris: &[],
            dns: &[],
            validity: Validity::Current,
        }
    }
}

/// A test certificate's validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// Valid now.
    Current,
    /// Expired in 2021.
    Expired,
    /// Valid from 2090 on.
    NotYet,
}

/// The transports every core test runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `tcp://127.0.0.1:0`
    Tcp,
    /// `tcp://[::1]:0`
    Tcp6,
    /// `unix://` in a temp dir
    Unix,
    /// `inproc://` with a unique name
    Inproc,
    /// `tls://127.0.0.1:0` with a test CA
    Tls,
    /// `ws://127.0.0.1:0/plexus`
    Ws,
    /// `wss://127.0.0.1:0` with a test CA
    Wss,
    /// `quic://127.0.0.1:0` with a test CA
    Quic,
}

impl Transport {
    /// Every transport, in the order tests run them.
    pub const ALL: [Transport; 8] = [
        Transport::Tcp,
        Transport::Tcp6,
        Transport::Unix,
        Transport::Inproc,
        Transport::Tls,
        Transport::Ws,
        Transport::Wss,
        Transport::Quic,
    ];

    /// The URL a listener on this transport binds, and the TLS configs
    /// (server, client) it needs, if any. `dir` holds unix sockets.
    pub fn listen_url(self, dir: &std::path::Path) -> (String, Option<(TlsConfig, TlsConfig)>) {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let tls = || {
            let pki = TestPki::new("pair ca");
            Some((pki.server_tls(), pki.client_tls()))
        };
        match self {
            Transport::Tcp => ("tcp://127.0.0.1:0".to_string(), None),
            Transport::Tcp6 => ("tcp://[::1]:0".to_string(), None),
            Transport::Unix => (format!("unix://{}", dir.join("s.sock").display()), None),
            Transport::Inproc => (format!("inproc://pair-{}-{n}", std::process::id()), None),
            Transport::Tls => ("tls://127.0.0.1:0".to_string(), tls()),
            Transport::Ws => ("ws://127.0.0.1:0/plexus".to_string(), None),
            Transport::Wss => ("wss://127.0.0.1:0".to_string(), tls()),
            Transport::Quic => ("quic://127.0.0.1:0".to_string(), tls()),
        }
    }
}

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// A server endpoint listening on `transport`, and a client endpoint set up to
/// reach it. Both take `config`; the server serves `service`, the client
/// serves `client_service`.
pub struct Pair {
    /// The listening endpoint.
    pub server: Endpoint,
    /// The dialing endpoint.
    pub client: Endpoint,
    /// The URL to dial.
    pub url: plexus::transport::Url,
    _dir: Option<tempdir::Dir>,
}

/// Minimal temp-dir handling without another dependency.
pub mod tempdir {
    use std::path::PathBuf;

    /// A directory removed on drop.
    pub struct Dir(pub PathBuf);

    impl Dir {
        /// A fresh directory under the system temp dir.
        pub fn new(tag: &str) -> Dir {
            let n = super::UNIQUE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("plexus-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Pair {
    /// Builds and starts the pair.
    pub async fn start(
        transport: Transport,
        config: ConnectionConfig,
        service: impl IntoRouter,
        client_service: impl IntoRouter,
    ) -> Option<Pair> {
        Self::start_with(transport, config, service, client_service, |b| b, |b| b).await
    }

    /// Like [`Pair::start`], with hooks to adjust either endpoint's builder.
    /// Returns `None` when the machine lacks the transport (IPv6).
    pub async fn start_with(
        transport: Transport,
        config: ConnectionConfig,
        service: impl IntoRouter,
        client_service: impl IntoRouter,
        server_hook: impl FnOnce(EndpointBuilder) -> EndpointBuilder,
        client_hook: impl FnOnce(EndpointBuilder) -> EndpointBuilder,
    ) -> Option<Pair> {
        let mut server = Endpoint::builder().config(config.clone()).serve(service);
        let mut client = Endpoint::builder().config(config).serve(client_service);
        let dir = (transport == Transport::Unix).then(|| tempdir::Dir::new("unix"));
        let scratch = std::env::temp_dir();
        let (url, tls) = transport.listen_url(dir.as_ref().map_or(&scratch, |d| &d.0));
        if let Some((server_tls, client_tls)) = tls {
            server = server.tls(server_tls);
            client = client.tls(client_tls);
        }
        let server = server_hook(server).build();
        let client = client_hook(client).build();
        let listening = match server.listen(url.as_str()).await {
            Ok(l) => l,
            Err(e) if transport == Transport::Tcp6 => {
                eprintln!("skipping IPv6: {e}");
                return None;
            }
            Err(e) => panic!("listen on {url}: {e}"),
        };
        // The listener keeps accepting until the server endpoint shuts down.
        let url = listening.local_url().clone();
        Some(Pair {
            server,
            client,
            url,
            _dir: dir,
        })
    }
}

/// A peer that speaks the wire protocol by hand, for tests that play a
/// careless or hostile client: it completes the dialer's handshake, then
/// writes and reads raw frames.
pub mod raw {
    use bytes::{Bytes, BytesMut};
    use plexus::wire;
    use plexus::wire::frame::Frame;
    use plexus::wire::handshake::{Answer, Hello, Welcome};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::bounded;

    /// A hand-driven dialer after its handshake.
    pub struct RawPeer {
        /// The stream, positioned after the welcome.
        pub stream: TcpStream,
        /// The listener's welcome.
        pub welcome: Welcome,
        /// Bytes read past the welcome.
        pub buf: BytesMut,
    }

    /// The hello a raw peer sends: node id 7, 1 MiB frames, 64 KiB windows.
    pub fn hello(version: u16) -> BytesMut {
        let mut out = BytesMut::new();
        Hello {
            version,
            node_id: 7,
            max_frame: 1 << 20,
            window: 1 << 16,
            max_calls: 256,
            extensions: Vec::new(),
            data: Bytes::new(),
        }
        .encode(&mut out);
        out
    }

    impl RawPeer {
        /// Dials `addr` (host:port) and completes the handshake.
        pub async fn connect(addr: &str) -> RawPeer {
            let mut stream = TcpStream::connect(addr).await.expect("dial");
            stream
                .write_all(&hello(wire::handshake::VERSION))
                .await
                .expect("hello");
            let mut buf = BytesMut::new();
            let welcome = bounded("welcome", async {
                loop {
                    if let Some(a) = Answer::decode(&mut buf).expect("answer") {
                        match a {
                            Answer::Welcome(w) => break w,
                            Answer::Refusal(r) => panic!("refused: {r:?}"),
                        }
                    }
                    assert_ne!(
                        stream.read_buf(&mut buf).await.expect("read"),
                        0,
                        "closed during handshake"
                    );
                }
            })
            .await;
            RawPeer {
                stream,
                welcome,
                buf,
            }
        }

        /// Writes `frames`, encoded back to back.
        pub async fn send(&mut self, frames: &[Frame]) -> std::io::Result<()> {
            let mut out = BytesMut::new();
            for f in frames {
                f.encode(&mut out);
            }
            self.stream.write_all(&out).await
        }

        /// Reads until at least `n` frames have come, or the stream ends.
        pub async fn frames(&mut self, n: usize) -> Vec<Frame> {
            let mut got = Vec::new();
            bounded("frames", async {
                loop {
                    while let Ok(Some(f)) = wire::frame::decode(&mut self.buf, u32::MAX) {
                        got.push(f);
                    }
                    if got.len() >= n {
                        return;
                    }
                    match self.stream.read_buf(&mut self.buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            got
        }
    }

    /// A call-open frame: unary (`END`), op index `index`, defining `name`
    /// when given.
    pub fn call(id: u32, index: u32, name: Option<&str>, body: Bytes) -> Frame {
        Frame::CallOpen(wire::frame::CallOpen {
            id,
            op: wire::frame::OpRef {
                index,
                name: name.map(str::to_owned),
            },
            deadline: None,
            metadata: Vec::new(),
            session: None,
            end: true,
            oneway: false,
            body,
        })
    }
}

/// The resident set size of this process, in bytes (Linux; 0 elsewhere).
pub fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Samples [`rss_bytes`] every 5 ms in the background and keeps the peak.
pub struct RssPeak {
    peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RssPeak {
    /// Starts sampling.
    pub fn start() -> RssPeak {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(rss_bytes()));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        RssPeak { peak, task }
    }

    /// The highest RSS seen so far.
    pub fn peak(&self) -> usize {
        self.peak.fetch_max(rss_bytes(), Ordering::Relaxed)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP relay between a client and `target` that can be frozen: it then
/// stops moving bytes either way, as a peer whose process was stopped
/// (SIGSTOP) looks from the network — its socket buffers fill, it returns no
/// credit and answers no ping.
pub struct FreezableProxy {
    /// Where clients connect (`tcp://127.0.0.1:port`).
    pub url: String,
    frozen: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezableProxy {
    /// Relays every connection made to the proxy to `target` (host:port).
    pub async fn start(target: String) -> FreezableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("tcp://{}", listener.local_addr().expect("addr"));
        let frozen = std::sync::Arc::new(tokio::sync::watch::channel(false).0);
        let f = frozen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, f.subscribe()));
                tokio::spawn(pump(sr, cw, f.subscribe()));
            }
        });
        FreezableProxy { url, frozen, task }
    }

    /// Stops moving bytes (until [`thaw`](Self::thaw)).
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Moves bytes again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Frozen mid-wait: stop reading at once.
            _ = frozen.wait_for(|f| *f) => continue,
        };
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The example `.proto` contract (`schemas/examples/inventory.proto`),
/// compiled by this crate's `build.rs`, for suites in other crates (the
/// `plexus` command's) that need a schema-first service.
pub mod inventory {
    #![allow(missing_docs, dead_code, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/inventory.rs"));
}
