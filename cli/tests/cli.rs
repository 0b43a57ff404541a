//! The built `plexus` binary against real servers and nodes over loopback:
//! every command, every call kind of both contract styles, every exit code.

mod support;

use std::time::Duration;

use plexus::health::ServingStatus;
use plexus::patterns::{Publisher, Subscriber, TopicClient};
use plexus::Node;
use plexus::{Bytes, Endpoint, Reject, Server};
use serde_json::json;

use support::*;

async fn greeter_server() -> Server {
    bounded(
        "greeter starts",
        Server::bind("tcp://127.0.0.1:0")
            .serve(GreeterHandler::new(Host::default()))
            .start(),
    )
    .await
    .expect("greeter listens")
}

async fn inventory_server() -> Server {
    bounded(
        "inventory starts",
        Server::bind("tcp://127.0.0.1:0")
            .serve(inventory::InventoryHandler::new(Warehouse::default()))
            .start(),
    )
    .await
    .expect("inventory listens")
}

fn url(server: &Server) -> String {
    server.local_url().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_finds_three_nodes_with_their_services() {
    let multicast = private_multicast();
    let mut nodes = Vec::new();
    for (name, group) in [("alice", "lab"), ("bob", "lab"), ("carol", "ops")] {
        let mut builder = Node::builder(name)
            .group(group)
            .discovery(beacon(multicast))
            .serve(GreeterHandler::new(Host::default()));
        if name == "carol" {
            builder = builder.serve_as(
                inventory::InventoryHandler::new(Warehouse::default()),
                "auditor",
            );
        }
        nodes.push(bounded("node starts", builder.start()).await.expect("node"));
    }
    let mut args = vec!["ls", "--json", "--wait", "3s"];
    let flags = beacon_flags(multicast);
    args.extend(flags.iter().map(String::as_str));
    let listed = plexus(&args).await.ok().json();
    let listed = listed.as_array().expect("an array of nodes");
    assert_eq!(listed.len(), 3, "{listed:#?}");
    for node in &nodes {
        let row = listed
            .iter()
            .find(|r| r["name"] == node.name())
            .unwrap_or_else(|| panic!("{} missing from {listed:#?}", node.name()));
        assert_eq!(row["id"], node.id().to_string());
        assert_eq!(row["group"], json!(node.group()));
        assert_eq!(row["state"], "alive");
        assert_eq!(row["endpoints"], json!([node.local_urls()[0].to_string()]));
        let services: Vec<&str> = row["services"]
            .as_array()
            .expect("services")
            .iter()
            .filter_map(|s| s.as_str())
            .collect();
        assert!(services.contains(&"greet.Greeter"), "{row}");
    }
    let carol = listed.iter().find(|r| r["name"] == "carol").expect("carol");
    assert!(
        carol["roles"]
            .as_array()
            .expect("roles")
            .iter()
            .any(|r| r["service"] == "inventory.Inventory" && r["role"] == "auditor"),
        "carol's role is listed: {carol}"
    );
    // The table names every node and carol's role.
    let mut args = vec!["ls", "--wait", "3s"];
    args.extend(flags.iter().map(String::as_str));
    let table = plexus(&args).await.ok().stdout;
    for name in [
        "alice",
        "bob",
        "carol",
        "inventory.Inventory (auditor)",
        "lab",
        "ops",
    ] {
        assert!(table.contains(name), "{name} missing from\n{table}");
    }
    // A node is a target by name.
    let mut args = vec!["call", "bob", "greet.Greeter/hello", "\"ada\""];
    args.extend(flags.iter().map(String::as_str));
    assert_eq!(plexus(&args).await.ok().stdout.trim(), "\"hello, ada!\"");
    // The static list finds the same nodes by URL.
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| n.local_urls()[0].to_string())
        .collect();
    let mut args = vec!["ls", "--json"];
    for url in &urls {
        args.extend(["--static", url.as_str()]);
    }
    let listed = plexus(&args).await.ok().json();
    let names: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names.len(), 3);
    for node in &nodes {
        assert!(names.contains(&node.name().as_str()), "{names:?}");
    }
    for node in nodes {
        node.stop().await.expect("stops");
    }
}

#[tokio::test]
async fn ls_watch_reports_a_node_arriving_and_leaving() {
    let multicast = private_multicast();
    let mut args: Vec<String> = ["ls", "--watch", "--json", "--for", "20s"]
        .map(String::from)
        .into();
    args.extend(beacon_flags(multicast));
    let mut watching = Running::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let node = Node::builder("dave")
        .discovery(beacon(multicast))
        .serve(GreeterHandler::new(Host::default()))
        .start()
        .await
        .expect("node");
    let event = |line: Option<String>| {
        let line = line.expect("the watch goes on");
        let value: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        (
            value["event"].as_str().unwrap_or("").to_owned(),
            value["name"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert_eq!(
        event(watching.line().await),
        ("discovered".into(), "dave".into())
    );
    node.stop().await.expect("stops");
    loop {
        let (what, who) = event(watching.line().await);
        assert_eq!(who, "dave");
        if what == "left" {
            break;
        }
        assert_eq!(what, "updated", "only updates may come before the leave");
    }
    drop(watching);
}

#[tokio::test]
async fn describe_shows_every_operation_of_the_greeter() {
    let server = greeter_server().await;
    let text = plexus(&["describe", &url(&server)]).await.ok().stdout;
    for line in [
        "greet.Greeter v1  codec msgpack",
        "hello          unary         (name: String) -> String",
        "add            unary         (a: i64, b: i64) -> i64",
        "wave           oneway        (from: String)",
        "countdown      server_stream (from: u32) -> stream u32",
        "sum            client_stream stream u32 -> u64",
        "shout          bidi          stream String -> stream String",
        "// The demo contract: every call kind once, several arguments, a context.",
    ] {
        assert!(text.contains(line), "`{line}` missing from\n{text}");
    }
    let described = plexus(&["describe", &url(&server), "--json"])
        .await
        .ok()
        .json();
    let ops = described["services"][0]["operations"]
        .as_array()
        .expect("operations");
    let names: Vec<&str> = ops.iter().filter_map(|o| o["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "hello",
            "greet",
            "add",
            "wave",
            "waves",
            "countdown",
            "sum",
            "shout",
            "whoami",
            "stall"
        ]
    );
    let add = &ops[2];
    assert_eq!(
        add["request"]["params"],
        json!([{"name": "a", "ty": "i64"}, {"name": "b", "ty": "i64"}])
    );
    // A type deriving `JsonSchema` brings its schema.
    let greet = plexus(&["describe", &url(&server), "greet.Greeter/greet", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        greet["request"]["json_schema"]["properties"]["excited"]["type"],
        "boolean"
    );
    assert_eq!(greet["reply"]["json_schema"]["type"], "string");
    let ops_listed = described["operations"].as_array().expect("operations");
    for builtin in [
        "plexus.Health/check",
        "plexus.Health/watch",
        "plexus.Reflection/describe",
        "plexus.Session/open",
    ] {
        assert!(
            ops_listed.contains(&json!(builtin)),
            "{builtin} in {ops_listed:?}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn describe_shows_a_proto_service_with_its_message_fields() {
    let server = inventory_server().await;
    let text = plexus(&["describe", &url(&server)]).await.ok().stdout;
    for line in [
        "inventory.Inventory v3  codec protobuf",
        "roles clerk, auditor",
        "Lookup         unary         inventory.ItemId -> inventory.Item  [idempotent]",
        "Adjust         unary         inventory.Adjustment -> inventory.Item  [role clerk]",
        "Touch          oneway        inventory.ItemId",
        "List           server_stream google.protobuf.Empty -> stream inventory.Item",
        "Restock        client_stream stream inventory.Adjustment -> inventory.Summary",
        "Sync           bidi          stream inventory.Adjustment -> stream inventory.Item",
        "inventory.Item { sku: string, name: string, quantity: int64 }",
        "inventory.Adjustment { sku: string, delta: int64 }",
    ] {
        assert!(text.contains(line), "`{line}` missing from\n{text}");
    }
    let op = plexus(&[
        "describe",
        &url(&server),
        "inventory.Inventory/Adjust",
        "--json",
    ])
    .await
    .ok()
    .json();
    let fields: Vec<(&str, &str)> = op["request"]["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap_or(""),
                f["type"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(fields, [("sku", "string"), ("delta", "int64")]);
    // A typo is answered with the nearest names.
    let typo = plexus(&["describe", &url(&server), "inventory.Inventory/Lokup"]).await;
    assert_eq!(typo.code, 1);
    assert!(typo.stderr.contains("did you mean: Lookup"), "{typo:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn call_works_for_every_kind_of_a_rust_contract() {
    let server = greeter_server().await;
    let u = url(&server);
    let run = |args: Vec<&'static str>| {
        let u = u.clone();
        async move {
            let mut all = vec!["call", u.as_str()];
            all.extend(args);
            plexus(&all).await.ok().stdout
        }
    };
    assert_eq!(
        run(vec!["greet.Greeter/hello", "\"ada\""]).await,
        "\"hello, ada!\"\n"
    );
    assert_eq!(
        run(vec![
            "greet.Greeter/greet",
            r#"{"to": "bo", "excited": true}"#
        ])
        .await,
        "\"HELLO, BO!\"\n"
    );
    assert_eq!(run(vec!["greet.Greeter/add", "[2, 40]"]).await, "42\n");
    assert_eq!(
        run(vec!["greet.Greeter/add", r#"{"b": 1, "a": 2}"#]).await,
        "3\n"
    );
    assert_eq!(run(vec!["greet.Greeter/wave", "\"x\""]).await, "");
    let probe = GreeterClient::connect(server.local_url())
        .await
        .expect("client");
    bounded("the wave lands", async {
        while probe.waves().await.expect("waves") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(run(vec!["greet.Greeter/countdown", "3"]).await, "3\n2\n1\n");
    assert_eq!(run(vec!["greet.Greeter/sum", "1", "2", "39"]).await, "42\n");
    let summed = plexus_with_stdin(&["call", &u, "greet.Greeter/sum"], Some("5\n\n6\n"))
        .await
        .ok();
    assert_eq!(summed.stdout, "11\n");
    let shouted = plexus_with_stdin(&["call", &u, "greet.Greeter/shout"], Some("\"a\"\n\"b\"\n"))
        .await
        .ok();
    assert_eq!(shouted.stdout, "\"A\"\n\"B\"\n");
    server.shutdown().await;
}

#[tokio::test]
async fn call_works_for_every_kind_of_a_proto_contract() {
    let server = inventory_server().await;
    let u = url(&server);
    let call = |op: &'static str, arg: Option<&'static str>, stdin: Option<&'static str>| {
        let u = u.clone();
        async move {
            let mut args = vec!["call", u.as_str(), op];
            args.extend(arg);
            plexus_with_stdin(&args, stdin).await.ok().json_lines()
        }
    };
    assert_eq!(
        call(
            "inventory.Inventory/Lookup",
            Some(r#"{"sku": "apple"}"#),
            None
        )
        .await,
        [json!({"sku": "apple", "name": "APPLE", "quantity": "3"})]
    );
    assert_eq!(
        call(
            "inventory.Inventory/Adjust",
            Some(r#"{"sku": "pear", "delta": 4}"#),
            None
        )
        .await,
        [json!({"sku": "pear", "name": "PEAR", "quantity": "5"})]
    );
    assert!(call(
        "inventory.Inventory/Touch",
        Some(r#"{"sku": "apple"}"#),
        None
    )
    .await
    .is_empty());
    let client = inventory::InventoryClient::connect(server.local_url())
        .await
        .expect("client");
    bounded("the touch lands", async {
        while client.touches().await.expect("touches").count == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let listed = call("inventory.Inventory/List", None, None).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["sku"], "apple");
    assert_eq!(
        call(
            "inventory.Inventory/Restock",
            None,
            Some("{\"sku\": \"fig\", \"delta\": 2}\n{\"sku\": \"fig\", \"delta\": 3}\n")
        )
        .await,
        [json!({"count": 2, "total": "5"})]
    );
    assert_eq!(
        call(
            "inventory.Inventory/Sync",
            None,
            Some("{\"sku\": \"kiwi\", \"delta\": 7}\n")
        )
        .await,
        [json!({"sku": "kiwi", "name": "KIWI", "quantity": "7"})]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn call_carries_metadata_and_runs_inside_a_session() {
    let endpoint = Endpoint::builder()
        .serve(GreeterHandler::new(Host::default()))
        .on_session(|req| async move {
            if req.data() == &Bytes::from("let me in") {
                Ok(Bytes::new())
            } else {
                Err(Reject::new(403, "wrong password"))
            }
        })
        .build();
    let listening = endpoint.listen("tcp://127.0.0.1:0").await.expect("listens");
    let u = listening.local_url().to_string();
    let who = plexus(&[
        "call",
        &u,
        "greet.Greeter/whoami",
        "-H",
        "trace:abc-1",
        "--session",
        "lab",
        "let me in",
    ])
    .await
    .ok()
    .json();
    assert_eq!(who, json!({"session": "lab", "trace": "abc-1"}));
    let refused = plexus(&[
        "call",
        &u,
        "greet.Greeter/whoami",
        "--session",
        "lab",
        "guess",
    ])
    .await;
    assert_eq!(refused.code, 5, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("refused session `lab` with code 403: wrong password"),
        "{refused:?}"
    );
    let late = plexus(&["call", &u, "greet.Greeter/stall", "--timeout", "200ms"]).await;
    assert_eq!(late.code, 3, "{late:?}");
    assert!(late.stderr.contains("no reply within 200ms"), "{late:?}");
    endpoint.shutdown().await;
}

#[tokio::test]
async fn call_reaches_tls_and_unix_servers() {
    let pki = plexus_tests::TestPki::new("cli ca");
    let dir = plexus_tests::tempdir::Dir::new("cli");
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("ca written");
    let tls = Server::bind("tls://127.0.0.1:0")
        .tls(pki.server_tls())
        .serve(GreeterHandler::new(Host::default()))
        .start()
        .await
        .expect("tls server");
    let u = url(&tls);
    let ca = ca.display().to_string();
    let reply = plexus(&[
        "call",
        &u,
        "greet.Greeter/hello",
        "\"tls\"",
        "--cacert",
        &ca,
        "--server-name",
        "localhost",
    ])
    .await
    .ok();
    assert_eq!(reply.stdout, "\"hello, tls!\"\n");
    let untrusted = plexus(&["call", &u, "greet.Greeter/hello", "\"tls\""]).await;
    assert_eq!(untrusted.code, 2, "{untrusted:?}");
    assert!(untrusted.stderr.contains("--cacert"), "{untrusted:?}");
    let socket = format!("unix://{}", dir.0.join("g.sock").display());
    let unix = Server::bind(socket.clone())
        .serve(GreeterHandler::new(Host::default()))
        .start()
        .await
        .expect("unix server");
    assert_eq!(
        plexus(&["call", &socket, "greet.Greeter/countdown", "2"])
            .await
            .ok()
            .stdout,
        "2\n1\n"
    );
    tls.shutdown().await;
    unix.shutdown().await;
}

#[tokio::test]
async fn health_exit_codes_follow_the_served_status_and_the_drain() {
    let server = greeter_server().await;
    let u = url(&server);
    let serving = plexus(&["health", &u]).await;
    assert_eq!(
        (serving.code, serving.stdout.as_str()),
        (0, "SERVING\n"),
        "{serving:?}"
    );
    assert_eq!(plexus(&["health", &u, "greet.Greeter"]).await.code, 0);
    server
        .health()
        .set("greet.Greeter", ServingStatus::NotServing);
    let down = plexus(&["health", &u, "greet.Greeter"]).await;
    assert_eq!(
        (down.code, down.stdout.as_str()),
        (4, "NOT_SERVING\n"),
        "{down:?}"
    );
    assert_eq!(
        plexus(&["health", &u]).await.code,
        0,
        "overall is still serving"
    );
    server.health().set("greet.Greeter", ServingStatus::Serving);
    let unknown = plexus(&["health", &u, "greet.Gretter"]).await;
    assert_eq!(unknown.code, 4, "{unknown:?}");
    assert!(unknown.stderr.contains("SERVICE_UNKNOWN"), "{unknown:?}");
    // A watcher sees the drain begin; checks during the grace period say
    // NOT_SERVING; once the server is gone, it is unreachable.
    let watch_url = u.clone();
    let watcher = tokio::spawn(async move { plexus(&["health", &watch_url, "--watch"]).await });
    // The watch is on once the server serves its call (a connection alone
    // is not enough: the call may still be on its way).
    until("the watcher is on", || {
        server
            .connections()
            .iter()
            .any(|c| c.stats().calls_served > 0)
    })
    .await;
    let server = std::sync::Arc::new(server);
    let draining = tokio::spawn({
        let server = server.clone();
        async move { server.drain(Duration::from_secs(4)).await }
    });
    until("the drain begins", || server.health().is_draining()).await;
    let during = plexus(&["health", &u]).await;
    assert_eq!(
        (during.code, during.stdout.as_str()),
        (4, "NOT_SERVING\n"),
        "{during:?}"
    );
    let watched = bounded("the watch ends", watcher).await.expect("joined");
    assert_eq!(watched.code, 4, "{watched:?}");
    assert_eq!(watched.stdout, "SERVING\nNOT_SERVING\n");
    bounded("drained", draining).await.expect("joined");
    let after = plexus(&["health", &u]).await;
    assert_eq!(after.code, 2, "{after:?}");
}

#[tokio::test]
async fn a_node_reports_not_serving_from_the_start_of_its_stop() {
    let node = Node::builder("erin")
        .discovery(beacon(private_multicast()))
        .serve(GreeterHandler::new(Host::default()))
        .start()
        .await
        .expect("node");
    let u = node.local_urls()[0].to_string();
    assert_eq!(plexus(&["health", &u]).await.code, 0);
    let node = std::sync::Arc::new(node);
    let draining = tokio::spawn({
        let node = node.clone();
        async move { node.drain(Duration::from_secs(3)).await }
    });
    until("the drain begins", || node.health().is_draining()).await;
    assert_eq!(plexus(&["health", &u, "greet.Greeter"]).await.code, 4);
    bounded("stopped", draining)
        .await
        .expect("joined")
        .expect("stops");
}

#[tokio::test]
async fn bad_input_and_refusals_say_what_went_wrong_and_exit_nonzero() {
    let server = greeter_server().await;
    let u = url(&server);
    let bad_op = plexus(&["call", &u, "greet.Greeter/helo", "\"ada\""]).await;
    assert_eq!(bad_op.code, 1, "{bad_op:?}");
    assert!(
        bad_op.stderr.contains("no operation `greet.Greeter/helo`"),
        "{bad_op:?}"
    );
    assert!(
        bad_op.stderr.contains("did you mean: greet.Greeter/hello"),
        "{bad_op:?}"
    );
    let bad_json = plexus(&["call", &u, "greet.Greeter/add", "[1, 2"]).await;
    assert_eq!(bad_json.code, 1, "{bad_json:?}");
    assert!(bad_json.stderr.contains("not valid JSON"), "{bad_json:?}");
    assert!(
        bad_json
            .stderr
            .contains("(a: i64, b: i64) — a JSON array in this order"),
        "{bad_json:?}"
    );
    let wrong_type = plexus(&["call", &u, "greet.Greeter/hello", "5"]).await;
    assert_eq!(wrong_type.code, 1, "{wrong_type:?}");
    assert!(
        wrong_type.stderr.contains("could not decode the request"),
        "{wrong_type:?}"
    );
    assert!(
        wrong_type.stderr.contains("expected: (name: String)"),
        "{wrong_type:?}"
    );
    let rejected = plexus(&["call", &u, "greet.Greeter/hello", "\"\""]).await;
    assert_eq!(rejected.code, 5, "{rejected:?}");
    assert!(
        rejected
            .stderr
            .contains("code 400: a greeting needs a name"),
        "{rejected:?}"
    );
    let proto = inventory_server().await;
    let bad_field = plexus(&[
        "call",
        &url(&proto),
        "inventory.Inventory/Lookup",
        r#"{"skus": "x"}"#,
    ])
    .await;
    assert_eq!(bad_field.code, 1, "{bad_field:?}");
    assert!(
        bad_field
            .stderr
            .contains("inventory.ItemId { sku: string }"),
        "{bad_field:?}"
    );
    let guarded = Server::bind("tcp://127.0.0.1:0")
        .accept(|_req| Err("clients must present a ticket".to_owned()))
        .serve(GreeterHandler::new(Host::default()))
        .start()
        .await
        .expect("guarded");
    let refused = plexus(&["call", &url(&guarded), "greet.Greeter/hello", "\"ada\""]).await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("clients must present a ticket"),
        "{refused:?}"
    );
    assert!(
        refused.stderr.contains("accept hook refused"),
        "{refused:?}"
    );
    let nobody = plexus(&["health", "tcp://127.0.0.1:1"]).await;
    assert_eq!(nobody.code, 2, "{nobody:?}");
    let unknown_node = plexus(&[
        "call",
        "nobody-here",
        "greet.Greeter/hello",
        "1",
        "--wait",
        "300ms",
        "--beacon-port",
        "1",
    ])
    .await;
    assert_eq!(unknown_node.code, 2, "{unknown_node:?}");
    assert!(
        unknown_node.stderr.contains("no node named `nobody-here`"),
        "{unknown_node:?}"
    );
    let usage = plexus(&["call"]).await;
    assert_eq!(usage.code, 1, "{usage:?}");
    assert_eq!(plexus(&["call", "--help"]).await.code, 0);
    let hidden = Server::bind("tcp://127.0.0.1:0")
        .without_reflection()
        .serve(GreeterHandler::new(Host::default()))
        .start()
        .await
        .expect("no reflection");
    let blind = plexus(&["call", &url(&hidden), "greet.Greeter/hello", "\"ada\""]).await;
    assert_eq!(blind.code, 1, "{blind:?}");
    assert!(blind.stderr.contains("--codec"), "{blind:?}");
    let told = plexus(&[
        "call",
        &url(&hidden),
        "greet.Greeter/hello",
        "\"ada\"",
        "--codec",
        "msgpack",
    ])
    .await
    .ok();
    assert_eq!(told.stdout, "\"hello, ada!\"\n");
    for s in [server, proto, guarded, hidden] {
        s.shutdown().await;
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Reading {
    pub sensor: String,
    pub celsius: f32,
}

plexus::topic! {
    /// Readings for the CLI tests.
    pub struct Telemetry in "telemetry" => Reading;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_prints_a_topics_events_and_pub_reaches_subscribers() {
    let multicast = private_multicast();
    let publisher = Publisher::<Telemetry>::new();
    let pub_node = Node::builder("station")
        .group("lab")
        .discovery(beacon(multicast))
        .serve_as(publisher.clone(), "publisher")
        .start()
        .await
        .expect("publisher node");
    let u = pub_node.local_urls()[0].to_string();
    let following = tokio::spawn(async move { plexus(&["sub", &u, "hall/", "-n", "2"]).await });
    until("the sub subscribed", || publisher.subscribers() == 1).await;
    for (topic, celsius) in [("yard/t1", 1.0), ("hall/t1", 20.5), ("hall/t2", 21.0)] {
        let reading = Reading {
            sensor: topic.into(),
            celsius,
        };
        publisher.publish(topic, &reading).await.expect("published");
    }
    let run = bounded("sub ends", following).await.expect("joined").ok();
    assert_eq!(
        run.json_lines(),
        [
            json!({"topic": "hall/t1", "event": {"sensor": "hall/t1", "celsius": 20.5}}),
            json!({"topic": "hall/t2", "event": {"sensor": "hall/t2", "celsius": 21.0}}),
        ]
    );
    // `plexus pub` joins the group as a publisher and reaches a subscriber node.
    let sub_node = Node::builder("listener")
        .group("lab")
        .discovery(beacon(multicast))
        .uses_as::<Telemetry>("subscriber")
        .start()
        .await
        .expect("subscriber node");
    let subscriber =
        Subscriber::<Telemetry>::builder().follow(sub_node.peers::<TopicClient<Telemetry>>());
    let flags = beacon_flags(multicast);
    let mut args = vec![
        "pub",
        "telemetry.Telemetry",
        "roof/t9",
        r#"{"sensor": "roof", "celsius": -3.5}"#,
        "--group",
        "lab",
        "--json",
        "--subscribers",
        "1",
    ];
    args.extend(flags.iter().map(String::as_str));
    let published = plexus(&args).await.ok().json();
    assert_eq!(published, json!({"published": 1, "subscribers": 1}));
    let received = bounded("the event arrives", subscriber.recv())
        .await
        .expect("an event");
    assert_eq!(received.topic, "roof/t9");
    assert_eq!(received.event.celsius, -3.5);
    sub_node.stop().await.expect("stops");
    pub_node.stop().await.expect("stops");
}

#[tokio::test]
async fn bench_reports_calls_per_second_and_percentiles() {
    let server = greeter_server().await;
    let run = plexus(&[
        "bench",
        &url(&server),
        "greet.Greeter/add",
        "[1, 2]",
        "-c",
        "8",
        "-n",
        "2000",
        "--warmup",
        "100",
        "--json",
    ])
    .await
    .ok()
    .json();
    assert_eq!(run["calls"], 2000);
    assert_eq!(run["errors"], 0);
    assert!(run["calls_per_second"].as_f64().expect("rate") > 0.0);
    let l = &run["latency_us"];
    let p = |k: &str| l[k].as_f64().expect(k);
    assert!(
        p("p50") > 0.0 && p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("max"),
        "{l}"
    );
    let text = plexus(&[
        "bench",
        &url(&server),
        "greet.Greeter/hello",
        "\"b\"",
        "-c",
        "2",
        "-n",
        "100",
    ])
    .await
    .ok()
    .stdout;
    assert!(
        text.contains("throughput") && text.contains("p99"),
        "{text}"
    );
    let streams = plexus(&["bench", &url(&server), "greet.Greeter/countdown", "1"]).await;
    assert_eq!(streams.code, 1, "{streams:?}");
    server.shutdown().await;
}
