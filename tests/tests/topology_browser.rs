//! The live topology page in a real headless Chromium: it shows the nodes of
//! a chat mesh, their links and calls, and then one of them leaving. A
//! screenshot of each moment is written under `target/topology-page/`.
//!
//! Needs Chromium (Debian's `chromium`; `PLEXUS_CHROMIUM` names another
//! binary), so it is ignored by default:
//!
//! ```text
//! cargo test -p plexus-tests --test topology_browser -- --ignored
//! ```
//!
//! The browser is driven over the DevTools protocol (JSON over a WebSocket
//! on loopback): the handful of commands used here need no client library.
//! Chromium is started with its background networking off, so it talks to
//! nothing but the page.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use plexus_tests::bounded;
use plexus_tests::topology::Mesh;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Where the screenshots go: `target/topology-page/`.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("topology-page");
    std::fs::create_dir_all(&dir).expect("create target/topology-page");
    dir
}

/// A headless Chromium, killed and its profile removed when dropped.
struct Chromium {
    child: Child,
    profile: PathBuf,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Chromium {
    /// Starts it with a fresh profile; returns it and its DevTools URL.
    fn start() -> (Chromium, String) {
        let binary = std::env::var("PLEXUS_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
        let profile = screenshot_dir().join(format!("profile-{}", std::process::id()));
        let mut child = Command::new(&binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-domain-reliability",
                "--disable-extensions",
                "--disable-sync",
                "--disable-breakpad",
                "--no-pings",
                "--disable-features=Translate,OptimizationHints,MediaRouter",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,800",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {binary} ({e}): install Debian's chromium or set PLEXUS_CHROMIUM"
                )
            });
        let stderr = child.stderr.take().expect("piped stderr");
        let chromium = Chromium { child, profile };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("Chromium printed its DevTools address within 30 s");
        (chromium, url)
    }
}

/// A DevTools protocol connection, attached to one page.
struct DevTools {
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
    session: Option<String>,
}

impl DevTools {
    async fn connect(url: &str) -> DevTools {
        let authority = url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .expect("ws://host:port/...");
        let stream = TcpStream::connect(authority)
            .await
            .expect("DevTools listens");
        let (ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .expect("DevTools WebSocket handshake");
        DevTools {
            ws,
            next_id: 1,
            session: None,
        }
    }

    /// Sends a command and waits for its answer (events are skipped).
    async fn send(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(command.to_string()))
            .await
            .expect("send to DevTools");
        bounded(method, async {
            loop {
                let message = self
                    .ws
                    .next()
                    .await
                    .expect("DevTools stays open")
                    .expect("DevTools reads");
                let Message::Text(text) = message else {
                    continue;
                };
                let answer: Value = serde_json::from_str(&text).expect("JSON from DevTools");
                if answer["id"] == id {
                    if let Some(error) = answer.get("error") {
                        panic!("{method} failed: {error}");
                    }
                    return answer["result"].clone();
                }
            }
        })
        .await
    }

    /// Opens `url` in a new tab and attaches to it.
    async fn open(&mut self, url: &str) {
        let target = self
            .send("Target.createTarget", json!({ "url": url }))
            .await;
        let attached = self
            .send(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        self.session = attached["sessionId"].as_str().map(str::to_owned);
    }

    /// Evaluates `expression` in the page; its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .send(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Writes a PNG of the page to `path`.
    async fn screenshot(&mut self, path: &std::path::Path) {
        let shot = self
            .send("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        std::fs::write(path, png).expect("write the screenshot");
    }
}

/// What the page shows now: its status, and each table row's name, state,
/// class and calls column, and the links drawn.
const READ_PAGE: &str = r##"JSON.stringify({
  status: document.body.dataset.status,
  me: document.getElementById("me").textContent,
  rows: [...document.querySelectorAll("#nodes tr")].map((r) => ({
    name: r.dataset.name, state: r.dataset.state, class: r.className,
    calls: r.children[5] ? r.children[5].textContent : "",
  })),
  links: [...document.querySelectorAll("#graph line[data-link]")].map((l) => l.dataset.link).sort(),
  circles: [...document.querySelectorAll("#graph circle[data-node]")].map((c) => c.dataset.node).sort(),
})"##;

async fn page_until(tools: &mut DevTools, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let text = tools.eval(READ_PAGE).await;
            last = serde_json::from_str(text.as_str().unwrap_or("null")).unwrap_or(Value::Null);
            if want(&last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "the page never showed {what}; it shows {last}"
    );
    last
}

fn row<'a>(page: &'a Value, name: &str) -> Option<&'a Value> {
    page["rows"].as_array()?.iter().find(|r| r["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium: cargo test -p plexus-tests --test topology_browser -- --ignored"]
async fn the_page_in_chromium_shows_the_mesh_and_then_a_node_leaving() {
    let mesh = Mesh::start(&["ada", "bob", "cy"]).await;
    let (_chromium, devtools) = Chromium::start();
    let mut tools = DevTools::connect(&devtools).await;
    tools.open(&mesh.page).await;

    let shown = page_until(&mut tools, "ada and bob alive and linked", |p| {
        p["status"] == "live"
            && ["ada", "bob"]
                .iter()
                .all(|n| row(p, n).is_some_and(|r| r["state"] == "alive"))
            && p["links"] == json!(["ada", "bob"])
    })
    .await;
    assert_eq!(shown["me"], "cy");
    assert_eq!(row(&shown, "cy").expect("itself")["state"], "self");
    assert_eq!(shown["circles"], json!(["ada", "bob"]));

    mesh.chat(3).await;
    let busy = page_until(&mut tools, "calls on both links", |p| {
        ["ada", "bob"]
            .iter()
            .all(|n| row(p, n).is_some_and(|r| r["calls"] != "0 / 0"))
    })
    .await;
    let dir = screenshot_dir();
    tools.screenshot(&dir.join("mesh.png")).await;
    assert!(row(&busy, "ada").is_some());

    let ada = mesh.nodes.first().expect("ada").clone();
    bounded("ada stops", ada.stop()).await.expect("stops");
    let left = page_until(&mut tools, "ada as left", |p| {
        row(p, "ada").is_some_and(|r| r["state"] == "left" && r["class"] == "gone")
    })
    .await;
    assert_eq!(row(&left, "bob").expect("bob")["state"], "alive");
    assert_eq!(left["links"], json!(["bob"]), "ada's link is gone");
    tools.screenshot(&dir.join("left.png")).await;

    for node in &mesh.nodes[1..] {
        bounded("a node stops", node.stop()).await.expect("stops");
    }
}
