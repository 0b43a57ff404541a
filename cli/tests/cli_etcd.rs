//! `plexus ls --etcd` against a real etcd (Debian package `etcd-server`):
//! a node registered there is listed with its group, state, endpoints and
//! services, its call works by name, a stopped node is no longer listed as
//! alive, and an etcd that does not answer is a clear error, not a hang.
#![cfg(feature = "etcd")]

#[path = "../../runtime/tests/etcd_server/mod.rs"]
mod etcd_server;
mod support;

use std::time::Duration;

use etcd_server::EtcdServer;
use plexus::Node;
use serde_json::json;
use support::{bounded, plexus, GreeterHandler, Host, Run};

/// The registrations' key prefix, private to this suite.
const PREFIX: &str = "/plexus-cli-test/nodes";

/// Lists the nodes registered under [`PREFIX`].
async fn ls(etcd: &EtcdServer, extra: &[&str]) -> Run {
    let mut args = vec![
        "ls",
        "--etcd",
        etcd.url(),
        "--etcd-prefix",
        PREFIX,
        "--wait",
        "5s",
    ];
    args.extend(extra);
    plexus(&args).await
}

/// Runs `ls --json` until `done` holds for its rows (bounded).
async fn ls_until(
    etcd: &EtcdServer,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    bounded(what, async {
        loop {
            let listed = ls(etcd, &["--json"]).await.ok().json();
            let rows = listed.as_array().cloned().unwrap_or_default();
            if done(&rows) {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_lists_the_nodes_registered_in_etcd_and_forgets_a_stopped_one() {
    let etcd = EtcdServer::start().await;
    let node = bounded(
        "node starts",
        Node::builder("alice")
            .group("lab")
            .discovery(etcd.discovery(PREFIX, Duration::from_secs(10)))
            .serve(GreeterHandler::new(Host::default()))
            .start(),
    )
    .await
    .expect("node");

    let rows = ls_until(&etcd, "alice is registered", |rows| !rows.is_empty()).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let row = &rows[0];
    assert_eq!(row["name"], "alice");
    assert_eq!(row["id"], node.id().to_string());
    assert_eq!(row["group"], json!(node.group()));
    assert_eq!(row["state"], "alive");
    assert_eq!(row["endpoints"], json!([node.local_urls()[0].to_string()]));
    assert!(
        row["services"]
            .as_array()
            .expect("services")
            .iter()
            .any(|s| s == "greet.Greeter"),
        "{row}"
    );
    // Described over its endpoint: the service is served there.
    assert!(
        row["roles"]
            .as_array()
            .expect("roles")
            .iter()
            .any(|r| r["service"] == "greet.Greeter" && r["serves"] == true),
        "{row}"
    );

    // The table names it, and a node found in etcd is a call target by name.
    let table = ls(&etcd, &[]).await.ok().stdout;
    assert!(table.contains("alice") && table.contains("lab"), "{table}");
    let etcd_url = etcd.url().to_owned();
    let reply = plexus(&[
        "call",
        "alice",
        "greet.Greeter/hello",
        "\"ada\"",
        "--etcd",
        &etcd_url,
        "--etcd-prefix",
        PREFIX,
    ])
    .await
    .ok();
    assert_eq!(reply.stdout.trim(), "\"hello, ada!\"");

    // A stopped node says it leaves, then its lease is revoked: it is not
    // listed as alive any more.
    bounded("node stops", node.stop()).await.expect("stops");
    ls_until(&etcd, "alice is gone", |rows| {
        rows.iter().all(|r| r["state"] != "alive")
    })
    .await;
}

#[tokio::test]
async fn ls_against_an_etcd_that_does_not_answer_fails_with_the_endpoint() {
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let url = format!("http://127.0.0.1:{port}");
    let run = plexus(&["ls", "--etcd", &url, "--wait", "1s"]).await;
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(
        run.stderr.contains(&format!("etcd at {url}")),
        "the error names the endpoint: {run:#?}"
    );
    assert!(
        run.stderr.contains("--etcd"),
        "and says what to check: {run:#?}"
    );
}
