#!/usr/bin/env bash
# The demo: builds shunt, starts a private containerd, and shows a pod's traffic redirected to its
# proxy with no capability in the pod. Run as root on a Debian/Ubuntu machine with a Rust
# toolchain: `sudo bash tests/demo.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/deps.sh
echo "building shunt and the demo (release)..."
cargo build --release --quiet --bin shunt --bin shunt-install --example demo
exec target/x86_64-unknown-linux-gnu/release/examples/demo
