#!/usr/bin/env bash
# The test command: formatting, lints, one benchmark run for the record, then every test suite
# (as root, in real network namespaces). Run as root: `sudo bash tests/run.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# Figures, not assertions: the bench reports ratios measured in this one run.
SHUNT_BENCH_PODS="${SHUNT_BENCH_PODS:-200}" cargo bench --bench add
cargo test
