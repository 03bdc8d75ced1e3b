#!/usr/bin/env bash
# The test command (README "Testing"): installs what the tests need, checks
# formatting and lints, builds, and runs every test. Run as root: the tests
# start real daemons that create namespaces, mounts and cgroups.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace
cargo test --workspace -- --test-threads="${FLOTILLA_TEST_THREADS:-4}"
