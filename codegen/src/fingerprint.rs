//! The schema fingerprint: a stable 64-bit hash of a contract's canonical text.
//!
//! Two peers whose fingerprints match agree on every op id, call kind, role
//! and message schema name of a service. The hash is FNV-1a over a text form
//! that depends only on the model, never on the compiler, the platform or
//! `std`'s randomly seeded hashers, so it is the same in every build.

use quote::ToTokens;

use crate::model::ServiceDef;

/// The canonical text of a contract, one line per fact, that the fingerprint hashes.
///
/// It is also useful in a test or a log to see why two fingerprints differ.
pub fn canonical_text(service: &ServiceDef) -> String {
    let mut text = format!(
        "plexus-contract 1\nservice {} v{}\nroles {}\ncodec {}\n",
        service.full_name(),
        service.version,
        service.roles.join(","),
        squeeze(&service.codec.to_token_stream().to_string()),
    );
    for method in &service.methods {
        text.push_str(&format!(
            "method {} {} {} -> {} role={} idempotent={} fallible_items={}\n",
            method.schema_name,
            method.kind.as_str(),
            squeeze(&method.request_schema),
            squeeze(&method.reply_schema),
            method.role.as_deref().unwrap_or("*"),
            method.idempotent,
            method.fallible_items,
        ));
    }
    text
}

/// The 64-bit fingerprint of a contract: FNV-1a of [`canonical_text`].
pub fn fingerprint(service: &ServiceDef) -> u64 {
    fnv1a(canonical_text(service).as_bytes())
}

/// FNV-1a, 64-bit: tiny, stable across versions and platforms, and good
/// enough to tell contracts apart (this is not a security boundary).
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// Drops whitespace so `Vec < u8 >` and `Vec<u8>` hash alike.
pub(crate) fn squeeze(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
