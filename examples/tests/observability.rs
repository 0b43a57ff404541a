//! The observability examples as their doc comments run them: `trace`
//! prints one trace across three endpoints (or exports it as OTLP/JSON),
//! and `metrics` serves Prometheus text on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The longest any example may take to say what the test waits for.
const BOUND: Duration = Duration::from_secs(60);

/// Runs `bin args` to completion within [`BOUND`]; its success and stdout.
fn run(bin: &str, args: &[&str]) -> (bool, String) {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the example");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (done, output) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        let _ = done.send(text);
    });
    let Ok(text) = output.recv_timeout(BOUND) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{bin} {args:?} did not finish within {BOUND:?}");
    };
    let status = child.wait().expect("wait");
    (status.success(), text)
}

#[test]
fn trace_prints_one_trace_of_six_spans_across_three_endpoints() {
    let (ok, out) = run(env!("CARGO_BIN_EXE_trace"), &[]);
    assert!(ok, "trace failed:\n{out}");
    assert_eq!(out.matches("trace ").count(), 1, "one trace:\n{out}");
    assert!(out.contains("(6 spans)"), "{out}");
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(" span ")).collect();
    assert_eq!(lines.len(), 6, "{out}");
    // Nesting: the shop's call, the orders server, and under it two calls
    // to stock each with its server span; the umbrella was rejected.
    assert!(
        lines[0].starts_with("└─ orders.Orders/place [client"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("   └─ orders.Orders/place [server]"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("      ├─ stock.Stock/reserve [client"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("      │  └─ stock.Stock/reserve [server]"),
        "{out}"
    );
    assert!(
        lines[4].starts_with("      └─ stock.Stock/reserve [client"),
        "{out}"
    );
    assert!(
        lines[5].starts_with("         └─ stock.Stock/reserve [server]"),
        "{out}"
    );
    assert!(lines[5].ends_with("rejected 409"), "{out}");
}

#[test]
fn trace_exports_otlp_json_with_parent_links() {
    let (ok, out) = run(env!("CARGO_BIN_EXE_trace"), &["--otlp-json"]);
    assert!(ok, "trace --otlp-json failed:\n{out}");
    let body: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON document");
    let spans = body["resourceSpans"][0]["scopeSpans"][0]["spans"]
        .as_array()
        .expect("spans");
    assert_eq!(spans.len(), 6);
    let trace = spans[0]["traceId"].as_str().expect("a trace id");
    assert_eq!(trace.len(), 32);
    assert!(spans.iter().all(|s| s["traceId"] == trace));
    let ids: Vec<&str> = spans.iter().filter_map(|s| s["spanId"].as_str()).collect();
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| s.get("parentSpanId").is_none())
        .collect();
    assert_eq!(roots.len(), 1, "one root: the shop's call");
    assert_eq!(roots[0]["kind"], 3, "a client span");
    for s in spans.iter().filter(|s| s.get("parentSpanId").is_some()) {
        let parent = s["parentSpanId"].as_str().expect("hex");
        assert!(ids.contains(&parent), "every parent is in the trace");
    }
    let rejected = spans.iter().filter(|s| s["status"]["code"] == 2).count();
    assert_eq!(rejected, 2, "the rejected reserve, on both sides");
}

/// Kills the example when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn metrics_serves_prometheus_text_on_loopback() {
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_metrics"))
            .args(["--listen", "127.0.0.1:0", "--calls", "4"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn metrics"),
    );
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut url = None;
    loop {
        let line = rx
            .recv_timeout(BOUND)
            .expect("metrics reports within the bound");
        if let Some(u) = line.strip_prefix("metrics: ") {
            url = Some(u.to_owned());
        }
        if line.starts_with("made 4 rounds") {
            break;
        }
    }
    let url = url.expect("the metrics URL was printed");
    let authority = url
        .strip_prefix("http://")
        .and_then(|r| r.strip_suffix("/metrics"))
        .expect("http://127.0.0.1:PORT/metrics");
    assert!(authority.starts_with("127.0.0.1:"), "{url}");

    let mut http = std::net::TcpStream::connect(authority).expect("the port listens");
    http.set_read_timeout(Some(BOUND)).expect("timeout");
    write!(
        http,
        "GET /metrics HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    http.read_to_string(&mut response).expect("response");
    let (head, text) = response.split_once("\r\n\r\n").expect("headers, then body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );

    let labels = r#"rpc_system="plexus",rpc_service="greet.Greeter",rpc_method="hello""#;
    for line in [
        format!("rpc_client_call_started{{{labels}}} 8"),
        format!("rpc_server_call_started{{{labels}}} 8"),
        format!(r#"rpc_client_call_handled{{{labels},rpc_plexus_outcome="ok"}} 4"#),
        format!(
            r#"rpc_server_call_handled{{{labels},rpc_plexus_outcome="rejected",rpc_plexus_code="400"}} 4"#
        ),
        r#"plexus_connections_open{network_transport="tcp"} 2"#.to_owned(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }
    assert!(
        text.contains("# TYPE rpc_client_call_duration histogram"),
        "{text}"
    );
    assert!(
        text.contains(r#"rpc_client_call_duration_count{rpc_system="plexus",rpc_service="greet.Greeter",rpc_method="countdown",rpc_plexus_outcome="ok"} 4"#),
        "{text}"
    );
    assert!(
        text.contains(r#"rpc_client_response_size_count{rpc_system="plexus",rpc_service="greet.Greeter",rpc_method="countdown"} 12"#),
        "three numbers per countdown: {text}"
    );
}
