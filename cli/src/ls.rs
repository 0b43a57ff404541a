//! `plexus ls`: the nodes discovery can see, with what each serves.
//!
//! Owns listening to a discovery source without joining it: the beacon is
//! observed (this process announces nothing), etcd registrations are read
//! (nothing is written), static URLs are dialed. Each node found is then
//! asked for its reflection for roles and service details.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use plexus::discovery::{Beacon, DiscoveryEvent, DiscoveryEvents, PeerRecord};
use plexus::reflection::{self, Description};
use plexus::wire::key::SessionKey;
use plexus::CallOptions;
use serde::Serialize;

use crate::error::CliError;
use crate::{print_line, target, DiscoveryArgs, Global};

/// `plexus ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Keep listening and print each change (discovered, updated, suspect,
    /// lost, left, returned) as it happens.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: stop after this long (default: until interrupted).
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Do not connect to each node for its roles and service details.
    #[arg(long)]
    pub no_describe: bool,
}

/// A node as discovery reported it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeSighting {
    /// Node id, 32 hex digits.
    pub id: String,
    /// Name.
    pub name: String,
    /// Group.
    pub group: Option<String>,
    /// Where it listens.
    pub endpoints: Vec<String>,
    /// Service names it announces.
    pub services: Vec<String>,
    /// `alive`, `suspect`, `lost`, `left` (beacon and etcd); `reachable` or
    /// `unreachable` (static list).
    pub state: String,
}

impl NodeSighting {
    fn from_record(record: &PeerRecord, state: &str) -> Self {
        NodeSighting {
            id: record.node_id.to_string(),
            name: record.name.clone(),
            group: record.group.clone(),
            endpoints: record.endpoints.clone(),
            services: record.services.clone(),
            state: state.to_owned(),
        }
    }
}

/// Names the discovery source for messages.
pub fn source_name(args: &DiscoveryArgs) -> String {
    if !args.static_urls.is_empty() {
        "the static list".into()
    } else if !args.etcd.is_empty() {
        format!("etcd at {}", args.etcd.join(","))
    } else {
        format!(
            "the beacon on {}:{} (interface {})",
            args.beacon_multicast_group, args.beacon_port, args.beacon_interface
        )
    }
}

fn beacon(args: &DiscoveryArgs) -> Beacon {
    let mut beacon = Beacon::loopback()
        .multicast_group(args.beacon_multicast_group)
        .port(args.beacon_port)
        .interface(args.beacon_interface);
    if let Some(key) = &args.beacon_key {
        beacon = beacon.key(SessionKey::new(key.as_bytes()));
    }
    beacon
}

fn observe(beacon: &Beacon) -> Result<DiscoveryEvents, CliError> {
    beacon
        .observe()
        .map_err(|e| CliError::Unreachable(format!("cannot listen for beacons: {e}")))
}

/// The nodes the configured source reports within `--wait`. With `want`,
/// returns as soon as a node by that name (or id prefix) is heard.
pub async fn sightings(global: &Global, want: Option<&str>) -> Result<Vec<NodeSighting>, CliError> {
    let args = &global.discovery;
    if !args.static_urls.is_empty() {
        return Ok(static_sightings(global).await);
    }
    if !args.etcd.is_empty() {
        return etcd_sightings(args).await;
    }
    let beacon = beacon(args);
    let mut events = observe(&beacon)?;
    let mut nodes: BTreeMap<String, NodeSighting> = BTreeMap::new();
    let wanted =
        |n: &NodeSighting| want.is_some_and(|w| n.name == w || n.id.starts_with(&w.to_lowercase()));
    let deadline = tokio::time::Instant::now() + args.wait;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        if let Some(found) = apply(&mut nodes, &event) {
            if wanted(&found) {
                break;
            }
        }
    }
    Ok(nodes.into_values().collect())
}

/// Applies one beacon event to the table; returns the node it touched.
fn apply(
    nodes: &mut BTreeMap<String, NodeSighting>,
    event: &DiscoveryEvent,
) -> Option<NodeSighting> {
    let (id, state, record) = describe_event(event)?;
    match record {
        Some(record) => {
            let sighting = NodeSighting::from_record(record, state);
            nodes.insert(id.clone(), sighting);
        }
        None => {
            if let Some(node) = nodes.get_mut(&id) {
                node.state = state.to_owned();
            }
        }
    }
    nodes.get(&id).cloned()
}

/// The node id, the state an event puts it in, and its record if it carries one.
fn describe_event(event: &DiscoveryEvent) -> Option<(String, &'static str, Option<&PeerRecord>)> {
    Some(match event {
        DiscoveryEvent::Discovered(r) => (r.node_id.to_string(), "alive", Some(r)),
        DiscoveryEvent::Updated(r) => (r.node_id.to_string(), "alive", Some(r)),
        DiscoveryEvent::Returned(r) => (r.node_id.to_string(), "alive", Some(r)),
        DiscoveryEvent::Suspect(id) => (id.to_string(), "suspect", None),
        DiscoveryEvent::Recovered(id) => (id.to_string(), "alive", None),
        DiscoveryEvent::Lost(id) => (id.to_string(), "lost", None),
        DiscoveryEvent::Left(id) => (id.to_string(), "left", None),
        _ => return None,
    })
}

fn event_name(event: &DiscoveryEvent) -> &'static str {
    match event {
        DiscoveryEvent::Discovered(_) => "discovered",
        DiscoveryEvent::Updated(_) => "updated",
        DiscoveryEvent::Returned(_) => "returned",
        DiscoveryEvent::Suspect(_) => "suspect",
        DiscoveryEvent::Recovered(_) => "recovered",
        DiscoveryEvent::Lost(_) => "lost",
        DiscoveryEvent::Left(_) => "left",
        _ => "endpoint",
    }
}

async fn static_sightings(global: &Global) -> Vec<NodeSighting> {
    let endpoint = match target::endpoint(&global.tls) {
        Ok(e) => e,
        Err(_) => return Vec::new(),
    };
    let probes = global.discovery.static_urls.iter().map(|url| {
        let endpoint = endpoint.clone();
        async move {
            let unreachable = NodeSighting {
                id: String::new(),
                name: url.clone(),
                group: None,
                endpoints: vec![url.clone()],
                services: Vec::new(),
                state: "unreachable".into(),
            };
            let Ok(conn) = target::dial(&endpoint, url, global.connect_timeout).await else {
                return unreachable;
            };
            let opts = CallOptions::new().timeout(global.connect_timeout);
            let described = reflection::describe(&conn, None, opts).await;
            conn.close().await;
            let Ok(description) = described else {
                return NodeSighting {
                    id: conn.peer().node_id().to_string(),
                    state: "reachable".into(),
                    ..unreachable
                };
            };
            let node = description.node.clone();
            NodeSighting {
                id: description.node_id.clone(),
                name: node
                    .as_ref()
                    .map_or_else(|| url.clone(), |n| n.name.clone()),
                group: node.as_ref().and_then(|n| n.group.clone()),
                endpoints: node
                    .as_ref()
                    .map_or_else(|| vec![url.clone()], |n| n.endpoints.clone()),
                services: description
                    .services
                    .iter()
                    .map(|s| s.full_name.clone())
                    .collect(),
                state: "reachable".into(),
            }
        }
    });
    futures_util::future::join_all(probes).await
}

#[cfg(feature = "etcd")]
async fn etcd_sightings(args: &DiscoveryArgs) -> Result<Vec<NodeSighting>, CliError> {
    use plexus::discovery::Announcement;
    let endpoints = args.etcd.join(",");
    let failed = |what: &str, e: etcd_client::Error| {
        CliError::Unreachable(format!(
            "etcd at {endpoints}: {what}: {e}\n  try: check the --etcd endpoints"
        ))
    };
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(args.wait)
        .with_timeout(args.wait);
    let mut client = etcd_client::Client::connect(&args.etcd, Some(options))
        .await
        .map_err(|e| failed("connecting", e))?;
    let prefix = format!("{}/", args.etcd_prefix.trim_end_matches('/'));
    let listed = client
        .get(
            prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| failed("listing the registrations", e))?;
    Ok(listed
        .kvs()
        .iter()
        .filter_map(|kv| Announcement::decode(kv.value()).ok())
        .map(|a| {
            let state = if a.leaving { "left" } else { "alive" };
            NodeSighting::from_record(&PeerRecord::from_announcement(&a), state)
        })
        .collect())
}

#[cfg(not(feature = "etcd"))]
async fn etcd_sightings(_args: &DiscoveryArgs) -> Result<Vec<NodeSighting>, CliError> {
    Err(CliError::usage(
        "this plexus was built without etcd support\n  try: cargo install --path cli --features etcd",
    ))
}

/// One row of `plexus ls`.
#[derive(Debug, Serialize)]
struct NodeRow {
    #[serde(flatten)]
    sighting: NodeSighting,
    /// Per service: its role on this node, and whether the node serves it.
    roles: Vec<ServiceRole>,
    /// Why the node could not be described, if it could not.
    describe_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct ServiceRole {
    service: String,
    role: Option<String>,
    serves: bool,
}

/// `plexus ls`.
pub async fn run(global: &Global, args: LsArgs) -> Result<(), CliError> {
    if args.watch {
        return watch(global, &args).await;
    }
    let nodes = sightings(global, None).await?;
    let rows = describe_all(global, nodes, !args.no_describe).await;
    if global.json {
        print_line(&serde_json::to_string_pretty(&rows).unwrap_or_default());
        return Ok(());
    }
    if rows.is_empty() {
        eprintln!(
            "no nodes found by {} within {}",
            source_name(&global.discovery),
            humantime::format_duration(global.discovery.wait)
        );
        return Ok(());
    }
    let mut table = vec![[
        "NAME".to_owned(),
        "ID".to_owned(),
        "GROUP".to_owned(),
        "STATE".to_owned(),
        "ADDRESSES".to_owned(),
        "SERVICES".to_owned(),
    ]];
    for row in &rows {
        let s = &row.sighting;
        let services = if row.roles.is_empty() {
            s.services.join(", ")
        } else {
            row.roles
                .iter()
                .map(|r| {
                    let mut text = r.service.clone();
                    match (&r.role, r.serves) {
                        (Some(role), _) => text.push_str(&format!(" ({role})")),
                        (None, false) => text.push_str(" (uses)"),
                        (None, true) => {}
                    }
                    text
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        table.push([
            s.name.clone(),
            s.id.chars().take(8).collect(),
            s.group.clone().unwrap_or_else(|| "-".into()),
            s.state.clone(),
            s.endpoints.join(" "),
            services,
        ]);
    }
    print_table(&table);
    Ok(())
}

async fn describe_all(global: &Global, nodes: Vec<NodeSighting>, describe: bool) -> Vec<NodeRow> {
    let rows = nodes.into_iter().map(|sighting| async move {
        if !describe || sighting.endpoints.is_empty() || sighting.state == "left" {
            return NodeRow {
                sighting,
                roles: Vec::new(),
                describe_error: None,
            };
        }
        match describe_node(global, &sighting).await {
            Ok(description) => NodeRow {
                roles: roles_of(&description),
                sighting,
                describe_error: None,
            },
            Err(e) => NodeRow {
                sighting,
                roles: Vec::new(),
                describe_error: Some(e.to_string()),
            },
        }
    });
    futures_util::future::join_all(rows).await
}

async fn describe_node(global: &Global, node: &NodeSighting) -> Result<Description, CliError> {
    let endpoint = target::endpoint(&global.tls)?;
    let mut last = None;
    for url in &node.endpoints {
        match target::dial(&endpoint, url, global.connect_timeout).await {
            Ok(conn) => {
                let opts = CallOptions::new().timeout(global.connect_timeout);
                let described = reflection::describe(&conn, None, opts).await;
                conn.close().await;
                return described.map_err(|e| CliError::call(reflection::DESCRIBE_OP, e, None));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| CliError::Unreachable("no address".into())))
}

fn roles_of(description: &Description) -> Vec<ServiceRole> {
    match &description.node {
        Some(node) => node
            .participation
            .iter()
            .map(|p| ServiceRole {
                service: p.service.clone(),
                role: p.role.clone(),
                serves: p.serves,
            })
            .collect(),
        None => description
            .services
            .iter()
            .map(|s| ServiceRole {
                service: s.full_name.clone(),
                role: None,
                serves: true,
            })
            .collect(),
    }
}

/// Prints rows as aligned columns (the last one unpadded).
pub fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        print_line(line.trim_end());
    }
}

async fn watch(global: &Global, args: &LsArgs) -> Result<(), CliError> {
    if !global.discovery.static_urls.is_empty() || !global.discovery.etcd.is_empty() {
        return Err(CliError::usage(
            "--watch follows beacons; with --static or --etcd, run `plexus ls` again instead",
        ));
    }
    let beacon = beacon(&global.discovery);
    let mut events = observe(&beacon)?;
    let mut nodes = BTreeMap::new();
    let stop = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            _ = &mut stop => return Ok(()),
            event = events.recv() => match event {
                Some(event) => event,
                None => return Ok(()),
            },
        };
        let Some(node) = apply(&mut nodes, &event) else {
            continue;
        };
        let name = event_name(&event);
        if global.json {
            let mut value = serde_json::to_value(&node).unwrap_or_default();
            if let Some(map) = value.as_object_mut() {
                map.insert("event".into(), name.into());
            }
            print_line(&value.to_string());
        } else {
            print_line(&format!(
                "{name:<10} {} {} group={} {} [{}]",
                node.name,
                node.id.chars().take(8).collect::<String>(),
                node.group.as_deref().unwrap_or("-"),
                node.endpoints.join(" "),
                node.services.join(", ")
            ));
        }
    }
}
