//! What the example programs share: the `--tls-dir DIR` option that lets
//! `tls://`, `wss://` and `quic://` run across processes with a development
//! certificate authority, the `--key HEX` option of `echo` and `greeter`
//! ([`take_session_key`]), and the `--tls` / `--key SECRET` options of the
//! node examples ([`NodeSecurity`]), with [`DevCa`] giving the nodes of one
//! process their certificates for mutual TLS.
//!
//! `serve ... --tls-dir DIR` creates `DIR/ca.pem`, `DIR/server.pem` and
//! `DIR/server.key` on first use (a throwaway CA and a certificate for
//! `localhost`, `127.0.0.1` and `::1`) and listens with them; `call ...
//! --tls-dir DIR` trusts `DIR/ca.pem`. Never use these files outside
//! development: the CA's key is not even kept.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use plexus::node::NodeBuilder;
use plexus::transport::TlsConfig;
use plexus::wire::key::SessionKey;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Takes `--tls-dir DIR` out of `args`, if present.
pub fn take_tls_dir(args: &mut Vec<String>) -> Result<Option<PathBuf>, String> {
    let Some(at) = args.iter().position(|a| a == "--tls-dir") else {
        return Ok(None);
    };
    if at + 1 >= args.len() {
        return Err("--tls-dir needs a directory".to_owned());
    }
    let dir = args.remove(at + 1);
    args.remove(at);
    Ok(Some(PathBuf::from(dir)))
}

/// Takes `--key HEX` out of `args`, if present: the session key every
/// connection must prove in its handshake (docs/PROTOCOL.md §3.6), in hex
/// as [`SessionKey::to_hex`] writes it (at least 16 bytes). `echo` and
/// `greeter` take the key in hex so the same text can be handed to a client
/// in another language (`plexus.connect(url, key=HEX)` in Python).
pub fn take_session_key(args: &mut Vec<String>) -> Result<Option<SessionKey>, String> {
    let Some(at) = args.iter().position(|a| a == "--key") else {
        return Ok(None);
    };
    if at + 1 >= args.len() {
        return Err("--key needs a session key in hex (64 hex digits for 32 bytes)".to_owned());
    }
    let hex = args.remove(at + 1);
    args.remove(at);
    SessionKey::from_hex(&hex)
        .map(Some)
        .map_err(|e| format!("--key: {e}"))
}

/// Takes a flag such as `--quiet` out of `args`; true if it was there.
pub fn take_flag(args: &mut Vec<String>, flag: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != flag);
    args.len() != before
}

/// The listening TLS identity in `dir`, made first if `dir` has none.
pub fn server_tls(dir: &Path) -> io::Result<TlsConfig> {
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    if !cert.exists() || !key.exists() {
        make_dev_pki(dir)?;
    }
    let config = TlsConfig::server(&fs::read(&cert)?, &fs::read(&key)?);
    config.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A dialing TLS config trusting `dir/ca.pem`.
pub fn client_tls(dir: &Path) -> io::Result<TlsConfig> {
    let ca = dir.join("ca.pem");
    let pem = fs::read(&ca).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{}: {e} — start the server with the same --tls-dir first",
                ca.display()
            ),
        )
    })?;
    TlsConfig::client(&pem).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A throwaway certificate authority held in memory, issuing each node of
/// an example a certificate for mutual TLS (its name as the subject CN,
/// valid for `localhost`, `127.0.0.1` and `::1`, for both server and client
/// use). Never use it outside development.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl DevCa {
    /// A new authority with a fresh key.
    pub fn new() -> io::Result<DevCa> {
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.distinguished_name
            .push(DnType::CommonName, "Plexus examples development CA");
        let key = KeyPair::generate().map_err(failed)?;
        let issuer = CertifiedIssuer::self_signed(ca, key).map_err(failed)?;
        Ok(DevCa { issuer })
    }

    /// Mutual TLS for the node `name`: it listens and dials with its own
    /// certificate and admits only peers whose certificate this authority
    /// signed.
    pub fn node_tls(&self, name: &str) -> io::Result<TlsConfig> {
        let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
        let mut leaf = CertificateParams::new(names).map_err(failed)?;
        leaf.distinguished_name.push(DnType::CommonName, name);
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(failed)?;
        let cert = leaf.signed_by(&key, &self.issuer).map_err(failed)?;
        let ca = self.issuer.pem();
        TlsConfig::mutual(
            ca.as_bytes(),
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

fn failed(e: rcgen::Error) -> io::Error {
    io::Error::other(e.to_string())
}

/// How the node examples secure their nodes, from the command line:
/// `--tls` puts every node on mutual TLS with a certificate from one
/// in-memory [`DevCa`]; `--key SECRET` gives the group a session key (its
/// announcements are tagged and every connection proves it). Independent of
/// each other; docs/SECURITY.md says what each protects.
pub struct NodeSecurity {
    ca: Option<DevCa>,
    key: Option<SessionKey>,
}

impl NodeSecurity {
    /// Takes `--tls` and `--key SECRET` out of `args`.
    pub fn from_args(args: &mut Vec<String>) -> Result<NodeSecurity, String> {
        let ca = if take_flag(args, "--tls") {
            Some(DevCa::new().map_err(|e| format!("making the development CA: {e}"))?)
        } else {
            None
        };
        let key = match args.iter().position(|a| a == "--key") {
            None => None,
            Some(at) => {
                let secret = args
                    .get(at + 1)
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .ok_or("--key needs a non-empty secret")?;
                args.drain(at..at + 2);
                Some(SessionKey::new(secret))
            }
        };
        Ok(NodeSecurity { ca, key })
    }

    /// Takes the options from the process's own arguments.
    pub fn from_env() -> Result<NodeSecurity, String> {
        NodeSecurity::from_args(&mut std::env::args().skip(1).collect())
    }

    /// True when `--tls` was given.
    pub fn tls(&self) -> bool {
        self.ca.is_some()
    }

    /// `builder` with TLS (a certificate for `name`) and the key, as asked.
    pub fn apply(&self, mut builder: NodeBuilder, name: &str) -> io::Result<NodeBuilder> {
        if let Some(ca) = &self.ca {
            // Listens on tls://127.0.0.1:0 and dials its peers over TLS.
            builder = builder.tls(ca.node_tls(name)?);
        }
        if let Some(key) = &self.key {
            builder = builder.session_key(key.clone());
        }
        Ok(builder)
    }
}

/// Writes a throwaway CA and a server certificate it signed into `dir`.
fn make_dev_pki(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "Plexus examples development CA");
    let issuer =
        CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(failed)?).map_err(failed)?;
    let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    let mut leaf = CertificateParams::new(names).map_err(failed)?;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(failed)?;
    let cert = leaf.signed_by(&key, &issuer).map_err(failed)?;
    fs::write(dir.join("ca.pem"), issuer.pem())?;
    fs::write(dir.join("server.key"), key.serialize_pem())?;
    fs::write(dir.join("server.pem"), cert.pem())?;
    Ok(())
}
