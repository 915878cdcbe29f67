#!/usr/bin/env python3
"""Drive a running `kestrel serve` with the official `openai` client.

    python3 crates/server/tests/openai_client.py --base-url http://127.0.0.1:8080 [--api-key KEY]

Covers chat and completions, streaming and not, stop sequences, seed reproducibility,
logprobs, usage, and error statuses. Exits non-zero if any check fails; the last line is
'N passed, N failed'. Run by crates/server/tests/openai_client.rs against a test server.
"""

import argparse
import sys
import traceback

import openai
from openai import OpenAI

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def chat_msgs(text="Write one sentence about the sea."):
    return [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": text}]


@check
def models_list(c, model):
    ids = [m.id for m in c.models.list().data]
    assert ids == [model], ids
    assert c.models.retrieve(model).id == model


@check
def chat_plain_and_usage(c, model):
    r = c.chat.completions.create(model=model, messages=chat_msgs(), max_tokens=16, temperature=0)
    ch = r.choices[0]
    assert r.object == "chat.completion", r.object
    assert ch.message.role == "assistant"
    assert ch.message.content, "empty reply"
    assert ch.finish_reason in ("stop", "length"), ch.finish_reason
    u = r.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= 16, u
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
    if ch.finish_reason == "length":
        assert u.completion_tokens == 16, u


@check
def chat_stream_equals_plain(c, model):
    kw = dict(model=model, messages=chat_msgs(), max_completion_tokens=20, temperature=0)
    plain = c.chat.completions.create(**kw)
    text, finish, usage, roles = "", None, None, []
    for chunk in c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        assert chunk.object == "chat.completion.chunk", chunk.object
        if chunk.usage is not None:
            assert chunk.choices == [], "the usage chunk has no choices"
            usage = chunk.usage
            continue
        d = chunk.choices[0].delta
        if d.role:
            roles.append(d.role)
        text += d.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert roles == ["assistant"], roles
    assert text == plain.choices[0].message.content, (text, plain.choices[0].message.content)
    assert finish == plain.choices[0].finish_reason, (finish, plain.choices[0].finish_reason)
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens, usage
    assert usage.prompt_tokens == plain.usage.prompt_tokens, usage


@check
def completions_plain_and_stream(c, model):
    kw = dict(model=model, prompt="def fibonacci(n):", max_tokens=24, temperature=0)
    plain = c.completions.create(**kw)
    assert plain.object == "text_completion"
    assert plain.choices[0].text, "empty completion"
    assert plain.usage.completion_tokens > 0
    text, finish = "", None
    for chunk in c.completions.create(stream=True, **kw):
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
    assert text == plain.choices[0].text, (text, plain.choices[0].text)
    assert finish == plain.choices[0].finish_reason


@check
def completions_default_max_tokens_is_16(c, model):
    r = c.completions.create(model=model, prompt="1, 2, 3, 4,", temperature=0)
    assert r.usage.completion_tokens <= 16, r.usage
    assert r.choices[0].finish_reason == "length" or r.usage.completion_tokens < 16


@check
def stop_sequences(c, model):
    kw = dict(model=model, prompt="def fibonacci(n):", max_tokens=40, temperature=0)
    full = c.completions.create(**kw).choices[0].text
    mid = len(full) // 2
    stop = full[mid:mid + 4]
    assert stop.strip(), f"no usable stop string in {full!r}"
    want = full[: full.find(stop)]
    for s in (stop, [stop, "\u00a7never\u00a7"]):
        r = c.completions.create(stop=s, **kw)
        assert r.choices[0].text == want, (r.choices[0].text, want, stop)
        assert r.choices[0].finish_reason == "stop"
        streamed = "".join(ch.choices[0].text for ch in c.completions.create(stream=True, stop=s, **kw) if ch.choices)
        assert streamed == want, (streamed, want)
    # Chat too.
    full = c.chat.completions.create(model=model, messages=chat_msgs(), max_tokens=30, temperature=0).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 3]
    r = c.chat.completions.create(model=model, messages=chat_msgs(), max_tokens=30, temperature=0, stop=[stop])
    assert r.choices[0].message.content == full[: full.find(stop)], (r.choices[0].message.content, full, stop)
    assert r.choices[0].finish_reason == "stop"


@check
def seed_reproducibility(c, model):
    kw = dict(model=model, messages=chat_msgs("Invent a name for a new fruit."), max_tokens=24, temperature=1.0)
    a = c.chat.completions.create(seed=1234, **kw).choices[0].message.content
    b = c.chat.completions.create(seed=1234, **kw).choices[0].message.content
    assert a == b, (a, b)
    others = {c.chat.completions.create(seed=s, **kw).choices[0].message.content for s in (1, 2, 3)}
    assert others != {a}, "different seeds should not all give the same text"
    # Streaming with the same seed gives the same text as well.
    s = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(seed=1234, stream=True, **kw) if ch.choices)
    assert s == a, (s, a)


@check
def chat_logprobs(c, model):
    r = c.chat.completions.create(model=model, messages=chat_msgs(), max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs.content
    assert len(lp) == r.usage.completion_tokens, (len(lp), r.usage)
    for t in lp:
        assert t.logprob <= 0.0, t
        assert len(t.top_logprobs) == 3, t
        tops = [x.logprob for x in t.top_logprobs]
        assert tops == sorted(tops, reverse=True), tops
        # Greedy: the chosen token is the most likely one.
        assert t.top_logprobs[0].token == t.token and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4, t
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token or "\ufffd" in t.token, t
    assert "".join(t.token for t in lp).startswith(r.choices[0].message.content[:1])
    # Streaming carries the same logprobs.
    streamed = []
    for ch in c.chat.completions.create(model=model, messages=chat_msgs(), max_tokens=8, temperature=0, logprobs=True, top_logprobs=3, stream=True):
        if ch.choices and ch.choices[0].logprobs:
            streamed += ch.choices[0].logprobs.content
    assert [t.token for t in streamed] == [t.token for t in lp]
    # Without logprobs, none come back.
    r = c.chat.completions.create(model=model, messages=chat_msgs(), max_tokens=4, temperature=0)
    assert r.choices[0].logprobs is None


@check
def completion_logprobs(c, model):
    r = c.completions.create(model=model, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    assert all(x <= 0.0 for x in lp.token_logprobs)
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


@check
def errors_have_openai_statuses(c, model):
    try:
        c.chat.completions.create(model="no-such-model", messages=chat_msgs(), max_tokens=2)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.code == "model_not_found", e
    try:
        c.chat.completions.create(model=model, messages=[], max_tokens=2)
        raise AssertionError("empty messages accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.param == "messages", e
    try:
        c.completions.create(model=model, prompt="hi", max_tokens=10**9)
        raise AssertionError("huge max_tokens accepted")
    except openai.BadRequestError as e:
        assert e.code == "context_length_exceeded", e
    bad = OpenAI(base_url=c.base_url, api_key="wrong-key", max_retries=0)
    try:
        bad.models.list()
        raise AssertionError("wrong API key accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True, help="server address, e.g. http://127.0.0.1:8080")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--model", default=None, help="model id (default: the server's only model)")
    a = ap.parse_args()
    c = OpenAI(base_url=a.base_url.rstrip("/") + "/v1", api_key=a.api_key, max_retries=0, timeout=120)
    model = a.model or c.models.list().data[0].id
    print(f"openai {openai.__version__} against {a.base_url} (model {model})", flush=True)
    passed = failed = 0
    for fn in CHECKS:
        try:
            fn(c, model)
            passed += 1
            print(f"ok   {fn.__name__}", flush=True)
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__}", flush=True)
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
