#!/bin/bash
# Carry the three real models to the GPU machine, which has no network and takes 64 MiB per call
# (docs/benchmarks/real-models-gpu.md). Here, from the repo root:
#   bash tools/gpu-real-models/split.sh      # .kestrel-carry/p00..p31 (hard links) and .kestrel-carry/ref
# Then, on the device, with the machine kept warm (it is given back after 30 s idle):
#   1. carry .kestrel-carry/ref:  mkdir -p /tmp/kb && cp -r .kestrel-carry/ref/* /tmp/kb/
#   2. for each NN, carry .kestrel-carry/pNN:  bash /tmp/kb/append.sh NN
#   3. carry .kestrel-carry/ref:  bash .kestrel-carry/ref/gputest.sh gpu_
set -euo pipefail
M=${KESTREL_HOME:-$HOME/.cache/kestrel}/models
mkdir -p /tmp/kparts .kestrel-carry/ref/testdata
(cd /tmp/kparts && rm -f x* && cat "$M/gemma3-270m.gguf" "$M/qwen2.5-coder-0.5b.gguf" \
    "$M/qwen2.5-coder-1.5b.gguf" | split -b 56M -d -a 2 - x)
for f in /tmp/kparts/x*; do n=${f##*/x}; mkdir -p .kestrel-carry/p$n; ln -f "$f" .kestrel-carry/p$n/part; done
cargo test --release -p kestrel-cli --test reference --no-run
strip -o .kestrel-carry/ref/kestrel target/release/kestrel
strip -o .kestrel-carry/ref/reference "$(ls -t target/release/deps/reference-* | grep -v '\.d$' | head -1)"
cp ../shared/testdata/*.json .kestrel-carry/ref/testdata/
cp tools/gpu-real-models/{append,extract,gputest}.sh .kestrel-carry/ref/
