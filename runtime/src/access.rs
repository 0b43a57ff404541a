//! Who may talk to an endpoint: allow-lists of certificate identities.
//!
//! Owns [`AllowList`] and its [`Rule`]s, which match a peer's verified
//! certificate ([`PeerIdentity`]) by issuer, subject fields (CN, OU, O),
//! subject alternative names (DNS names, URIs such as SPIFFE ids) or
//! fingerprint, with `*` patterns in the style of Interconnect's
//! allow-lists. The endpoint checks its list on every handshake, in both
//! directions, and again for every open connection when the list is
//! replaced. This module decides; it never touches a connection.

use std::fmt;

use crate::transport::PeerIdentity;

/// A `*` pattern over one field: `*` stands for any run of characters
/// (possibly none); everything else matches itself, case-sensitively.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern from text (`"alice"`, `"*.ops.acme.internal"`,
    /// `"spiffe://acme.org/ns/payments/*"`).
    pub fn new(pattern: impl Into<String>) -> Pattern {
        Pattern(pattern.into())
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = value.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            // No `*`: the whole value.
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One field of a certificate a [`Rule`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    CommonName,
    OrganizationalUnit,
    Organization,
    IssuerCommonName,
    IssuerOrganization,
    DnsName,
    Uri,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::CommonName => "CN",
            Field::OrganizationalUnit => "OU",
            Field::Organization => "O",
            Field::IssuerCommonName => "issuer CN",
            Field::IssuerOrganization => "issuer O",
            Field::DnsName => "DNS name",
            Field::Uri => "URI",
        }
    }

    fn values(self, id: &PeerIdentity) -> &[String] {
        match self {
            Field::CommonName => &id.subject().common_names,
            Field::OrganizationalUnit => &id.subject().organizational_units,
            Field::Organization => &id.subject().organizations,
            Field::IssuerCommonName => &id.issuer().common_names,
            Field::IssuerOrganization => &id.issuer().organizations,
            Field::DnsName => id.dns_names(),
            Field::Uri => id.uris(),
        }
    }
}

/// One way to be admitted: every condition of the rule must hold (a field
/// matches when any of its values matches the pattern). A rule with no
/// condition admits any verified certificate.
///
/// ```
/// use plexus::access::Rule;
/// let ops = Rule::new().organizational_unit("ops").issuer_common_name("Acme CA");
/// let payments = Rule::new().spiffe_id("spiffe://acme.org/ns/payments/*");
/// # let _ = (ops, payments);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    conditions: Vec<(Field, Pattern)>,
    fingerprint: Option<[u8; 32]>,
}

impl Rule {
    /// A rule admitting any verified certificate, until conditions are added.
    pub fn new() -> Rule {
        Rule::default()
    }

    fn with(mut self, field: Field, pattern: &str) -> Rule {
        self.conditions.push((field, Pattern::new(pattern)));
        self
    }

    /// The subject's common name (CN) matches `pattern`.
    pub fn common_name(self, pattern: &str) -> Rule {
        self.with(Field::CommonName, pattern)
    }

    /// An organizational unit (OU) of the subject matches `pattern`.
    pub fn organizational_unit(self, pattern: &str) -> Rule {
        self.with(Field::OrganizationalUnit, pattern)
    }

    /// An organization (O) of the subject matches `pattern`.
    pub fn organization(self, pattern: &str) -> Rule {
        self.with(Field::Organization, pattern)
    }

    /// The issuer's common name matches `pattern` (with several CAs behind
    /// one trust store, this admits only the certificates one of them issued).
    pub fn issuer_common_name(self, pattern: &str) -> Rule {
        self.with(Field::IssuerCommonName, pattern)
    }

    /// The issuer's organization matches `pattern`.
    pub fn issuer_organization(self, pattern: &str) -> Rule {
        self.with(Field::IssuerOrganization, pattern)
    }

    /// A DNS name among the subject alternative names matches `pattern`.
    pub fn dns_name(self, pattern: &str) -> Rule {
        self.with(Field::DnsName, pattern)
    }

    /// A URI among the subject alternative names matches `pattern`.
    pub fn uri(self, pattern: &str) -> Rule {
        self.with(Field::Uri, pattern)
    }

    /// A SPIFFE id (a `spiffe://` URI SAN) matches `pattern`.
    pub fn spiffe_id(self, pattern: &str) -> Rule {
        let pattern = if pattern.starts_with("spiffe://") {
            pattern.to_owned()
        } else {
            format!("spiffe://{pattern}")
        };
        self.with(Field::Uri, &pattern)
    }

    /// Exactly the certificate whose SHA-256 fingerprint is `hex` (64 hex
    /// digits, colons allowed); `None` if `hex` is not one.
    pub fn fingerprint(mut self, hex: &str) -> Option<Rule> {
        let digits: String = hex.chars().filter(|c| *c != ':').collect();
        if digits.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        self.fingerprint = Some(out);
        Some(self)
    }

    /// Whether `id` meets every condition.
    pub fn admits(&self, id: &PeerIdentity) -> bool {
        self.fingerprint.is_none_or(|f| &f == id.fingerprint())
            && self
                .conditions
                .iter()
                .all(|(field, p)| field.values(id).iter().any(|v| p.matches(v)))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.conditions.is_empty() && self.fingerprint.is_none() {
            return f.write_str("any verified certificate");
        }
        let mut first = true;
        for (field, pattern) in &self.conditions {
            if !first {
                f.write_str(" and ")?;
            }
            first = false;
            write!(f, "{} {pattern}", field.name())?;
        }
        if self.fingerprint.is_some() {
            if !first {
                f.write_str(" and ")?;
            }
            f.write_str("a pinned fingerprint")?;
        }
        Ok(())
    }
}

/// The certificates an endpoint admits: a peer is admitted when any rule
/// admits its verified certificate. A peer without one (a plain transport,
/// or a TLS listener that does not ask for client certificates) is never
/// admitted while a list is set. An empty list admits nobody.
///
/// Set it with `EndpointBuilder::allow` (or `NodeBuilder::allow`); replace
/// it at run time with `Endpoint::set_allow_list`, which also closes the
/// connections whose peer the new list no longer admits.
///
/// ```
/// use plexus::access::{AllowList, Rule};
/// let list = AllowList::new()
///     .allow(Rule::new().common_name("alice").issuer_common_name("Lab CA"))
///     .allow(Rule::new().organizational_unit("ops"));
/// assert_eq!(list.rules().len(), 2);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    rules: Vec<Rule>,
}

impl AllowList {
    /// A list admitting nobody, until rules are added.
    pub fn new() -> AllowList {
        AllowList::default()
    }

    /// Admits what `rule` admits, too.
    pub fn allow(mut self, rule: Rule) -> AllowList {
        self.rules.push(rule);
        self
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// `Ok` if the list admits `identity`; otherwise why not, in words for
    /// the refused peer and the logs (naming the certificate, never the
    /// rules).
    pub fn check(&self, identity: Option<&PeerIdentity>) -> Result<(), String> {
        let Some(id) = identity else {
            return Err(
                "this node admits only peers with a verified certificate, and none was shown \
                 (use tls://, wss:// or quic:// with a client certificate)"
                    .to_owned(),
            );
        };
        if self.rules.iter().any(|r| r.admits(id)) {
            Ok(())
        } else {
            Err(format!(
                "the certificate of {} is not on this node's allow-list",
                id.subject()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_with_stars() {
        let m = |p: &str, v: &str| Pattern::new(p).matches(v);
        assert!(m("alice", "alice"));
        assert!(!m("alice", "alice2"));
        assert!(!m("alice", "malice"));
        assert!(m("*", ""));
        assert!(m("*.acme.internal", "db.acme.internal"));
        assert!(!m("*.acme.internal", "acme.internal"));
        assert!(m(
            "spiffe://acme.org/ns/*/sa/*",
            "spiffe://acme.org/ns/pay/sa/api"
        ));
        assert!(!m(
            "spiffe://acme.org/ns/*/sa/*",
            "spiffe://other.org/ns/pay/sa/api"
        ));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxcyyb"));
        assert!(!m("ab*ba", "aba"), "the two parts may not overlap");
    }

    #[test]
    fn fingerprints_parse_from_hex_with_or_without_colons() {
        let hex = "00".repeat(32);
        assert!(Rule::new().fingerprint(&hex).is_some());
        let colons = vec!["ab"; 32].join(":");
        assert!(Rule::new().fingerprint(&colons).is_some());
        assert!(Rule::new().fingerprint("abc").is_none());
        assert!(Rule::new().fingerprint(&"zz".repeat(32)).is_none());
    }

    #[test]
    fn an_empty_list_admits_nobody_and_no_certificate_is_never_admitted() {
        assert!(AllowList::new().check(None).is_err());
        assert!(AllowList::new().allow(Rule::new()).check(None).is_err());
    }
}

/// What a [`Policy`] says of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The call runs.
    Allow,
    /// The call is refused with `PermissionDenied`.
    Deny,
}

/// Which calls a policy statement is about: an operation pattern, and who
/// makes them.
///
/// ```
/// use plexus::access::{Permission, Rule};
/// let alice_greets = Permission::service("greet.Greeter").peer(Rule::new().common_name("alice"));
/// let anyone_checks_health = Permission::service("plexus.Health");
/// let admin = Permission::op("shop.Admin/*").peer(Rule::new().organizational_unit("ops"));
/// # let _ = (alice_greets, anyone_checks_health, admin);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    op: Pattern,
    peer: Option<Rule>,
    session: Option<Pattern>,
}

impl Permission {
    /// Every operation whose id matches `pattern` (`package.Service/method`,
    /// with `*` patterns).
    pub fn op(pattern: &str) -> Permission {
        Permission {
            op: Pattern::new(pattern),
            peer: None,
            session: None,
        }
    }

    /// Every operation of the service `full_name` (`package.Service`).
    pub fn service(full_name: &str) -> Permission {
        Permission::op(&format!("{full_name}/*"))
    }

    /// Any operation at all.
    pub fn any() -> Permission {
        Permission::op("*")
    }

    /// Only for callers whose verified certificate `rule` admits (a caller
    /// without one never matches).
    pub fn peer(mut self, rule: Rule) -> Permission {
        self.peer = Some(rule);
        self
    }

    /// Only for calls made inside a session whose name matches `pattern`.
    pub fn session(mut self, pattern: &str) -> Permission {
        self.session = Some(Pattern::new(pattern));
        self
    }

    fn covers(&self, call: &crate::intercept::IncomingCall) -> bool {
        self.op.matches(call.op())
            && self.peer.as_ref().is_none_or(|rule| {
                call.peer()
                    .identity()
                    .is_some_and(|identity| rule.admits(identity))
            })
            && self
                .session
                .as_ref()
                .is_none_or(|p| call.session().is_some_and(|s| p.matches(s)))
    }
}

/// Authorization: which peer may call which operation, as allow and deny
/// statements read in order (the first that covers a call decides),
/// falling back to a default. A [`Policy::deny_by_default`] policy refuses
/// everything it does not allow.
///
/// A policy is an [`Interceptor`](crate::intercept::Interceptor): install it
/// with `EndpointBuilder::intercept` or `NodeBuilder::intercept`. A refused
/// call never runs; the caller gets
/// [`CallError::PermissionDenied`](crate::CallError::PermissionDenied) naming
/// the operation, never the statement that refused it.
///
/// ```
/// use plexus::access::{Permission, Policy, Rule};
/// let policy = Policy::deny_by_default()
///     .allow(Permission::service("plexus.Health"))
///     .deny(Permission::op("greet.Greeter/admin*"))
///     .allow(Permission::service("greet.Greeter").peer(Rule::new().issuer_common_name("Lab CA")));
/// # let _ = plexus::Endpoint::builder().intercept(policy);
/// ```
#[derive(Clone, Debug)]
pub struct Policy {
    default: Decision,
    statements: std::sync::Arc<Vec<(Decision, Permission)>>,
}

impl Policy {
    /// A policy that refuses every call no statement allows.
    pub fn deny_by_default() -> Policy {
        Policy {
            default: Decision::Deny,
            statements: std::sync::Arc::default(),
        }
    }

    /// A policy that lets every call through that no statement denies.
    pub fn allow_by_default() -> Policy {
        Policy {
            default: Decision::Allow,
            statements: std::sync::Arc::default(),
        }
    }

    /// Allows what `permission` covers (unless an earlier statement decided).
    pub fn allow(self, permission: Permission) -> Policy {
        self.with(Decision::Allow, permission)
    }

    /// Denies what `permission` covers (unless an earlier statement decided).
    pub fn deny(self, permission: Permission) -> Policy {
        self.with(Decision::Deny, permission)
    }

    fn with(mut self, decision: Decision, permission: Permission) -> Policy {
        std::sync::Arc::make_mut(&mut self.statements).push((decision, permission));
        self
    }

    /// What the policy says of `call`.
    pub fn decide(&self, call: &crate::intercept::IncomingCall) -> Decision {
        self.statements
            .iter()
            .find(|(_, p)| p.covers(call))
            .map_or(self.default, |(d, _)| *d)
    }
}

impl crate::intercept::Interceptor for Policy {
    fn intercept(
        &self,
        call: crate::intercept::IncomingCall,
    ) -> futures_util::future::BoxFuture<'static, Result<crate::intercept::Extensions, crate::Reject>>
    {
        let decision = self.decide(&call);
        Box::pin(async move {
            match decision {
                Decision::Allow => Ok(crate::intercept::Extensions::default()),
                Decision::Deny => Err(crate::Reject::permission_denied(format!(
                    "{} is not permitted to {}",
                    call.op(),
                    match call.peer().identity() {
                        Some(id) => id.subject().to_string(),
                        None => "a caller without a certificate".to_owned(),
                    }
                ))),
            }
        })
    }
}
