//! Who is on the other end of a secured transport: the peer's verified
//! certificate, read into the fields access rules look at.
//!
//! Owns [`PeerIdentity`]. A transport fills one in only after its TLS
//! handshake verified the peer's chain (`tls://`, `wss://`, `quic://`); a
//! plain transport, or a TLS server that does not ask clients for
//! certificates, has none. This module reads certificates and decides
//! nothing: allow-lists and policies live above it.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// The distinguished-name fields access rules match on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DistinguishedName {
    /// Common names (CN), in the order the certificate lists them.
    pub common_names: Vec<String>,
    /// Organizational units (OU).
    pub organizational_units: Vec<String>,
    /// Organizations (O).
    pub organizations: Vec<String>,
}

impl fmt::Display for DistinguishedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = self
            .common_names
            .iter()
            .map(|v| ("CN", v))
            .chain(self.organizational_units.iter().map(|v| ("OU", v)))
            .chain(self.organizations.iter().map(|v| ("O", v)));
        let mut first = true;
        for (k, v) in parts {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// A peer's verified certificate: its subject, issuer and subject
/// alternative names, its validity and a SHA-256 fingerprint.
///
/// Cloning is cheap (the fields are shared).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerIdentity(Arc<Fields>);

#[derive(PartialEq, Eq)]
struct Fields {
    subject: DistinguishedName,
    issuer: DistinguishedName,
    dns_names: Vec<String>,
    uris: Vec<String>,
    ip_addresses: Vec<IpAddr>,
    not_before: SystemTime,
    not_after: SystemTime,
    fingerprint: [u8; 32],
}

impl PeerIdentity {
    /// The subject of the peer's (leaf) certificate.
    pub fn subject(&self) -> &DistinguishedName {
        &self.0.subject
    }

    /// The subject's first common name, if it has one.
    pub fn common_name(&self) -> Option<&str> {
        self.0.subject.common_names.first().map(String::as_str)
    }

    /// Who issued the peer's certificate (the issuer field of the leaf).
    pub fn issuer(&self) -> &DistinguishedName {
        &self.0.issuer
    }

    /// DNS names among the subject alternative names.
    pub fn dns_names(&self) -> &[String] {
        &self.0.dns_names
    }

    /// URIs among the subject alternative names (SPIFFE ids among them).
    pub fn uris(&self) -> &[String] {
        &self.0.uris
    }

    /// The first `spiffe://` URI, the peer's SPIFFE id, if it has one.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.0
            .uris
            .iter()
            .map(String::as_str)
            .find(|u| u.starts_with("spiffe://"))
    }

    /// IP addresses among the subject alternative names.
    pub fn ip_addresses(&self) -> &[IpAddr] {
        &self.0.ip_addresses
    }

    /// When the certificate became valid.
    pub fn not_before(&self) -> SystemTime {
        self.0.not_before
    }

    /// When the certificate stops being valid.
    pub fn not_after(&self) -> SystemTime {
        self.0.not_after
    }

    /// SHA-256 of the certificate's DER bytes.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.0.fingerprint
    }

    /// The fingerprint as 64 hex digits.
    pub fn fingerprint_hex(&self) -> String {
        self.0
            .fingerprint
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Reads the fields of a DER certificate the TLS handshake verified.
    /// `None` if it does not parse (rustls verified it, so it does).
    #[cfg(feature = "tls")]
    pub(crate) fn from_der(der: &[u8]) -> Option<PeerIdentity> {
        use sha2::Digest;
        use x509_parser::extensions::GeneralName;
        use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

        fn names(name: &X509Name<'_>) -> DistinguishedName {
            let strings =
                |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
                    it.filter_map(|a| a.as_str().ok().map(str::to_owned))
                        .collect::<Vec<_>>()
                };
            DistinguishedName {
                common_names: strings(&mut name.iter_common_name()),
                organizational_units: strings(&mut name.iter_organizational_unit()),
                organizations: strings(&mut name.iter_organization()),
            }
        }

        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut dns_names = Vec::new();
        let mut uris = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => {
                            let octets: [u8; 4] = (*bytes).try_into().ok()?;
                            ip_addresses.push(IpAddr::from(octets));
                        }
                        16 => {
                            let octets: [u8; 16] = (*bytes).try_into().ok()?;
                            ip_addresses.push(IpAddr::from(octets));
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
            } else {
                SystemTime::UNIX_EPOCH
            }
        };
        Some(PeerIdentity(Arc::new(Fields {
            subject: names(cert.subject()),
            issuer: names(cert.issuer()),
            dns_names,
            uris,
            ip_addresses,
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
            fingerprint: sha2::Sha256::digest(der).into(),
        })))
    }
}

impl fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("subject", &self.0.subject.to_string())
            .field("issuer", &self.0.issuer.to_string())
            .field("dns_names", &self.0.dns_names)
            .field("uris", &self.0.uris)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.subject)?;
        if let Some(id) = self.spiffe_id() {
            write!(f, " ({id})")?;
        }
        write!(f, ", issued by {}", self.0.issuer)
    }
}
