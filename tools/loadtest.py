#!/usr/bin/env python3
"""Load test for `kestrel serve` (or any OpenAI-compatible server), standard library only.

C clients each send streaming greedy /v1/completions requests back to back until N requests
have finished; prints requests/s, aggregate generated tokens/s, time to first token and
inter-token latency (p50/p99) as a table, or JSON with --json.

    python3 tools/loadtest.py --url http://127.0.0.1:8080 -c 64 -n 256 --prompt-words 100 --max-tokens 128
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse


def percentile(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def one_request(url, body, timeout):
    """Send one streaming request; return (ttft, [inter-token gaps], tokens) in seconds."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    first, last, gaps, tokens = None, None, [], 0
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("choices") and chunk["choices"][0].get("text"):
            now = time.perf_counter()
            tokens += 1
            if first is None:
                first = now
            else:
                gaps.append(now - last)
            last = now
        if chunk.get("usage"):
            tokens = chunk["usage"].get("completion_tokens", tokens)
    conn.close()
    return (first - t0) if first else float("nan"), gaps, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("-c", "--clients", type=int, default=64)
    ap.add_argument("-n", "--requests", type=int, default=256)
    ap.add_argument("--prompt-words", type=int, default=100)
    ap.add_argument("--shared-prefix-words", type=int, default=0,
                    help="words every prompt starts with (a shared system prompt: prefix reuse)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    lock = threading.Lock()
    started = [0]
    ttfts, gaps, tokens, errors = [], [], [0], []

    def client(cid):
        while True:
            with lock:
                if started[0] >= a.requests:
                    return
                i = started[0]
                started[0] += 1
            # Distinct prompts, so no two requests are the same work.
            shared = " ".join(f"s{k % 997}" for k in range(a.shared_prefix_words))
            words = shared + " " + " ".join(f"w{(i * 7919 + k) % 997}" for k in range(a.prompt_words))
            body = json.dumps({
                "prompt": words, "max_tokens": a.max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True},
            })
            try:
                t, g, n = one_request(a.url, body, a.timeout)
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                ttfts.append(t)
                gaps.extend(g)
                tokens[0] += n

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done = len(ttfts)
    out = {
        "clients": a.clients, "requests": done, "errors": len(errors), "wall_s": wall,
        "requests_per_s": done / wall, "generated_tokens_per_s": tokens[0] / wall,
        "ttft_p50_ms": 1e3 * percentile(ttfts, 50), "ttft_p99_ms": 1e3 * percentile(ttfts, 99),
        "itl_p50_ms": 1e3 * percentile(gaps, 50), "itl_p99_ms": 1e3 * percentile(gaps, 99),
        "itl_mean_ms": 1e3 * statistics.fmean(gaps) if gaps else float("nan"),
    }
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        print("| clients | requests | req/s | gen t/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {a.clients} | {done} | {out['requests_per_s']:.2f} | {out['generated_tokens_per_s']:.0f} "
              f"| {out['ttft_p50_ms']:.0f} ms | {out['ttft_p99_ms']:.0f} ms "
              f"| {out['itl_p50_ms']:.1f} ms | {out['itl_p99_ms']:.1f} ms |")
    if errors:
        print(f"{len(errors)} errors, first: {errors[0]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
