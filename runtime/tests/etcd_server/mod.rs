//! A real `etcd` (Debian package `etcd-server`) for the etcd suites,
//! started on free loopback ports with a temporary data dir, and killed (its
//! dir removed) when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use plexus::discovery::{Etcd, EtcdConfig};
use tokio::time::timeout;

/// A running etcd on loopback; killed, and its data dir removed, on drop.
pub struct EtcdServer {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl EtcdServer {
    /// Starts etcd and waits (bounded) until it answers.
    pub async fn start() -> EtcdServer {
        let client_port = free_port();
        let peer_port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "plexus-etcd-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = std::fs::File::create(dir.join("etcd.log")).expect("log file");
        let url = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&url)
            .arg("--advertise-client-urls")
            .arg(&url)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("`etcd` must be installed (Debian package etcd-server)");
        let server = EtcdServer { child, dir, url };
        server.wait_ready().await;
        server
    }

    /// Polls until etcd answers a request (bounded).
    async fn wait_ready(&self) {
        let ready = timeout(Duration::from_secs(20), async {
            loop {
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_millis(500))
                    .with_timeout(Duration::from_millis(500));
                if let Ok(mut client) =
                    etcd_client::Client::connect([&self.url], Some(options)).await
                {
                    if client.status().await.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        if ready.is_err() {
            let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
            panic!("etcd at {} not ready within 20 s; log:\n{log}", self.url);
        }
    }

    /// The client URL this etcd listens on.
    #[allow(dead_code)] // shared by two test binaries; only one writes records itself
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A discovery backend on this etcd, under `prefix`, with lease `ttl`.
    pub fn discovery(&self, prefix: &str, ttl: Duration) -> Etcd {
        Etcd::new(EtcdConfig::new([self.url.clone()]))
            .prefix(prefix)
            .ttl(ttl)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
