//! What two nodes tell each other once connected, and the pure rules that
//! decide which of their services link up.
//!
//! Owns the owned, encodable form of a node's services ([`NodeDescription`],
//! [`ServiceInfo`]) exchanged over the built-in `plexus.Node/describe`
//! operation, and the matching rule ([`services_link`]). Nothing here touches
//! a connection or a clock, so the rules are unit-tested directly.

use serde::{Deserialize, Serialize};

use crate::descriptor::ServiceDescriptor;
use crate::NodeId;

/// The operation id of the built-in descriptor exchange every node serves.
pub const DESCRIBE_OP: &str = "plexus.Node/describe";

/// Whether a service links peers only inside a shared group, or always.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Linked only with peers in the same group (the default). A node in no
    /// group links none of its group-scoped services. On the wire (the
    /// describe exchange) it keeps its first name, `Session`.
    #[default]
    #[serde(rename = "Session")]
    Group,
    /// Linked with every peer that has the service, whatever the groups.
    Global,
}

/// One rule of a role-based service: peers in role `from` connect to peers in
/// role `to` (e.g. `subscriber` → `publisher`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoleRule {
    /// The role that connects.
    pub from: String,
    /// The role it connects to.
    pub to: String,
}

/// One operation of a described service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodInfo {
    /// Name as the schema spells it.
    pub name: String,
    /// Operation id, `package.Service/name`.
    pub op: String,
    /// Call kind (`unary`, `oneway`, `client_stream`, `server_stream`, `bidi`).
    pub kind: String,
    /// The role whose peers serve it, if only one does.
    pub role: Option<String>,
    /// Whether it is safe to run twice.
    pub idempotent: bool,
}

/// One service a node takes part in, as its peers learn it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// `package.Service`.
    pub full_name: String,
    /// Contract version.
    pub version: u32,
    /// The contract's fingerprint; services link only when fingerprints agree.
    pub fingerprint: u64,
    /// Payload codec name.
    pub codec: String,
    /// The roles the contract declares (empty: symmetric).
    pub roles: Vec<String>,
    /// The role this node takes, if any.
    pub role: Option<String>,
    /// Group-scoped or global, on this node.
    pub scope: Scope,
    /// Whether this node serves the service (`false`: it only calls it).
    pub serves: bool,
    /// The node's connection rules for this service's roles.
    pub rules: Vec<RoleRule>,
    /// The operations.
    pub methods: Vec<MethodInfo>,
}

impl ServiceInfo {
    /// The description of `descriptor` as this node takes part in it.
    pub(crate) fn new(
        descriptor: &'static ServiceDescriptor,
        role: Option<String>,
        scope: Scope,
        serves: bool,
    ) -> Self {
        ServiceInfo {
            full_name: descriptor.full_name.to_owned(),
            version: descriptor.version,
            fingerprint: descriptor.fingerprint,
            codec: descriptor.codec.to_owned(),
            roles: descriptor.roles.iter().map(|r| (*r).to_owned()).collect(),
            role,
            scope,
            serves,
            rules: Vec::new(),
            methods: descriptor
                .methods
                .iter()
                .map(|m| MethodInfo {
                    name: m.name.to_owned(),
                    op: m.op.to_owned(),
                    kind: m.kind.as_str().to_owned(),
                    role: m.role.map(str::to_owned),
                    idempotent: m.idempotent,
                })
                .collect(),
        }
    }
}

/// What a node tells a peer about itself over `plexus.Node/describe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescription {
    /// The node id as 32 hex digits ([`NodeId`]'s `Display`).
    pub node_id: String,
    /// The node's name.
    pub name: String,
    /// The group it is in right now. On the wire (MessagePack, by field
    /// name) it keeps its first name, `session`.
    #[serde(rename = "session")]
    pub group: Option<String>,
    /// Its process incarnation (as in its announcements).
    pub incarnation: u64,
    /// The services it serves or calls.
    pub services: Vec<ServiceInfo>,
}

impl NodeDescription {
    /// The node id, if the text is a valid one.
    pub fn id(&self) -> Option<NodeId> {
        if self.node_id.len() != 32 {
            return None;
        }
        u128::from_str_radix(&self.node_id, 16).ok().map(NodeId)
    }

    /// The service named `full_name`, if the node takes part in it.
    pub fn service(&self, full_name: &str) -> Option<&ServiceInfo> {
        self.services.iter().find(|s| s.full_name == full_name)
    }
}

/// Whether service `a` of one node (in `a_group`) links with service `b` of
/// another (in `b_group`). Symmetric in its two sides:
///
/// - same contract: equal full names and fingerprints;
/// - scope: global only if both sides say global; otherwise both must be in
///   the same group;
/// - roles: if either side declares rules for the service, the pair links
///   only when some rule (of either side) connects one's role to the other's,
///   in either direction; without rules every pair links.
pub fn services_link(
    a: &ServiceInfo,
    a_group: Option<&str>,
    b: &ServiceInfo,
    b_group: Option<&str>,
) -> bool {
    if a.full_name != b.full_name || a.fingerprint != b.fingerprint {
        return false;
    }
    let global = a.scope == Scope::Global && b.scope == Scope::Global;
    if !global && (a_group.is_none() || a_group != b_group) {
        return false;
    }
    let mut rules = a.rules.iter().chain(&b.rules).peekable();
    if rules.peek().is_none() {
        return true;
    }
    let (Some(ra), Some(rb)) = (a.role.as_deref(), b.role.as_deref()) else {
        return false;
    };
    rules.any(|r| (r.from == ra && r.to == rb) || (r.from == rb && r.to == ra))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(role: Option<&str>, scope: Scope, rules: &[(&str, &str)]) -> ServiceInfo {
        ServiceInfo {
            full_name: "demo.Feed".into(),
            version: 1,
            fingerprint: 7,
            codec: "msgpack".into(),
            roles: vec!["subscriber".into(), "publisher".into()],
            role: role.map(str::to_owned),
            scope,
            serves: true,
            rules: rules
                .iter()
                .map(|(f, t)| RoleRule {
                    from: (*f).into(),
                    to: (*t).into(),
                })
                .collect(),
            methods: Vec::new(),
        }
    }

    const SUB_TO_PUB: &[(&str, &str)] = &[("subscriber", "publisher")];

    #[test]
    fn group_scoped_services_link_only_inside_one_group() {
        let a = service(None, Scope::Group, &[]);
        assert!(services_link(&a, Some("lab"), &a, Some("lab")));
        assert!(!services_link(&a, Some("lab"), &a, Some("other")));
        assert!(!services_link(&a, None, &a, None));
    }

    #[test]
    fn global_scope_needs_both_sides() {
        let g = service(None, Scope::Global, &[]);
        let s = service(None, Scope::Group, &[]);
        assert!(services_link(&g, None, &g, Some("x")));
        assert!(!services_link(&g, None, &s, Some("x")));
        assert!(services_link(&g, Some("x"), &s, Some("x")));
    }

    #[test]
    fn role_rules_link_only_the_allowed_pairs_in_either_direction() {
        let sub = service(Some("subscriber"), Scope::Group, SUB_TO_PUB);
        let publ = service(Some("publisher"), Scope::Group, SUB_TO_PUB);
        let s = Some("lab");
        assert!(services_link(&sub, s, &publ, s));
        assert!(services_link(&publ, s, &sub, s));
        assert!(!services_link(&sub, s, &sub, s));
        assert!(!services_link(&publ, s, &publ, s));
        let roleless = service(None, Scope::Group, &[]);
        assert!(!services_link(&roleless, s, &publ, s));
    }

    #[test]
    fn different_contracts_never_link() {
        let a = service(None, Scope::Global, &[]);
        let mut b = a.clone();
        b.fingerprint = 8;
        assert!(!services_link(&a, None, &b, None));
        let mut c = a.clone();
        c.full_name = "demo.Other".into();
        assert!(!services_link(&a, None, &c, None));
    }

    #[test]
    fn node_ids_round_trip_through_text() {
        let id = NodeId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let d = NodeDescription {
            node_id: id.to_string(),
            name: "n".into(),
            group: None,
            incarnation: 1,
            services: Vec::new(),
        };
        assert_eq!(d.id(), Some(id));
        let bad = NodeDescription {
            node_id: "xyz".into(),
            ..d
        };
        assert_eq!(bad.id(), None);
    }

    /// The describe exchange as protocol v2 names it: the group was first
    /// called the session, and the bytes keep that name.
    #[derive(Serialize, Deserialize)]
    struct V2Description {
        node_id: String,
        name: String,
        session: Option<String>,
        incarnation: u64,
        services: Vec<V2Service>,
    }

    #[derive(Serialize, Deserialize)]
    struct V2Service {
        full_name: String,
        version: u32,
        fingerprint: u64,
        codec: String,
        roles: Vec<String>,
        role: Option<String>,
        scope: V2Scope,
        serves: bool,
        rules: Vec<RoleRule>,
        methods: Vec<MethodInfo>,
    }

    #[derive(Serialize, Deserialize)]
    enum V2Scope {
        Session,
    }

    #[test]
    fn a_description_keeps_its_v2_bytes_after_the_group_rename() {
        use crate::codec::{Codec, MsgPack};
        let ours = NodeDescription {
            node_id: NodeId(7).to_string(),
            name: "ada".into(),
            group: Some("lab".into()),
            incarnation: 3,
            services: vec![service(Some("subscriber"), Scope::Group, SUB_TO_PUB)],
        };
        let v2 = V2Description {
            node_id: NodeId(7).to_string(),
            name: "ada".into(),
            session: Some("lab".into()),
            incarnation: 3,
            services: vec![V2Service {
                full_name: "demo.Feed".into(),
                version: 1,
                fingerprint: 7,
                codec: "msgpack".into(),
                roles: vec!["subscriber".into(), "publisher".into()],
                role: Some("subscriber".into()),
                scope: V2Scope::Session,
                serves: true,
                rules: ours.services[0].rules.clone(),
                methods: Vec::new(),
            }],
        };
        let bytes = <MsgPack as Codec<NodeDescription>>::encode(&ours).expect("encodes");
        assert_eq!(
            bytes,
            <MsgPack as Codec<V2Description>>::encode(&v2).expect("encodes")
        );
        let back: NodeDescription = MsgPack::decode(bytes).expect("decodes");
        assert_eq!(back, ours);
    }
}
