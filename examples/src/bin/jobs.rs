//! A push/pull job queue: a dispatcher pushes jobs to workers it discovers;
//! each job goes to exactly one worker, fairly, and is acked when done. One
//! worker crashes mid-job; its jobs go to the others.
//!
//! ```text
//! cargo run -p plexus-examples --bin jobs
//! cargo run -p plexus-examples --bin jobs -- --workers 5 --jobs 200
//! cargo run -p plexus-examples --bin jobs -- --tls --key "our secret"
//! ```
//!
//! `--tls` puts the nodes on mutual TLS, `--key SECRET` gives them a session
//! key (as in the chat example; docs/SECURITY.md).
//!
//! Nodes find each other on the loopback beacon; nothing leaves this host.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plexus::discovery::Beacon;
use plexus::patterns::Pipeline;
use plexus::Node;
use plexus::Reject;
use plexus_examples::NodeSecurity;

/// Work a worker does.
#[plexus::service(package = "jobs", roles = ["dispatcher", "worker"])]
pub trait Jobs {
    /// Squares `n`, slowly.
    #[role("worker")]
    async fn square(&self, n: u64) -> Result<u64, Reject>;
}

struct Squarer {
    name: String,
    /// Set on the worker that is about to crash: it never finishes a job.
    doomed: Arc<AtomicBool>,
}

impl Jobs for Squarer {
    async fn square(&self, n: u64) -> Result<u64, Reject> {
        if self.doomed.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        println!("  {} squared {n}", self.name);
        Ok(n * n)
    }
}

fn arg(name: &str, default: u64) -> Result<u64, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or(format!("{name} needs a number")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let workers = arg("--workers", 3)?.max(2);
    let jobs = arg("--jobs", 60)?;
    let security = NodeSecurity::from_env()?;
    let beacon = || Beacon::loopback().interval(Duration::from_millis(200));

    let dispatcher = Node::builder("dispatcher")
        .group("jobs")
        .discovery(beacon())
        .uses_as::<JobsClient>("dispatcher");
    let dispatcher = security.apply(dispatcher, "dispatcher")?.start().await?;
    let mut nodes = Vec::new();
    let doomed = Arc::new(AtomicBool::new(false));
    for i in 0..workers {
        let name = format!("worker-{i}");
        let flag = if i == 0 {
            doomed.clone()
        } else {
            Arc::default()
        };
        let node = Node::builder(name.as_str())
            .group("jobs")
            .discovery(beacon())
            .serve_as(
                JobsHandler::new(Squarer {
                    name: name.clone(),
                    doomed: flag,
                }),
                "worker",
            );
        let node = security.apply(node, &name)?.start().await?;
        nodes.push((name, node));
    }
    let set = dispatcher.peers::<JobsClient>();
    tokio::time::timeout(
        Duration::from_secs(10),
        set.wait_until(|ids| ids.len() as u64 == workers),
    )
    .await?;
    println!("{workers} workers found; pushing {jobs} jobs");

    let names: BTreeMap<_, _> = nodes
        .iter()
        .map(|(n, node)| (node.id(), n.clone()))
        .collect();
    let pipeline = Pipeline::new(set).per_worker(2);
    // Worker 0 hangs on the next jobs it takes, then crashes.
    doomed.store(true, Ordering::Relaxed);
    let pushes: Vec<_> = (0..jobs)
        .map(|n| {
            let pipeline = pipeline.clone();
            tokio::spawn(async move {
                pipeline
                    .push(move |w: JobsClient| async move { w.square(n).await })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (crashed, node) = nodes.remove(0);
    println!("  {crashed} crashes with jobs in hand");
    drop(node);

    let mut per_worker: BTreeMap<String, u64> = BTreeMap::new();
    let mut redelivered = 0;
    for push in pushes {
        let done = tokio::time::timeout(Duration::from_secs(10), push).await???;
        *per_worker
            .entry(names.get(&done.worker).cloned().unwrap_or_default())
            .or_default() += 1;
        if done.attempts > 1 {
            redelivered += 1;
        }
    }
    println!("all {jobs} jobs acked; {redelivered} redelivered after the crash");
    for (worker, count) in &per_worker {
        println!("  {worker}: {count} jobs");
    }

    dispatcher.stop().await?;
    for (_, node) in nodes {
        node.stop().await?;
    }
    Ok(())
}
