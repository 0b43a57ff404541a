#!/usr/bin/env bash
# Builds `plexus-bench` from a commit without the per-call observability
# (issue #14), as target/observe-baseline/plexus-bench, for
#   cargo run --release -p plexus-bench -- --observe --baseline target/observe-baseline/plexus-bench
#
# usage: benches/observe-baseline.sh [REV]
# REV defaults to the merge base with `main` while that has no
# runtime/src/observe/; once it has, pass the main commit before the merge
# that brought it in (e.g. `git rev-parse <that merge>^1`).
#
# The commit's tree is exported under target/observe-baseline/src and built
# into this workspace's own target/ (dependencies shared); the binary is
# copied out and target/release/plexus-bench removed, so the next
# `cargo run --release -p plexus-bench` links this tree's bench again.
set -euo pipefail
cd "$(dirname "$0")/.."

rev=${1:-$(git merge-base HEAD main)}
if git cat-file -e "$rev:runtime/src/observe/mod.rs" 2>/dev/null; then
  echo "$rev already has runtime/src/observe/: pass a commit from before it" >&2
  exit 2
fi
out=target/observe-baseline
rm -rf "$out/src"
mkdir -p "$out/src"
git archive "$rev" | tar -x -C "$out/src"
cargo build --release -p plexus-bench --manifest-path "$out/src/Cargo.toml" --target-dir target
cp target/release/plexus-bench "$out/plexus-bench"
rm -f target/release/plexus-bench
rm -rf "$out/src"
echo "$out/plexus-bench: plexus-bench at $(git rev-parse --short "$rev")"
