//! `tls://`: TCP wrapped in TLS by rustls, with optional client certificates.
//!
//! Owns [`TlsConfig`] (certificates, keys, trust roots and the rustls
//! configurations built from them) and the TLS handshake over TCP on both
//! sides, which `wss://` reuses; `quic://` takes the rustls configurations
//! from here too. TCP itself comes from the `tcp` module. Every configuration
//! is built with the `ring` provider named explicitly, so nothing depends on
//! a process-wide default provider being installed.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, InvalidDnsNameError, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::pending::PendingHandshakes;
use super::url::Host;
use super::{tcp, Connected, ReadHalf, Stream, TransportConfig, TransportError, Url, WriteHalf};

/// How long a handshake may take before the peer is dropped, unless
/// [`TlsConfig::handshake_timeout`] says otherwise.
pub(crate) use super::DEFAULT_HANDSHAKE_TIMEOUT;

/// TLS settings for `tls://` listeners (the server side) and dialers (the
/// client side). One value may carry both, as a node that listens and dials does.
///
/// Build one from PEM text:
///
/// ```no_run
/// # fn main() -> Result<(), plexus::transport::TlsConfigError> {
/// # let (ca, cert, key) = (b"", b"", b"");
/// use plexus::transport::TlsConfig;
/// // A server that only proves its identity.
/// let server = TlsConfig::server(cert, key)?;
/// // A server that also refuses clients without a certificate signed by `ca`.
/// let strict = TlsConfig::server(cert, key)?.require_client_certs(ca)?;
/// // A client that trusts `ca` and presents a certificate of its own.
/// let client = TlsConfig::client(ca)?.with_client_cert(cert, key)?.server_name("localhost")?;
/// # Ok(()) }
/// ```
///
/// Or wrap rustls configurations built elsewhere with
/// [`TlsConfig::from_server_config`] and [`TlsConfig::from_client_config`].
///
/// Cloning is cheap (the rustls configurations are shared); `Debug` describes
/// the settings and never prints key material.
#[derive(Clone)]
pub struct TlsConfig {
    server: Option<ServerSide>,
    client: Option<ClientSide>,
    server_name: Option<ServerName<'static>>,
    handshake_timeout: Duration,
}

/// The listening side: the built rustls configuration and, when it was built
/// from PEM here, what it was built from (so builder steps can rebuild it).
#[derive(Clone)]
struct ServerSide {
    config: Arc<ServerConfig>,
    parts: Option<Arc<ServerParts>>,
}

struct ServerParts {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: Option<Arc<RootCertStore>>,
}

/// The dialing side, like [`ServerSide`].
#[derive(Clone)]
struct ClientSide {
    config: Arc<ClientConfig>,
    parts: Option<Arc<ClientParts>>,
}

struct ClientParts {
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl TlsConfig {
    fn empty() -> TlsConfig {
        TlsConfig {
            server: None,
            client: None,
            server_name: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// A listener identity: the certificate chain (leaf first) and its private
    /// key (PKCS#8, PKCS#1 or SEC1), both PEM. Clients are not asked for
    /// certificates; add [`require_client_certs`](Self::require_client_certs) for that.
    pub fn server(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<TlsConfig, TlsConfigError> {
        let parts = ServerParts {
            chain: parse_certs(cert_chain_pem, "server certificate chain")?,
            key: parse_key(key_pem, "server private key")?,
            client_roots: None,
        };
        Ok(TlsConfig {
            server: Some(ServerSide::build(parts)?),
            ..TlsConfig::empty()
        })
    }

    /// A dialer that trusts servers whose certificates chain to one of the CA
    /// certificates in `ca_pem`.
    pub fn client(ca_pem: &[u8]) -> Result<TlsConfig, TlsConfigError> {
        TlsConfig::empty().with_trust_roots(ca_pem)
    }

    /// Both sides at once for a node in a mutually authenticated mesh: it
    /// listens with `cert_chain_pem`/`key_pem`, accepts only clients with a
    /// certificate signed by `ca_pem`, and dials trusting `ca_pem` while
    /// presenting the same certificate. The certificate must allow both server
    /// and client use (no extended key usage, or both).
    pub fn mutual(
        ca_pem: &[u8],
        cert_chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<TlsConfig, TlsConfigError> {
        TlsConfig::server(cert_chain_pem, key_pem)?
            .require_client_certs(ca_pem)?
            .with_trust_roots(ca_pem)?
            .with_client_cert(cert_chain_pem, key_pem)
    }

    /// Wraps a rustls server configuration built elsewhere. Client
    /// authentication is then whatever that configuration says.
    pub fn from_server_config(config: Arc<ServerConfig>) -> TlsConfig {
        TlsConfig::empty().with_server_config(config)
    }

    /// Wraps a rustls client configuration built elsewhere.
    pub fn from_client_config(config: Arc<ClientConfig>) -> TlsConfig {
        TlsConfig::empty().with_client_config(config)
    }

    /// Replaces the listening side with a rustls configuration built elsewhere.
    pub fn with_server_config(mut self, config: Arc<ServerConfig>) -> TlsConfig {
        self.server = Some(ServerSide {
            config,
            parts: None,
        });
        self
    }

    /// Replaces the dialing side with a rustls configuration built elsewhere.
    pub fn with_client_config(mut self, config: Arc<ClientConfig>) -> TlsConfig {
        self.client = Some(ClientSide {
            config,
            parts: None,
        });
        self
    }

    /// Makes the listener demand a client certificate signed by one of the CA
    /// certificates in `ca_pem`; clients without one fail the handshake. This
    /// is the client-certificate allow-list: issue certificates from that CA
    /// only to the clients you admit.
    ///
    /// Needs a listening side built by [`TlsConfig::server`].
    pub fn require_client_certs(mut self, ca_pem: &[u8]) -> Result<TlsConfig, TlsConfigError> {
        let parts = self
            .server
            .as_ref()
            .and_then(|side| side.parts.as_ref())
            .ok_or(TlsConfigError::NoServerIdentity)?;
        let parts = ServerParts {
            chain: parts.chain.clone(),
            key: parts.key.clone_key(),
            client_roots: Some(parse_roots(ca_pem, "client CA")?),
        };
        self.server = Some(ServerSide::build(parts)?);
        Ok(self)
    }

    /// Sets the CA certificates the dialing side trusts (replacing earlier
    /// ones), keeping any client certificate already set. Lets a listening
    /// config dial too.
    pub fn with_trust_roots(mut self, ca_pem: &[u8]) -> Result<TlsConfig, TlsConfigError> {
        let identity = self
            .client
            .as_ref()
            .and_then(|side| side.parts.as_ref())
            .and_then(|parts| parts.identity.as_ref())
            .map(|(chain, key)| (chain.clone(), key.clone_key()));
        let parts = ClientParts {
            roots: parse_roots(ca_pem, "CA")?,
            identity,
        };
        self.client = Some(ClientSide::build(parts)?);
        Ok(self)
    }

    /// Makes the dialer present this certificate chain (leaf first) and key,
    /// both PEM, to servers that ask for one.
    ///
    /// Needs a dialing side built by [`TlsConfig::client`] or
    /// [`with_trust_roots`](Self::with_trust_roots).
    pub fn with_client_cert(
        mut self,
        cert_chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<TlsConfig, TlsConfigError> {
        let roots = self
            .client
            .as_ref()
            .and_then(|side| side.parts.as_ref())
            .map(|parts| Arc::clone(&parts.roots))
            .ok_or(TlsConfigError::NoTrustRoots)?;
        let parts = ClientParts {
            roots,
            identity: Some((
                parse_certs(cert_chain_pem, "client certificate chain")?,
                parse_key(key_pem, "client private key")?,
            )),
        };
        self.client = Some(ClientSide::build(parts)?);
        Ok(self)
    }

    /// The name the dialer expects in the server's certificate, instead of the
    /// host of the URL being dialed. Useful when dialing `tls://127.0.0.1:…`
    /// a server whose certificate names `localhost`. An IP address is valid.
    pub fn server_name(mut self, name: &str) -> Result<TlsConfig, TlsConfigError> {
        let name = ServerName::try_from(name.to_owned()).map_err(|source| {
            TlsConfigError::BadServerName {
                name: name.to_owned(),
                source,
            }
        })?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// How long one handshake may take, on either side, before the peer is
    /// given up (default 10 s). Bounds how long a silent peer can hold a slot.
    pub fn handshake_timeout(mut self, timeout: Duration) -> TlsConfig {
        self.handshake_timeout = timeout;
        self
    }

    /// The rustls configuration used when listening, if any.
    pub fn server_config(&self) -> Option<&Arc<ServerConfig>> {
        self.server.as_ref().map(|side| &side.config)
    }

    /// The rustls configuration used when dialing, if any.
    pub fn client_config(&self) -> Option<&Arc<ClientConfig>> {
        self.client.as_ref().map(|side| &side.config)
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let server = self.server.as_ref().map(|side| match &side.parts {
            None => "rustls ServerConfig",
            Some(parts) if parts.client_roots.is_some() => {
                "PEM identity, client certificates required"
            }
            Some(_) => "PEM identity, no client certificates",
        });
        let client = self.client.as_ref().map(|side| match &side.parts {
            None => "rustls ClientConfig",
            Some(parts) if parts.identity.is_some() => {
                "PEM trust roots, presents a client certificate"
            }
            Some(_) => "PEM trust roots, no client certificate",
        });
        f.debug_struct("TlsConfig")
            .field("server", &server)
            .field("client", &client)
            .field("server_name", &self.server_name)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl ServerSide {
    fn build(parts: ServerParts) -> Result<ServerSide, TlsConfigError> {
        let rejected = |source| TlsConfigError::Rejected {
            side: "server",
            source,
        };
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(rejected)?;
        let builder = match &parts.client_roots {
            Some(roots) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), provider)
                        .build()
                        .map_err(|source| TlsConfigError::ClientVerifier { source })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(parts.chain.clone(), parts.key.clone_key())
            .map_err(rejected)?;
        Ok(ServerSide {
            config: Arc::new(config),
            parts: Some(Arc::new(parts)),
        })
    }
}

impl ClientSide {
    fn build(parts: ClientParts) -> Result<ClientSide, TlsConfigError> {
        let rejected = |source| TlsConfigError::Rejected {
            side: "client",
            source,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rejected)?
            .with_root_certificates(Arc::clone(&parts.roots));
        let config = match &parts.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(rejected)?,
            None => builder.with_no_client_auth(),
        };
        Ok(ClientSide {
            config: Arc::new(config),
            parts: Some(Arc::new(parts)),
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse_certs(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| pem_error(what, source))?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate { what });
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], what: &'static str) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsConfigError::NoPrivateKey { what },
        source => pem_error(what, source),
    })
}

/// A PEM parse error with its byte strings shown as text.
fn pem_error(what: &'static str, source: rustls_pki_types::pem::Error) -> TlsConfigError {
    use rustls_pki_types::pem::Error;
    let detail = match &source {
        Error::MissingSectionEnd { end_marker } => format!(
            "a block is missing its `-----END {}-----` line",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => format!(
            "malformed `-----BEGIN` line {:?}",
            String::from_utf8_lossy(line)
        ),
        other => other.to_string(),
    };
    TlsConfigError::Pem {
        what,
        detail,
        source,
    }
}

fn parse_roots(pem: &[u8], what: &'static str) -> Result<Arc<RootCertStore>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for (index, cert) in parse_certs(pem, what)?.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|source| TlsConfigError::BadTrustRoot {
                what,
                index: index + 1,
                source,
            })?;
    }
    Ok(Arc::new(roots))
}

/// Why a [`TlsConfig`] could not be built. Raised by the builder methods,
/// before any socket exists; handshake failures are
/// [`TransportError::Tls`] instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// The PEM text is malformed.
    #[error("could not read the {what} PEM: {detail} — pass the whole text of a PEM file")]
    Pem {
        /// Which input ("server certificate chain", "client CA", ...).
        what: &'static str,
        /// What is wrong, readably.
        detail: String,
        /// The parser's complaint.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The PEM text holds no certificate.
    #[error("the {what} PEM contains no certificate — expected at least one -----BEGIN CERTIFICATE----- block")]
    NoCertificate {
        /// Which input.
        what: &'static str,
    },
    /// The PEM text holds no private key.
    #[error(
        "the {what} PEM contains no private key — expected a BEGIN PRIVATE KEY (PKCS#8), \
         BEGIN RSA PRIVATE KEY (PKCS#1) or BEGIN EC PRIVATE KEY (SEC1) block"
    )]
    NoPrivateKey {
        /// Which input.
        what: &'static str,
    },
    /// A CA certificate cannot serve as a trust root.
    #[error("certificate #{index} of the {what} PEM cannot be used as a trust root: {source}")]
    BadTrustRoot {
        /// Which input.
        what: &'static str,
        /// Position of the certificate in the PEM, from 1.
        index: usize,
        /// Why rustls refused it.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the certificate and key, most often because the key
    /// does not belong to the certificate.
    #[error(
        "rustls refused the {side} certificate and key: {source} — check that the key \
         belongs to the first certificate of the chain"
    )]
    Rejected {
        /// `"server"` or `"client"`.
        side: &'static str,
        /// Why rustls refused it.
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built.
    #[error("could not build the client-certificate verifier: {source} — pass at least one CA certificate")]
    ClientVerifier {
        /// Why rustls refused it.
        #[source]
        source: VerifierBuilderError,
    },
    /// The server-name override is neither a DNS name nor an IP address.
    #[error("{name:?} is not a valid TLS server name: {source} — use a DNS name such as localhost or an IP address")]
    BadServerName {
        /// The name as given.
        name: String,
        /// Why it is invalid.
        #[source]
        source: InvalidDnsNameError,
    },
    /// `require_client_certs` was called without a server side built from PEM.
    #[error(
        "require_client_certs needs a server identity built from PEM — start from \
         TlsConfig::server(cert_chain_pem, key_pem); a wrapped rustls ServerConfig \
         must configure client authentication itself"
    )]
    NoServerIdentity,
    /// `with_client_cert` was called without trust roots built from PEM.
    #[error(
        "with_client_cert needs trust roots built from PEM — start from \
         TlsConfig::client(ca_pem) or call with_trust_roots(ca_pem) first; a wrapped \
         rustls ClientConfig must configure its client certificate itself"
    )]
    NoTrustRoots,
}

impl Stream for tokio_rustls::server::TlsStream<TcpStream> {
    fn split(self: Box<Self>) -> (ReadHalf, WriteHalf) {
        let (read, write) = tokio::io::split(*self);
        (Box::new(read), Box::new(write))
    }
}

impl Stream for tokio_rustls::client::TlsStream<TcpStream> {
    fn split(self: Box<Self>) -> (ReadHalf, WriteHalf) {
        let (read, write) = tokio::io::split(*self);
        (Box::new(read), Box::new(write))
    }
}

/// A bound `tls://` listener. Handshakes run in tasks the listener owns, so a
/// slow or silent peer delays only itself; dropping the listener aborts them.
pub(crate) struct TlsListener {
    socket: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    local: Url,
    nodelay: bool,
    handshake_timeout: Duration,
    handshakes: PendingHandshakes,
}

impl TlsListener {
    /// Binds `url`; needs a server side in `config.tls`.
    pub(crate) async fn bind(url: &Url, config: &TransportConfig) -> Result<Self, TransportError> {
        let (server, handshake_timeout) = server_side(url, config)?;
        let (socket, addr) = tcp::bind_socket(url).await?;
        Ok(TlsListener {
            socket,
            acceptor: TlsAcceptor::from(Arc::clone(server)),
            local: Url::tls(addr),
            nodelay: config.nodelay,
            handshake_timeout,
            handshakes: PendingHandshakes::new(),
        })
    }

    /// The bound address, with the port the OS chose for port 0.
    pub(crate) fn local_url(&self) -> Url {
        self.local.clone()
    }

    /// Returns the next peer whose handshake finished, in completion order.
    /// A peer that fails or times out yields [`TransportError::Tls`] naming it;
    /// the listener stays usable and the caller simply accepts again.
    ///
    /// Cancel-safe: pending handshakes live in the listener, not in this future.
    pub(crate) async fn accept(&mut self) -> Result<Connected, TransportError> {
        let TlsListener {
            socket,
            acceptor,
            local,
            nodelay,
            handshake_timeout,
            handshakes,
        } = self;
        handshakes
            .next(
                local,
                || tcp::accept_socket(socket, local, *nodelay),
                |(stream, peer): (TcpStream, SocketAddr)| {
                    let acceptor = acceptor.clone();
                    let limit = *handshake_timeout;
                    async move {
                        let remote = Url::tls(peer).to_string();
                        let stream = accept_tls(&acceptor, stream, &remote, limit).await?;
                        let identity = identity_of(stream.get_ref().1.peer_certificates());
                        Ok(Connected {
                            stream: Box::new(stream),
                            remote,
                            identity,
                        })
                    }
                },
            )
            .await
    }
}

/// The listening side of `config`, and its handshake timeout; an error
/// naming `url` when there is none.
pub(crate) fn server_side<'a>(
    url: &Url,
    config: &'a TransportConfig,
) -> Result<(&'a Arc<ServerConfig>, Duration), TransportError> {
    let tls = config.tls.as_ref();
    let server =
        tls.and_then(TlsConfig::server_config)
            .ok_or_else(|| TransportError::TlsNotConfigured {
                url: url.to_string(),
                what: "a server certificate (TlsConfig::server)",
            })?;
    Ok((
        server,
        tls.map_or(DEFAULT_HANDSHAKE_TIMEOUT, |t| t.handshake_timeout),
    ))
}

/// Runs the server side of one TLS handshake over `stream`, bounded by
/// `limit`. `remote` names the peer in errors.
pub(crate) async fn accept_tls(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    remote: &str,
    limit: Duration,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, TransportError> {
    let tls_error = |source| TransportError::Tls {
        url: remote.to_owned(),
        source,
    };
    tokio::time::timeout(limit, acceptor.accept(stream))
        .await
        .map_err(|_| tls_error(timed_out(limit)))?
        .map_err(tls_error)
}

pub(crate) use super::timed_out;

/// The dialing side of a TLS configuration, resolved for one URL: what to
/// trust, which name to expect, and how long the handshake may take.
pub(crate) struct ClientSideFor<'a> {
    pub(crate) config: &'a Arc<ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) handshake_timeout: Duration,
}

/// The dialing side of `config` for `url`. The server name is the configured
/// override or the URL's host.
pub(crate) fn client_side<'a>(
    url: &Url,
    config: &'a TransportConfig,
) -> Result<ClientSideFor<'a>, TransportError> {
    let tls = config.tls.as_ref();
    let client =
        tls.and_then(TlsConfig::client_config)
            .ok_or_else(|| TransportError::TlsNotConfigured {
                url: url.to_string(),
                what: "a client side with trust roots (TlsConfig::client)",
            })?;
    let tls_error = |source| TransportError::Tls {
        url: url.to_string(),
        source,
    };
    let server_name = match (tls.and_then(|t| t.server_name.clone()), url.host()) {
        (Some(name), _) => name,
        (None, Some(Host::Ip(ip))) => ServerName::IpAddress((*ip).into()),
        (None, Some(Host::Name(name))) => ServerName::try_from(name.clone()).map_err(|e| {
            tls_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the host is not a valid TLS server name ({e}); set TlsConfig::server_name"
                ),
            ))
        })?,
        (None, None) => {
            return Err(tls_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a host:port address",
            )))
        }
    };
    Ok(ClientSideFor {
        config: client,
        server_name,
        handshake_timeout: tls.map_or(DEFAULT_HANDSHAKE_TIMEOUT, |t| t.handshake_timeout),
    })
}

/// Runs the client side of one TLS handshake over a connected `stream`,
/// bounded by the configured timeout. `url` names the peer in errors.
pub(crate) async fn connect_tls(
    side: ClientSideFor<'_>,
    stream: TcpStream,
    url: &Url,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TransportError> {
    let tls_error = |source| TransportError::Tls {
        url: url.to_string(),
        source,
    };
    let limit = side.handshake_timeout;
    let connector = TlsConnector::from(Arc::clone(side.config));
    tokio::time::timeout(limit, connector.connect(side.server_name, stream))
        .await
        .map_err(|_| tls_error(timed_out(limit)))?
        .map_err(tls_error)
}

/// Dials a `tls://` URL: TCP, then the client handshake bounded by the
/// configured timeout.
///
/// With TLS 1.3 a server that refuses the client's certificate does so after
/// the client has finished its side of the handshake, so such a refusal shows
/// up as an error on the first read rather than here.
pub(crate) async fn dial(url: &Url, config: &TransportConfig) -> Result<Connected, TransportError> {
    let side = client_side(url, config)?;
    let (stream, peer) = tcp::connect(url, config).await?;
    let stream = connect_tls(side, stream, url).await?;
    let identity = identity_of(stream.get_ref().1.peer_certificates());
    Ok(Connected {
        stream: Box::new(stream),
        remote: Url::tls(peer).to_string(),
        identity,
    })
}

/// The identity in a verified chain: its leaf, read. rustls hands out peer
/// certificates only once it verified them.
pub(crate) fn identity_of(chain: Option<&[CertificateDer<'_>]>) -> Option<super::PeerIdentity> {
    chain
        .and_then(<[_]>::first)
        .and_then(|leaf| super::PeerIdentity::from_der(leaf))
}

#[cfg(test)]
pub(crate) mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    use tokio::io::AsyncReadExt;
    use tokio::time::timeout;

    use super::*;
    use crate::transport::tcp::tests::{exchange, listen_dial_exchange, STEP};
    use crate::transport::{dial, listen, Listener, Scheme};

    /// A certificate authority and PEM identities it issued, made per test.
    pub(crate) struct TestPki {
        pub(crate) ca_pem: String,
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    /// A PEM certificate and its private key.
    pub(crate) struct Identity {
        pub(crate) cert_pem: String,
        pub(crate) key_pem: String,
    }

    impl TestPki {
        pub(crate) fn new(name: &str) -> TestPki {
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

        pub(crate) fn issue(&self, names: &[&str], usages: &[ExtendedKeyUsagePurpose]) -> Identity {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.extended_key_usages = usages.to_vec();
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
            Identity {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        }

        pub(crate) fn server(&self) -> Identity {
            self.issue(
                &["localhost", "127.0.0.1", "::1"],
                &[ExtendedKeyUsagePurpose::ServerAuth],
            )
        }

        pub(crate) fn client(&self) -> Identity {
            self.issue(&["client.test"], &[ExtendedKeyUsagePurpose::ClientAuth])
        }

        /// A listening config with this CA's server identity.
        pub(crate) fn server_tls(&self) -> TlsConfig {
            let id = self.server();
            TlsConfig::server(id.cert_pem.as_bytes(), id.key_pem.as_bytes()).expect("server")
        }

        /// A listening config that also demands client certificates from this CA.
        pub(crate) fn strict_server_tls(&self) -> TlsConfig {
            self.server_tls()
                .require_client_certs(self.ca_pem.as_bytes())
                .expect("client CA")
        }

        /// A dialing config trusting this CA.
        pub(crate) fn client_tls(&self) -> TlsConfig {
            TlsConfig::client(self.ca_pem.as_bytes()).expect("client")
        }

        /// A dialing config trusting this CA and presenting a certificate it issued.
        pub(crate) fn client_tls_with_cert(&self) -> TlsConfig {
            let id = self.client();
            self.client_tls()
                .with_client_cert(id.cert_pem.as_bytes(), id.key_pem.as_bytes())
                .expect("client cert")
        }
    }

    pub(crate) fn with_tls(tls: TlsConfig) -> TransportConfig {
        TransportConfig::new().with_tls(tls)
    }

    async fn tls_listener(tls: TlsConfig) -> Listener {
        listen(
            &Url::parse("tls://127.0.0.1:0").expect("url"),
            &with_tls(tls),
        )
        .await
        .expect("listen")
    }

    /// Dials and accepts at once; returns both outcomes.
    pub(crate) async fn dial_and_accept(
        listener: &mut Listener,
        client: &TransportConfig,
    ) -> (
        Result<Connected, TransportError>,
        Result<Connected, TransportError>,
    ) {
        let local = listener.local_url().clone();
        timeout(STEP, async {
            tokio::join!(dial(&local, client), listener.accept())
        })
        .await
        .expect("dial and accept within the step bound")
    }

    /// True when the dialer was refused: at dial time, or (TLS 1.3 client
    /// certificates) on its first read.
    pub(crate) async fn refused(dialed: Result<Connected, TransportError>) -> bool {
        let Ok(connected) = dialed else {
            return true;
        };
        let (mut read, _write) = connected.stream.split();
        let mut byte = [0u8; 1];
        matches!(
            timeout(STEP, read.read(&mut byte))
                .await
                .expect("read within the step bound"),
            Err(_) | Ok(0)
        )
    }

    #[tokio::test]
    async fn server_auth_carries_bytes_both_ways() {
        let pki = TestPki::new("server-auth CA");
        let id = pki.server();
        let server =
            TlsConfig::server(id.cert_pem.as_bytes(), id.key_pem.as_bytes()).expect("server");
        let client = TlsConfig::client(pki.ca_pem.as_bytes()).expect("client");
        let mut listener = tls_listener(server).await;
        assert_eq!(listener.local_url().scheme(), Scheme::Tls);
        let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(client)).await;
        let dialed = dialed.expect("dial");
        let accepted = accepted.expect("accept");
        assert_eq!(dialed.remote, listener.local_url().to_string());
        assert!(
            accepted.remote.starts_with("tls://127.0.0.1:"),
            "{}",
            accepted.remote
        );
        exchange(dialed, accepted).await;
    }

    #[tokio::test]
    async fn server_name_override_and_ipv6() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("skipping: this machine has no IPv6 loopback");
            return;
        }
        let pki = TestPki::new("v6 CA");
        let id = pki.issue(&["localhost"], &[ExtendedKeyUsagePurpose::ServerAuth]);
        let server =
            TlsConfig::server(id.cert_pem.as_bytes(), id.key_pem.as_bytes()).expect("server");
        let server = server
            .with_trust_roots(pki.ca_pem.as_bytes())
            .expect("trust roots");
        let config = with_tls(server.server_name("localhost").expect("valid name"));
        let local = listen_dial_exchange("tls://[::1]:0", &config).await;
        assert!(local.to_string().starts_with("tls://[::1]:"), "{local}");
    }

    #[tokio::test]
    async fn client_trusting_another_ca_is_refused() {
        let pki = TestPki::new("real CA");
        let stranger = TestPki::new("stranger CA");
        let id = pki.server();
        let server =
            TlsConfig::server(id.cert_pem.as_bytes(), id.key_pem.as_bytes()).expect("server");
        let client = TlsConfig::client(stranger.ca_pem.as_bytes()).expect("client");
        let mut listener = tls_listener(server).await;
        let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(client)).await;
        let err = dialed.expect_err("server certificate is not trusted");
        assert!(matches!(err, TransportError::Tls { .. }), "{err}");
        assert!(err.to_string().contains("tls://127.0.0.1:"), "{err}");
        assert!(matches!(accepted, Err(TransportError::Tls { .. })));
    }

    #[tokio::test]
    async fn mutual_tls_with_a_client_certificate_works() {
        let pki = TestPki::new("mtls CA");
        let (server_id, client_id) = (pki.server(), pki.client());
        let server = TlsConfig::server(server_id.cert_pem.as_bytes(), server_id.key_pem.as_bytes())
            .expect("server")
            .require_client_certs(pki.ca_pem.as_bytes())
            .expect("client CA");
        let client = TlsConfig::client(pki.ca_pem.as_bytes())
            .expect("client")
            .with_client_cert(client_id.cert_pem.as_bytes(), client_id.key_pem.as_bytes())
            .expect("client cert");
        let mut listener = tls_listener(server).await;
        let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(client)).await;
        exchange(dialed.expect("dial"), accepted.expect("accept")).await;
    }

    #[tokio::test]
    async fn mutual_tls_without_a_client_certificate_is_refused() {
        let pki = TestPki::new("mtls CA");
        let server_id = pki.server();
        let server = TlsConfig::server(server_id.cert_pem.as_bytes(), server_id.key_pem.as_bytes())
            .expect("server")
            .require_client_certs(pki.ca_pem.as_bytes())
            .expect("client CA");
        let client = TlsConfig::client(pki.ca_pem.as_bytes()).expect("client");
        let mut listener = tls_listener(server).await;
        let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(client)).await;
        let err = accepted.expect_err("no client certificate");
        assert!(matches!(err, TransportError::Tls { .. }), "{err}");
        assert!(refused(dialed).await);
    }

    #[tokio::test]
    async fn client_certificate_from_another_ca_is_refused() {
        let pki = TestPki::new("mtls CA");
        let stranger = TestPki::new("stranger CA");
        let (server_id, intruder) = (pki.server(), stranger.client());
        let server = TlsConfig::server(server_id.cert_pem.as_bytes(), server_id.key_pem.as_bytes())
            .expect("server")
            .require_client_certs(pki.ca_pem.as_bytes())
            .expect("client CA");
        let client = TlsConfig::client(pki.ca_pem.as_bytes())
            .expect("client")
            .with_client_cert(intruder.cert_pem.as_bytes(), intruder.key_pem.as_bytes())
            .expect("client cert");
        let mut listener = tls_listener(server).await;
        let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(client)).await;
        assert!(matches!(accepted, Err(TransportError::Tls { .. })));
        assert!(refused(dialed).await);
    }

    #[tokio::test]
    async fn listener_keeps_accepting_after_a_failed_handshake() {
        let pki = TestPki::new("mtls CA");
        let (server_id, client_id) = (pki.server(), pki.client());
        let server = TlsConfig::server(server_id.cert_pem.as_bytes(), server_id.key_pem.as_bytes())
            .expect("server")
            .require_client_certs(pki.ca_pem.as_bytes())
            .expect("client CA");
        let anonymous = TlsConfig::client(pki.ca_pem.as_bytes()).expect("client");
        let good = anonymous
            .clone()
            .with_client_cert(client_id.cert_pem.as_bytes(), client_id.key_pem.as_bytes())
            .expect("client cert");
        let mut listener = tls_listener(server).await;

        let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(anonymous)).await;
        assert!(accepted.is_err());
        assert!(refused(dialed).await);

        let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(good)).await;
        exchange(dialed.expect("dial"), accepted.expect("accept")).await;
    }

    #[tokio::test]
    async fn silent_peer_does_not_stall_accept_and_times_out() {
        let pki = TestPki::new("timeout CA");
        let id = pki.server();
        let server = TlsConfig::server(id.cert_pem.as_bytes(), id.key_pem.as_bytes())
            .expect("server")
            .handshake_timeout(Duration::from_millis(300));
        let client = TlsConfig::client(pki.ca_pem.as_bytes()).expect("client");
        let mut listener = tls_listener(server).await;
        let addr = listener.local_url().socket_addr().expect("ip address");

        // Connects but never says a word.
        let _silent = TcpStream::connect(addr).await.expect("tcp connect");
        let (dialed, accepted) = dial_and_accept(&mut listener, &with_tls(client)).await;
        exchange(dialed.expect("dial"), accepted.expect("good peer first")).await;

        let err = timeout(STEP, listener.accept())
            .await
            .expect("timeout reported within the step bound")
            .expect_err("silent peer times out");
        match err {
            TransportError::Tls { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::TimedOut)
            }
            other => panic!("expected a TLS timeout, got {other}"),
        }
    }

    #[tokio::test]
    async fn one_config_can_listen_and_dial_as_a_mesh_node() {
        let pki = TestPki::new("mesh CA");
        let id = pki.issue(
            &["localhost", "127.0.0.1"],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let node = TlsConfig::mutual(
            pki.ca_pem.as_bytes(),
            id.cert_pem.as_bytes(),
            id.key_pem.as_bytes(),
        )
        .expect("mutual");
        listen_dial_exchange("tls://127.0.0.1:0", &with_tls(node)).await;
    }

    #[tokio::test]
    async fn missing_tls_config_is_named_at_listen_and_dial() {
        let url = Url::parse("tls://127.0.0.1:0").expect("url");
        let err = listen(&url, &TransportConfig::new())
            .await
            .expect_err("no server config");
        assert!(
            matches!(err, TransportError::TlsNotConfigured { .. }),
            "{err}"
        );
        let pki = TestPki::new("half CA");
        let client_only = TlsConfig::client(pki.ca_pem.as_bytes()).expect("client");
        let err = listen(&url, &with_tls(client_only))
            .await
            .expect_err("client side only");
        assert!(err.to_string().contains("server certificate"), "{err}");
        let err = dial(
            &Url::parse("tls://127.0.0.1:1").expect("url"),
            &TransportConfig::new(),
        )
        .await
        .expect_err("no client config");
        assert!(
            matches!(err, TransportError::TlsNotConfigured { .. }),
            "{err}"
        );
    }

    #[test]
    fn bad_pem_inputs_get_clear_errors() {
        let pki = TestPki::new("errors CA");
        let id = pki.server();
        let other = pki.server();
        let (cert, key) = (id.cert_pem.as_bytes(), id.key_pem.as_bytes());

        let err = TlsConfig::server(b"not pem", key).expect_err("no cert");
        assert!(matches!(err, TlsConfigError::NoCertificate { .. }), "{err}");
        let err = TlsConfig::server(cert, cert).expect_err("no key");
        assert!(matches!(err, TlsConfigError::NoPrivateKey { .. }), "{err}");
        let err = TlsConfig::server(cert, other.key_pem.as_bytes()).expect_err("wrong key");
        assert!(matches!(err, TlsConfigError::Rejected { .. }), "{err}");
        let err = TlsConfig::client(b"-----BEGIN CERTIFICATE-----\nAAAA\n").expect_err("truncated");
        assert!(matches!(err, TlsConfigError::Pem { .. }), "{err}");
        let err = TlsConfig::client(b"").expect_err("empty");
        assert!(matches!(err, TlsConfigError::NoCertificate { .. }), "{err}");
        let err = TlsConfig::client(pki.ca_pem.as_bytes())
            .expect("client")
            .require_client_certs(pki.ca_pem.as_bytes())
            .expect_err("no server side");
        assert!(matches!(err, TlsConfigError::NoServerIdentity), "{err}");
        let err = TlsConfig::server(cert, key)
            .expect("server")
            .with_client_cert(cert, key)
            .expect_err("no trust roots");
        assert!(matches!(err, TlsConfigError::NoTrustRoots), "{err}");
        let err = TlsConfig::client(pki.ca_pem.as_bytes())
            .expect("client")
            .server_name("not a name")
            .expect_err("bad name");
        assert!(matches!(err, TlsConfigError::BadServerName { .. }), "{err}");
    }

    #[test]
    fn debug_never_prints_key_material() {
        let pki = TestPki::new("debug CA");
        let id = pki.server();
        let config = TlsConfig::mutual(
            pki.ca_pem.as_bytes(),
            id.cert_pem.as_bytes(),
            id.key_pem.as_bytes(),
        )
        .expect("mutual");
        let printed = format!("{config:?}");
        let key_body = id.key_pem.lines().nth(1).expect("base64 line");
        assert!(!printed.contains(key_body), "{printed}");
        assert!(
            printed.contains("client certificates required"),
            "{printed}"
        );
    }
}
