//! The live topology page over plain HTTP: the page itself, its JSON
//! snapshot and its server-sent events follow a chat mesh as nodes link,
//! call each other and leave. (The page as a browser draws it:
//! `topology_browser.rs`.)

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use plexus::{node::NodeError, Node};
use plexus_tests::bounded;
use plexus_tests::topology::{Mesh, CHAT_SERVICE};
use serde_json::Value;

/// `GET path` on the page's server; the response's status, content type
/// and body (still streaming).
async fn get(page: &str, path: &str) -> (StatusCode, String, Incoming) {
    let authority = page
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .expect("the page's url is http://host:port/");
    let stream = bounded(
        "connect to the page",
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .expect("the page listens");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http/1.1 handshake");
    tokio::spawn(conn);
    let request = Request::get(path)
        .header(header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let response = bounded(&format!("GET {path}"), sender.send_request(request))
        .await
        .expect("a response");
    let kind = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (response.status(), kind, response.into_body())
}

async fn text(body: Incoming) -> String {
    let bytes = bounded("the body", body.collect())
        .await
        .expect("the whole body")
        .to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

/// The `topology` events of `/events`, one JSON snapshot each.
struct Feed {
    body: Incoming,
    buffer: String,
}

impl Feed {
    async fn open(page: &str) -> Feed {
        let (status, kind, body) = get(page, "/events").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(kind, "text/event-stream");
        Feed {
            body,
            buffer: String::new(),
        }
    }

    /// The next snapshot (keep-alive comments skipped).
    async fn next(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event = Some(name.trim().to_owned());
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.strip_prefix(' ').unwrap_or(d));
                    }
                }
                if event.as_deref() == Some("topology") {
                    return serde_json::from_str(&data).expect("each event is a JSON snapshot");
                }
                continue;
            }
            let frame = self
                .body
                .frame()
                .await
                .expect("the feed stays open")
                .expect("the feed reads");
            if let Ok(data) = frame.into_data() {
                self.buffer
                    .push_str(std::str::from_utf8(&data).expect("utf-8"));
            }
        }
    }

    /// The first snapshot for which `want` holds (bounded).
    async fn until(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        bounded(what, async {
            loop {
                let snap = self.next().await;
                if want(&snap) {
                    return snap;
                }
            }
        })
        .await
    }
}

fn peer<'a>(snap: &'a Value, name: &str) -> Option<&'a Value> {
    snap["peers"].as_array()?.iter().find(|p| p["name"] == name)
}

fn state(snap: &Value, name: &str) -> Option<String> {
    peer(snap, name).and_then(|p| p["state"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_shows_the_mesh_its_calls_and_a_node_leaving() {
    let mesh = Mesh::start(&["ada", "bob", "cy"]).await;
    assert!(mesh.page.starts_with("http://127.0.0.1:"), "{}", mesh.page);

    // The page: one file, no scripts or styles from anywhere else.
    let (status, kind, body) = get(&mesh.page, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/html"), "{kind}");
    let html = text(body).await;
    assert!(html.contains("new EventSource(\"events\")"), "{html}");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));

    // The snapshot: the node itself, then its peers.
    let (status, kind, body) = get(&mesh.page, "/topology.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kind, "application/json");
    let snap: Value = serde_json::from_str(&text(body).await).expect("JSON");
    assert_eq!(snap["node"]["name"], "cy");
    assert_eq!(snap["node"]["group"], "lobby");
    assert_eq!(snap["node"]["services"][0]["name"], CHAT_SERVICE);
    let urls = snap["node"]["urls"].as_array().expect("urls");
    assert!(!urls.is_empty(), "{snap}");

    // The feed: both peers alive, in the group, linked for chat.
    let mut feed = Feed::open(&mesh.page).await;
    let linked = feed
        .until("both peers alive and linked", |s| {
            ["ada", "bob"].iter().all(|name| {
                peer(s, name).is_some_and(|p| {
                    p["state"] == "alive"
                        && p["connected"] == true
                        && p["linked"]
                            .as_array()
                            .is_some_and(|l| l.iter().any(|s| s == CHAT_SERVICE))
                })
            })
        })
        .await;
    for name in ["ada", "bob"] {
        let p = peer(&linked, name).expect("listed");
        assert_eq!(p["group"], "lobby");
        assert_eq!(p["services"][0]["name"], CHAT_SERVICE);
        let id = p["id"].as_str().expect("an id");
        let node = mesh.nodes.iter().find(|n| n.name() == name).expect("node");
        assert_eq!(id, node.id().to_string());
    }

    // Calls on the links: counted both ways, with a rate.
    mesh.chat(5).await;
    let counted = feed
        .until("the calls counted, with a rate", |s| {
            ["ada", "bob"].iter().all(|name| {
                peer(s, name).is_some_and(|p| {
                    p["calls_made"].as_u64() >= Some(5)
                        && p["calls_served"].as_u64() >= Some(5)
                        && p["rate"].as_f64().is_some_and(|r| r > 0.0)
                })
            })
        })
        .await;
    let ada = peer(&counted, "ada").expect("listed");
    assert_eq!(ada["calls_failed"], 0);

    // One node leaves: the page says so.
    let ada = mesh.nodes.first().expect("ada").clone();
    bounded("ada stops", ada.stop()).await.expect("stops");
    let after = feed
        .until("ada shown as left", |s| {
            state(s, "ada").as_deref() == Some("left")
        })
        .await;
    assert_eq!(state(&after, "bob").as_deref(), Some("alive"));
    assert_eq!(peer(&after, "ada").expect("listed")["connected"], false);

    for node in &mesh.nodes[1..] {
        bounded("a node stops", node.stop()).await.expect("stops");
    }
}

#[tokio::test]
async fn the_page_refuses_to_listen_beyond_loopback() {
    let err = Node::builder("exposed")
        .topology_page("0.0.0.0:0")
        .start()
        .await
        .expect_err("not loopback");
    assert!(matches!(err, NodeError::Topology { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("exposed") && message.contains("loopback") && message.contains("0.0.0.0"),
        "{message}"
    );
}

#[tokio::test]
async fn the_page_stops_with_its_node() {
    let node = Node::builder("brief")
        .topology_page("127.0.0.1:0")
        .start()
        .await
        .expect("starts");
    let page = node.topology_url().expect("serving").to_owned();
    let (status, _, _) = get(&page, "/topology.json").await;
    assert_eq!(status, StatusCode::OK);
    bounded("stop", node.stop()).await.expect("stops");
    let authority = page
        .strip_prefix("http://")
        .and_then(|r| r.strip_suffix('/'))
        .expect("http://host:port/")
        .to_owned();
    plexus_tests::until("the page's port closes", || {
        std::net::TcpStream::connect(&authority).is_err()
    })
    .await;
}
