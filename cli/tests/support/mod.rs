//! What the `plexus` command's suites share: running the built binary,
//! the demo contracts and their servers, private beacon groups.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use plexus::discovery::Beacon;
use plexus::{BoxStream, CallContext, Reject, Streaming};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

#[allow(unused_imports)] // each suite takes what it needs
pub use plexus_tests::{bounded, until};

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stdout as JSON (the whole of it).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Each stdout line as JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }

    /// Asserts success and returns self.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "plexus failed: {self:#?}");
        self
    }
}

/// Runs the built `plexus` with `args`, bounded by `plexus_tests::STEP`.
pub async fn plexus(args: &[&str]) -> Run {
    plexus_with_stdin(args, None).await
}

/// Runs the built `plexus` with `args` and `stdin` as its standard input.
pub async fn plexus_with_stdin(args: &[&str], stdin: Option<&str>) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_plexus"));
    command
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the plexus binary starts");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .expect("stdin written");
        drop(pipe);
    }
    let output = bounded(&format!("plexus {args:?}"), child.wait_with_output())
        .await
        .expect("plexus ran");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A running `plexus` whose stdout is read line by line as it prints.
pub struct Running {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Running {
    /// Starts `plexus` with `args`.
    pub fn start(args: &[&str]) -> Running {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_plexus"))
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the plexus binary starts");
        let stdout = child.stdout.take().expect("stdout piped");
        Running {
            child,
            lines: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
        }
    }

    /// The next line it prints, bounded.
    pub async fn line(&mut self) -> Option<String> {
        bounded("plexus prints a line", self.lines.next_line())
            .await
            .expect("stdout readable")
    }
}

/// A multicast group and port no other test (or process) uses.
pub fn private_multicast() -> (Ipv4Addr, u16) {
    let n: u32 = rand_u32();
    let multicast = Ipv4Addr::new(239, 255, (n >> 8) as u8, (n as u8) | 1);
    let port = 20_000 + ((n >> 16) as u16 % 40_000);
    (multicast, port)
}

fn rand_u32() -> u32 {
    // Different for every call in every process: the clock, the pid and a counter.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mixed =
        nanos ^ std::process::id().rotate_left(16) ^ NEXT.fetch_add(0x9e37_79b9, Ordering::Relaxed);
    mixed.wrapping_mul(0x85eb_ca6b) ^ (mixed >> 13)
}

/// A fast loopback beacon on `group`.
pub fn beacon(multicast: (Ipv4Addr, u16)) -> Beacon {
    Beacon::loopback()
        .multicast_group(multicast.0)
        .port(multicast.1)
        .interval(Duration::from_millis(100))
}

/// The flags that point `plexus` at `group`.
pub fn beacon_flags(multicast: (Ipv4Addr, u16)) -> Vec<String> {
    vec![
        "--beacon-multicast-group".into(),
        multicast.0.to_string(),
        "--beacon-port".into(),
        multicast.1.to_string(),
    ]
}

/// A structured request, with a JSON Schema.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Greeting {
    /// Whom to greet.
    pub to: String,
    /// Whether to shout.
    pub excited: bool,
}

/// What `whoami` reports about the call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Who {
    pub session: Option<String>,
    pub trace: Option<String>,
}

/// The demo contract: every call kind once, several arguments, a context.
#[plexus::service(package = "greet", version = 1)]
pub trait Greeter {
    /// Greets `name`; rejects an empty name with code 400.
    async fn hello(&self, name: String) -> Result<String, Reject>;
    /// Greets as the request says.
    async fn greet(&self, greeting: Greeting) -> Result<String, Reject>;
    /// Adds two numbers.
    async fn add(&self, a: i64, b: i64) -> Result<i64, Reject>;
    /// Waves; nothing comes back.
    #[oneway]
    async fn wave(&self, from: String);
    /// How many waves arrived.
    async fn waves(&self) -> Result<u32, Reject>;
    /// Counts down from `from` to 1.
    async fn countdown(&self, from: u32) -> Result<BoxStream<u32>, Reject>;
    /// Sums a stream of numbers.
    async fn sum(&self, numbers: Streaming<u32>) -> Result<u64, Reject>;
    /// Upper-cases each word as it arrives.
    async fn shout(&self, words: Streaming<String>) -> Result<BoxStream<String>, Reject>;
    /// The session and `trace` metadata the call came with.
    async fn whoami(&self, ctx: CallContext) -> Result<Who, Reject>;
    /// Never answers (for drains and timeouts).
    async fn stall(&self) -> Result<(), Reject>;
}

/// The greeter's implementation.
#[derive(Default)]
pub struct Host {
    waves: AtomicU32,
}

impl Greeter for Host {
    async fn hello(&self, name: String) -> Result<String, Reject> {
        if name.is_empty() {
            return Err(Reject::new(400, "a greeting needs a name"));
        }
        Ok(format!("hello, {name}!"))
    }

    async fn greet(&self, greeting: Greeting) -> Result<String, Reject> {
        let text = format!("hello, {}", greeting.to);
        Ok(if greeting.excited {
            text.to_uppercase() + "!"
        } else {
            text
        })
    }

    async fn add(&self, a: i64, b: i64) -> Result<i64, Reject> {
        Ok(a + b)
    }

    async fn wave(&self, _from: String) {
        self.waves.fetch_add(1, Ordering::Relaxed);
    }

    async fn waves(&self) -> Result<u32, Reject> {
        Ok(self.waves.load(Ordering::Relaxed))
    }

    async fn countdown(&self, from: u32) -> Result<BoxStream<u32>, Reject> {
        Ok(futures_util::stream::iter((1..=from).rev()).boxed())
    }

    async fn sum(&self, mut numbers: Streaming<u32>) -> Result<u64, Reject> {
        let mut total = 0u64;
        while let Some(n) = numbers.recv().await {
            total += u64::from(n.map_err(|e| Reject::new(400, e.to_string()))?);
        }
        Ok(total)
    }

    async fn shout(&self, words: Streaming<String>) -> Result<BoxStream<String>, Reject> {
        Ok(words
            .map(|w| w.map(|w| w.to_uppercase()).unwrap_or_default())
            .boxed())
    }

    async fn whoami(&self, ctx: CallContext) -> Result<Who, Reject> {
        Ok(Who {
            session: ctx.session().map(|s| s.name().to_owned()),
            trace: ctx
                .metadata("trace")
                .map(|v| String::from_utf8_lossy(v).into_owned()),
        })
    }

    async fn stall(&self) -> Result<(), Reject> {
        std::future::pending().await
    }
}

pub use plexus_tests::inventory;

/// An in-memory warehouse serving the `.proto` contract.
pub struct Warehouse {
    stock: std::sync::Mutex<std::collections::BTreeMap<String, i64>>,
    touches: AtomicU32,
}

impl Default for Warehouse {
    fn default() -> Self {
        Warehouse {
            stock: std::sync::Mutex::new([("apple".to_owned(), 3), ("pear".to_owned(), 1)].into()),
            touches: AtomicU32::new(0),
        }
    }
}

impl Warehouse {
    fn apply(&self, a: &inventory::Adjustment) -> Result<inventory::Item, Reject> {
        let mut stock = self
            .stock
            .lock()
            .map_err(|_| Reject::new(500, "poisoned"))?;
        let quantity = stock.get(&a.sku).copied().unwrap_or(0) + a.delta;
        if quantity < 0 {
            return Err(Reject::new(409, format!("{} would go negative", a.sku)));
        }
        stock.insert(a.sku.clone(), quantity);
        Ok(item(&a.sku, quantity))
    }

    fn items(&self) -> Vec<inventory::Item> {
        let stock = self.stock.lock().unwrap_or_else(|e| e.into_inner());
        stock.iter().map(|(s, q)| item(s, *q)).collect()
    }
}

fn item(sku: &str, quantity: i64) -> inventory::Item {
    inventory::Item {
        sku: sku.to_owned(),
        name: sku.to_uppercase(),
        quantity,
    }
}

impl inventory::Inventory for Warehouse {
    async fn lookup(
        &self,
        _ctx: CallContext,
        r: inventory::ItemId,
    ) -> Result<inventory::Item, Reject> {
        self.items()
            .into_iter()
            .find(|i| i.sku == r.sku)
            .ok_or_else(|| Reject::new(404, format!("no item {}", r.sku)))
    }

    async fn adjust(
        &self,
        _ctx: CallContext,
        r: inventory::Adjustment,
    ) -> Result<inventory::Item, Reject> {
        self.apply(&r)
    }

    async fn touch(&self, _ctx: CallContext, _r: inventory::ItemId) {
        self.touches.fetch_add(1, Ordering::Relaxed);
    }

    async fn touches(&self, _ctx: CallContext) -> Result<inventory::Summary, Reject> {
        Ok(inventory::Summary {
            count: self.touches.load(Ordering::Relaxed),
            total: 0,
        })
    }

    async fn list(
        &self,
        _ctx: CallContext,
    ) -> Result<BoxStream<Result<inventory::Item, Reject>>, Reject> {
        Ok(futures_util::stream::iter(self.items().into_iter().map(Ok)).boxed())
    }

    async fn restock(
        &self,
        _ctx: CallContext,
        mut requests: Streaming<inventory::Adjustment>,
    ) -> Result<inventory::Summary, Reject> {
        let mut summary = inventory::Summary { count: 0, total: 0 };
        while let Some(a) = requests.recv().await {
            let a = a.map_err(|e| Reject::new(400, e.to_string()))?;
            self.apply(&a)?;
            summary.count += 1;
            summary.total += a.delta;
        }
        Ok(summary)
    }

    async fn sync(
        &self,
        _ctx: CallContext,
        requests: Streaming<inventory::Adjustment>,
    ) -> Result<BoxStream<Result<inventory::Item, Reject>>, Reject> {
        Ok(requests
            .map(|a| {
                let a = a.map_err(|e| Reject::new(400, e.to_string()))?;
                Ok(item(&a.sku, a.delta))
            })
            .boxed())
    }
}
