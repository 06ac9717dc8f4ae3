#!/usr/bin/env bash
# The test command: formatting, lints, one run of each benchmark for the record, then every test
# suite (as root, in real network namespaces, the end-to-end one under a private containerd).
# Run as root: `sudo bash tests/run.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
bash tests/manifests.sh
# Figures, not assertions: the benches report ratios and differences measured in this one run.
SHUNT_BENCH_PODS="${SHUNT_BENCH_PODS:-200}" SHUNT_SANDBOX_PODS="${SHUNT_SANDBOX_PODS:-200}" \
  cargo bench --bench add --bench sandbox
cargo test
