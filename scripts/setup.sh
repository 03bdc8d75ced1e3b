#!/usr/bin/env bash
# Sets up a fresh Debian machine: packages, then the three binaries
# (target/release/flotilla, flotilla-worker, flotilla-manager).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release --workspace
echo "built: $(ls target/release/flotilla target/release/flotilla-worker target/release/flotilla-manager | tr '\n' ' ')"
