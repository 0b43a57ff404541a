//! The chat example as its doc comment runs it: nodes on mutual TLS with a
//! session key find each other, print each peer's verified certificate,
//! chat, and see one of them leave.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The longest the whole demo may take (it needs well under a second).
const BOUND: Duration = Duration::from_secs(60);

/// Runs `chat <args>` to completion within [`BOUND`]; returns its output.
fn chat(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chat");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (done, output) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        let _ = stderr.read_to_string(&mut text);
        let _ = done.send(text);
    });
    let Ok(text) = output.recv_timeout(BOUND) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("chat {args:?} did not finish within {BOUND:?}");
    };
    let status = child.wait().expect("wait");
    (status.success(), text)
}

#[test]
fn chat_on_tls_with_a_key_links_with_verified_certificates_and_sees_a_leave() {
    let (ok, out) = chat(&["--nodes", "3", "--tls", "--key", "example test key"]);
    assert!(ok, "chat failed:\n{out}");
    assert_eq!(out.matches(" is up as ").count(), 3, "{out}");
    assert_eq!(out.matches("on tls://127.0.0.1:").count(), 3, "{out}");
    // Each of 3 nodes links 2 peers, each shown by its certificate.
    let linked = out
        .lines()
        .filter(|l| {
            l.contains(" linked ")
                && l.contains("certificate CN=node-")
                && l.contains("issued by CN=Plexus examples development CA")
        })
        .count();
    assert_eq!(linked, 6, "{out}");
    assert!(out.contains("all 3 nodes are in group \"lobby\""), "{out}");
    assert_eq!(out.matches("delivered").count(), 6, "{out}");
    assert_eq!(out.matches(" leave").count(), 2, "{out}");
}

#[test]
fn chat_refuses_an_empty_key() {
    let (ok, out) = chat(&["--key", ""]);
    assert!(!ok);
    assert!(out.contains("non-empty secret"), "{out}");
}
