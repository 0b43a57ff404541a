//! File sharing: seeders offer a file; a downloader finds them on the
//! loopback beacon and fetches the file in chunks from all of them at once,
//! showing progress. One seeder crashes halfway; its chunks come from the
//! others. Then a newcomer downloads the file from the first downloader.
//!
//! ```text
//! cargo run -p plexus-examples --bin files
//! cargo run -p plexus-examples --bin files -- --seeders 5 --mib 32
//! cargo run -p plexus-examples --bin files -- --tls --key "our secret"
//! ```
//!
//! `--tls` puts the nodes on mutual TLS, `--key SECRET` gives them a session
//! key (as in the chat example; docs/SECURITY.md).
//!
//! Nothing leaves this host; the file lives in memory.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use plexus::discovery::Beacon;
use plexus::files::{Download, FileShareClient, FileStore, Saved};
use plexus::Bytes;
use plexus::Node;
use plexus_examples::NodeSecurity;

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

/// Some bytes that differ in every chunk.
fn content(len: usize) -> Bytes {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

async fn node(
    security: &NodeSecurity,
    name: &str,
    store: &FileStore,
) -> Result<Node, Box<dyn std::error::Error>> {
    let builder = Node::builder(name)
        .group("files")
        .discovery(Beacon::loopback().interval(Duration::from_millis(200)))
        .serve(store.clone());
    Ok(security.apply(builder, name)?.start().await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let security = NodeSecurity::from_env()?;
    let seeders = arg("--seeders", 3)?.max(2) as usize;
    let mib = arg("--mib", 16)?.max(1) as usize;
    let data = content(mib << 20);

    let original = FileStore::new();
    let info = original.offer_bytes("dataset.bin", data.clone())?;
    println!(
        "offering {} ({} MiB) as {}",
        info.name,
        info.size >> 20,
        info.id
    );
    let mut nodes = Vec::new();
    for i in 0..seeders {
        nodes.push(node(&security, &format!("seeder-{i}"), &original).await?);
    }
    let names: BTreeMap<_, _> = nodes
        .iter()
        .map(|n| (n.id(), n.name().to_owned()))
        .collect();

    let mine = FileStore::new();
    let downloader = node(&security, "downloader", &mine).await?;
    let peers = downloader.peers::<FileShareClient>();
    tokio::time::timeout(
        Duration::from_secs(10),
        peers.wait_until(|ids| ids.len() == seeders),
    )
    .await?;
    println!("{seeders} seeders found; downloading from all of them");

    let started = Instant::now();
    let download = Download::builder(peers, info.id).share_into(&mine).start();
    let mut progress = download.progress();
    let mut crashed = None;
    let mut last_percent = 0;
    while progress.changed().await.is_ok() {
        let p = progress.borrow_and_update().clone();
        if p.total_bytes == 0 {
            continue;
        }
        let percent = p.received_bytes * 100 / p.total_bytes;
        if percent >= last_percent + 10 || p.finished {
            last_percent = percent;
            println!(
                "  {percent:3}%  {:>3}/{} chunks from {} sources, {} retried",
                p.received_chunks, p.total_chunks, p.sources, p.retries
            );
        }
        if percent >= 50 && crashed.is_none() {
            let victim = nodes.remove(0);
            println!("  {} crashes mid-download", victim.name());
            crashed = Some(victim.id());
            drop(victim);
        }
        if p.finished {
            break;
        }
    }
    let done = download.finish().await?;
    let took = started.elapsed();
    assert_eq!(
        done.saved,
        Saved::Memory(data.clone()),
        "every byte checked"
    );
    println!(
        "done in {took:.2?} ({:.0} MiB/s), every chunk checked against the file id:",
        mib as f64 / took.as_secs_f64()
    );
    for (peer, chunks) in &done.by_peer {
        println!("  {:<10} sent {chunks} chunks", names[peer]);
    }

    // A newcomer finds the file at the downloader too, which shares it now.
    let newcomer = node(&security, "newcomer", &FileStore::new()).await?;
    let peers = newcomer.peers::<FileShareClient>();
    tokio::time::timeout(
        Duration::from_secs(10),
        peers.wait_until(|ids| ids.contains(&downloader.id())),
    )
    .await?;
    let again = Download::builder(peers, info.id).start().finish().await?;
    let from_downloader = again.by_peer.get(&downloader.id()).copied().unwrap_or(0);
    println!(
        "newcomer got it too: {from_downloader} of {} chunks from the first downloader",
        again.manifest.chunks()
    );

    newcomer.stop().await?;
    downloader.stop().await?;
    for n in nodes {
        n.stop().await?;
    }
    Ok(())
}
