//! Targets: a URL to dial, or a node to find through discovery first.
//!
//! Owns turning `<url|node>` and the TLS flags into a live [`Connection`].
//! A target with `://` is a URL; anything else names a node (its name, or a
//! prefix of its id) that discovery must find within `--wait`.

use std::time::Duration;

use plexus::{transport::TlsConfig, Connection, Endpoint};

use crate::error::{did_you_mean, nearest, CliError};
use crate::ls::{self, NodeSighting};
use crate::{Global, TlsArgs};

/// A connection to a target, with the label errors name it by.
pub struct Connected {
    /// The connection.
    pub conn: Connection,
    /// `tcp://…`, or `alice (tcp://…)` for a node found by name.
    pub label: String,
}

/// The client endpoint every command dials from.
pub fn endpoint(tls: &TlsArgs) -> Result<Endpoint, CliError> {
    let mut builder = Endpoint::builder().without_reflection().without_health();
    if let Some(tls) = tls_config(tls)? {
        builder = builder.tls(tls);
    }
    Ok(builder.build())
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path)
        .map_err(|e| CliError::usage(format!("cannot read the {what} {}: {e}", path.display())))
}

fn tls_config(args: &TlsArgs) -> Result<Option<TlsConfig>, CliError> {
    let Some(cacert) = &args.cacert else {
        if args.cert.is_some() || args.server_name.is_some() {
            return Err(CliError::usage(
                "--cert and --server-name need --cacert, the CA that signed the server's certificate",
            ));
        }
        return Ok(None);
    };
    let bad = |e: plexus::transport::TlsConfigError| CliError::usage(format!("TLS: {e}"));
    let mut tls = TlsConfig::client(&read(cacert, "CA certificate")?).map_err(bad)?;
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls = tls
            .with_client_cert(&read(cert, "certificate")?, &read(key, "private key")?)
            .map_err(bad)?;
    }
    if let Some(name) = &args.server_name {
        tls = tls.server_name(name).map_err(bad)?;
    }
    Ok(Some(tls))
}

/// Connects to `target`.
pub async fn connect(global: &Global, target: &str) -> Result<Connected, CliError> {
    let endpoint = endpoint(&global.tls)?;
    if target.contains("://") {
        let conn = dial(&endpoint, target, global.connect_timeout).await?;
        return Ok(Connected {
            conn,
            label: target.to_owned(),
        });
    }
    let node = find_node(global, target).await?;
    let mut last = None;
    for url in &node.endpoints {
        match dial(&endpoint, url, global.connect_timeout).await {
            Ok(conn) => {
                return Ok(Connected {
                    conn,
                    label: format!("{} ({url})", node.name),
                })
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        CliError::Unreachable(format!(
            "node `{}` announces no address to dial\n  try: `plexus ls` to see what it announces",
            node.name
        ))
    }))
}

/// Dials `url` within `limit`.
pub async fn dial(endpoint: &Endpoint, url: &str, limit: Duration) -> Result<Connection, CliError> {
    match tokio::time::timeout(limit, endpoint.connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(CliError::connect(url, &e)),
        Err(_) => Err(CliError::Unreachable(format!(
            "cannot connect to {url}: no answer within {}\n  try: a longer --connect-timeout, or check the address",
            humantime::format_duration(limit)
        ))),
    }
}

/// The node named `name` (or whose id starts with it).
async fn find_node(global: &Global, name: &str) -> Result<NodeSighting, CliError> {
    let nodes = ls::sightings(global, Some(name)).await?;
    let lower = name.to_lowercase();
    let matching: Vec<&NodeSighting> = nodes
        .iter()
        .filter(|n| n.name == name || n.id.starts_with(&lower))
        .collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => {
            let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
            Err(CliError::Unreachable(format!(
                "no node named `{name}` found by {} within {}{}\n  try: `plexus ls` to list the nodes, or give a URL",
                ls::source_name(&global.discovery),
                humantime::format_duration(global.discovery.wait),
                did_you_mean(&nearest(name, names)),
            )))
        }
        many => Err(CliError::usage(format!(
            "`{name}` matches {} nodes: {}\n  try: a longer id prefix, or a URL",
            many.len(),
            many.iter()
                .map(|n| format!("{} ({})", n.name, &n.id[..8.min(n.id.len())]))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
