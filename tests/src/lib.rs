//! Shared support for the integration tests in `tests/tests/`: certificates
//! made at test time, a listening server on every transport, and bounded waits.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use plexus::{ConnectionConfig, Endpoint, EndpointBuilder, IntoRouter, TlsConfig};
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
    pub url: plexus::Url,
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
