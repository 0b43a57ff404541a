//! What the example programs share: the `--tls-dir DIR` option that lets
//! `tls://`, `wss://` and `quic://` run across processes with a development
//! certificate authority.
//!
//! `serve ... --tls-dir DIR` creates `DIR/ca.pem`, `DIR/server.pem` and
//! `DIR/server.key` on first use (a throwaway CA and a certificate for
//! `localhost`, `127.0.0.1` and `::1`) and listens with them; `call ...
//! --tls-dir DIR` trusts `DIR/ca.pem`. Never use these files outside
//! development: the CA's key is not even kept.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use plexus::TlsConfig;
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

/// Writes a throwaway CA and a server certificate it signed into `dir`.
fn make_dev_pki(dir: &Path) -> io::Result<()> {
    let failed = |e: rcgen::Error| io::Error::other(e.to_string());
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
