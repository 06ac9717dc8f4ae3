#!/usr/bin/env bash
# The demo: builds shunt and shows it redirecting a pod's traffic in real network namespaces.
# Run as root on a Debian/Ubuntu machine with a Rust toolchain: `sudo bash tests/demo.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/deps.sh
cargo build --release --quiet --bin shunt --example demo
exec cargo run --release --quiet --example demo
