//! The echo and greeter examples across processes, over every URL scheme a
//! process can listen on: `serve` in one process, `call` from another, as the
//! README shows.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The longest a server may take to say where it listens, or a caller to finish.
const STEP: Duration = Duration::from_secs(30);

/// A server process, killed when dropped.
struct Serving {
    child: Child,
    url: String,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bin serve <url> [--tls-dir dir]` and waits for the URL it prints.
fn serve(bin: &str, url: &str, tls_dir: &Path) -> Serving {
    let mut child = Command::new(bin)
        .args(["serve", url, "--tls-dir"])
        .arg(tls_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the server");
    let stdout = child.stdout.take().expect("piped stdout");
    let scheme = url.split("://").next().expect("scheme").to_owned();
    let (found, wait) = mpsc::channel();
    // Reads every line (so the server never blocks on a full pipe) and
    // reports the first URL of the right scheme.
    std::thread::spawn(move || {
        let mut found = Some(found);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let prefix = format!("{scheme}://");
            if let Some(at) = line.find(&prefix) {
                if let Some(found) = found.take() {
                    let _ = found.send(line[at..].trim().to_owned());
                }
            }
        }
    });
    let mut serving = Serving {
        child,
        url: String::new(),
    };
    serving.url = wait
        .recv_timeout(STEP)
        .unwrap_or_else(|_| panic!("{bin} serve {url} printed no URL within {STEP:?}"));
    serving
}

/// Runs `bin call <args..> --tls-dir dir` to completion, bounded by [`STEP`].
fn call(bin: &str, args: &[&str], tls_dir: &Path) -> Output {
    let mut child = Command::new(bin)
        .arg("call")
        .args(args)
        .arg("--tls-dir")
        .arg(tls_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the caller");
    let started = std::time::Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > STEP {
            let _ = child.kill();
            panic!("{bin} call {args:?} did not finish within {STEP:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A scratch directory for sockets and development certificates.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plexus-examples-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Every scheme a separate process can reach, as a URL to bind.
fn bind_urls(dir: &Path) -> Vec<String> {
    let mut urls: Vec<String> = ["tcp", "tls", "ws", "wss", "quic"]
        .iter()
        .map(|scheme| format!("{scheme}://127.0.0.1:0"))
        .collect();
    urls.push(format!("unix://{}", dir.join("example.sock").display()));
    urls
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn echo_runs_across_processes_over_every_scheme() {
    let bin = env!("CARGO_BIN_EXE_echo");
    let dir = scratch("echo");
    for url in bind_urls(&dir) {
        let server = serve(bin, &url, &dir);
        let output = call(bin, &[&server.url, "hello"], &dir);
        let out = text(&output);
        assert!(output.status.success(), "{url}: {out}");
        assert!(out.contains("echo   -> hello"), "{url}: {out}");
        assert!(out.contains("shout  -> HELLO"), "{url}: {out}");
        assert!(out.contains("rejected: code 400"), "{url}: {out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn greeter_runs_across_processes_over_every_scheme() {
    let bin = env!("CARGO_BIN_EXE_greeter");
    let dir = scratch("greeter");
    for url in bind_urls(&dir) {
        let server = serve(bin, &url, &dir);
        let output = call(bin, &[&server.url], &dir);
        let out = text(&output);
        assert!(output.status.success(), "{url}: {out}");
        assert!(out.contains("hello, ada!"), "{url}: {out}");
        assert!(out.contains("rejected as expected"), "{url}: {out}");
        assert!(out.contains("countdown: 1"), "{url}: {out}");
        assert!(out.contains("waves so far: 1"), "{url}: {out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
