//! `docs/GETTING_STARTED.md` and this crate are the same project: every file
//! the guide shows is here, byte for byte (the path of the Plexus checkout in
//! `Cargo.toml` aside), every file here is in the guide, and the program
//! prints what the guide says it prints. This file is the only one that is
//! not part of the guide.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn guide() -> String {
    let path = crate_dir().join("../docs/GETTING_STARTED.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The guide's files: each `<!-- file: PATH -->` marker and the fenced
/// block after it.
fn guide_files(guide: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        let Some(path) = line
            .trim()
            .strip_prefix("<!-- file: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines
            .by_ref()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("no code block after the marker for {path}"));
        assert!(
            fence.starts_with("```"),
            "{path}: expected a code block, found {fence:?}"
        );
        let mut text = String::new();
        for line in lines.by_ref() {
            if line.starts_with("```") {
                break;
            }
            text.push_str(line);
            text.push('\n');
        }
        files.push((path.to_owned(), text));
    }
    files
}

/// The guide's crate sits next to a checkout of Plexus (`../plexus/...`);
/// this copy sits inside the checkout (`../...`).
fn as_in_this_checkout(path: &str, text: &str) -> String {
    if path == "Cargo.toml" {
        text.replace("path = \"../plexus/", "path = \"../")
    } else {
        text.to_owned()
    }
}

/// Every file of this crate but its tests, relative to the crate.
fn project_files(dir: &Path, under: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("readable crate directory") {
        let entry = entry.expect("directory entry");
        let path = entry.path();
        let relative = path.strip_prefix(under).expect("under the crate");
        if relative.starts_with("tests") || relative.starts_with("target") {
            continue;
        }
        if path.is_dir() {
            project_files(&path, under, out);
        } else {
            out.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn the_guide_shows_exactly_the_files_of_this_project() {
    let guide = guide();
    let shown = guide_files(&guide);
    assert!(!shown.is_empty(), "the guide marks no files");
    for (path, text) in &shown {
        let here = std::fs::read_to_string(crate_dir().join(path))
            .unwrap_or_else(|e| panic!("the guide shows {path}, which is not in guide/: {e}"));
        assert_eq!(
            as_in_this_checkout(path, text),
            here,
            "{path} differs between docs/GETTING_STARTED.md and guide/{path}"
        );
    }
    let mut files = Vec::new();
    project_files(&crate_dir(), &crate_dir(), &mut files);
    files.sort();
    let mut shown_paths: Vec<String> = shown.iter().map(|(p, _)| p.clone()).collect();
    shown_paths.sort();
    assert_eq!(
        files, shown_paths,
        "every file of guide/ is in the guide, once"
    );
}

#[test]
fn the_program_serves_and_calls_both_contracts_as_the_guide_says() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hello"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the guide's program starts");
    // The program serves, calls and exits on its own; bound the wait.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("waitable").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the guide's program did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("serving on tcp://127.0.0.1:"),
        "{stdout}"
    );
    assert_eq!(
        &lines[1..],
        ["Hello, Ada!", "rejected: greet whom?", "Hello, Grace!"],
        "{stdout}"
    );
    // The guide shows the same output.
    let guide = guide();
    for line in &lines[1..] {
        assert!(guide.contains(line), "the guide does not show {line:?}");
    }
}
