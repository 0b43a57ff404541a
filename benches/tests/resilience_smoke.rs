//! The resilience benchmark still works end to end: one of its quickest
//! rows (a peer defining 4097 operation names, cut off in milliseconds)
//! runs against a real victim process and is reported. The figures are the
//! benchmark's business (`BENCHMARKS.md`); this only keeps the mode from
//! rotting, since CI never runs the full benchmark.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far more than the row takes (under two seconds in a debug build).
const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn one_attack_row_is_measured_against_a_victim_process() {
    let mut bench = Command::new(env!("CARGO_BIN_EXE_plexus-bench"))
        .args(["--attack", "many-names", "--no-write"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start plexus-bench");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = bench.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = bench.kill();
            let _ = bench.wait();
            panic!("plexus-bench --attack many-names ran past {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    bench
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    assert!(status.success(), "{status}\n{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("| 4097 interned operation names |"))
        .unwrap_or_else(|| panic!("no table row in:\n{out}"));
    assert!(row.contains("cut off after"), "{row}");
    assert!(row.contains("more than 4096 operations"), "{row}");
    assert!(
        row.contains(" 0 failed"),
        "the well-behaved client failed: {row}"
    );
}
