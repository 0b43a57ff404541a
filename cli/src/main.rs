//! `plexus`: discover, describe, call, probe and benchmark any Plexus service
//! with JSON, over every transport.
//!
//! ```text
//! plexus ls                                             # nodes this host can hear
//! plexus describe tcp://127.0.0.1:4000                  # what a server serves
//! plexus call tcp://127.0.0.1:4000 greet.Greeter/hello '"ada"'
//! plexus health alice                                   # exit 0 only when SERVING
//! ```
//!
//! Every command has `--help`; exit codes are in [`error`] and `docs/CLI.md`.

mod bench;
mod call;
mod describe;
mod error;
mod health;
mod json;
mod ls;
mod payload;
mod publish;
mod sub;
mod target;

use std::io::Write;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::CliError;

/// Discover, describe, call, probe and benchmark Plexus services with JSON.
///
/// Targets are URLs (`tcp://`, `tls://`, `unix://`, `inproc://`) or node names
/// (or id prefixes) found through discovery: the loopback beacon unless
/// `--static` or `--etcd` say otherwise.
///
/// Exit codes: 0 ok; 1 bad input (arguments, JSON, unknown operation);
/// 2 target unreachable (no such node, connection, TLS, refused handshake);
/// 3 call failed (timeout, connection lost); 4 not serving (`health`);
/// 5 rejected by the handler.
#[derive(Debug, Parser)]
#[command(name = "plexus", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Print machine-readable JSON instead of tables and text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Deadline of each call (e.g. `500ms`, `5s`); streams default to none.
    #[arg(long, global = true, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// How long connecting (dial and handshake) may take.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
}

/// TLS for `tls://` targets.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// CA certificates (PEM) to trust for `tls://` servers.
    #[arg(long, global = true, value_name = "PEM")]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate chain (PEM), for servers that demand one.
    #[arg(long, global = true, value_name = "PEM", requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, value_name = "PEM", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// The name to verify the server's certificate against (default: the URL's host).
    #[arg(long, global = true, value_name = "NAME")]
    pub server_name: Option<String>,
}

/// Where node names are looked up, and what `ls` lists.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Discovery")]
pub struct DiscoveryArgs {
    /// UDP port of the beacon multicast group.
    #[arg(long, global = true, default_value_t = plexus::discovery::DEFAULT_PORT)]
    pub beacon_port: u16,
    /// Multicast group of the beacon.
    #[arg(long, global = true, default_value_t = plexus::discovery::DEFAULT_MULTICAST_GROUP)]
    pub beacon_multicast_group: std::net::Ipv4Addr,
    /// Local interface address to listen for beacons on (default loopback).
    #[arg(long, global = true, default_value_t = std::net::Ipv4Addr::LOCALHOST)]
    pub beacon_interface: std::net::Ipv4Addr,
    /// Session key the beacons are authenticated with.
    #[arg(long, global = true, value_name = "KEY")]
    pub beacon_key: Option<String>,
    /// How long to listen for beacons before answering.
    #[arg(long, global = true, default_value = "2s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// Nodes at these URLs instead of beacons (repeat for several).
    #[arg(long = "static", global = true, value_name = "URL")]
    pub static_urls: Vec<String>,
    /// etcd endpoints to read node registrations from instead of beacons.
    #[arg(long, global = true, value_name = "URL")]
    pub etcd: Vec<String>,
    /// Key prefix of the registrations in etcd.
    #[arg(long, global = true, default_value = "/plexus/nodes")]
    pub etcd_prefix: String,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List nodes: name, id, group, roles, services, addresses, liveness.
    Ls(ls::LsArgs),
    /// Show what a server or node serves: services, operations, message schemas.
    Describe(describe::DescribeArgs),
    /// Call an operation with JSON arguments (every call kind).
    Call(call::CallArgs),
    /// Probe the health service; exit 0 only when SERVING.
    Health(health::HealthArgs),
    /// Print a topic's events as JSON lines.
    Sub(sub::SubArgs),
    /// Publish events on a topic to the subscribers in a group.
    Pub(publish::PubArgs),
    /// Load an operation with concurrent calls; report calls/s and latency percentiles.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            std::process::exit(if usage { 1 } else { 0 });
        }
    };
    let threads = match &cli.command {
        Command::Bench(b) => b.threads.max(1),
        _ => 2,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("plexus: cannot start the async runtime: {e}");
            std::process::exit(3);
        }
    };
    let outcome = runtime.block_on(async move {
        // Commands run on a worker so `bench` measures on exactly `threads` threads.
        match tokio::spawn(run(cli)).await {
            Ok(outcome) => outcome,
            Err(e) => Err(CliError::Call(format!("internal error: {e}"))),
        }
    });
    let _ = std::io::stdout().flush();
    // Connections still closing in the background must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(200));
    if let Err(e) = outcome {
        eprintln!("plexus: {e}");
        std::process::exit(e.exit_code());
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let global = cli.global;
    match cli.command {
        Command::Ls(args) => ls::run(&global, args).await,
        Command::Describe(args) => describe::run(&global, args).await,
        Command::Call(args) => call::run(&global, args).await,
        Command::Health(args) => health::run(&global, args).await,
        Command::Sub(args) => sub::run(&global, args).await,
        Command::Pub(args) => publish::run(&global, args).await,
        Command::Bench(args) => bench::run(&global, args).await,
    }
}

/// Writes one line to stdout and flushes it, so piped readers see each line at once.
pub fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_command_and_flag_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
