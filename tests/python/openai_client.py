"""The official `openai` Python package as a tollgate client: chat, streaming, and errors.

Run by crates/tollgate-cli/tests/openai_python.rs against a live `tollgate serve`, with
OPENAI_BASE_URL, OPENAI_API_KEY (a key with room) and TOLLGATE_LIMITED_KEY (a key allowed one
request per minute) set. Prints one line per check and a closing "N passed, N failed".
"""

import os

import openai
from checks import check, finish

BASE = os.environ["OPENAI_BASE_URL"]
client = openai.OpenAI(base_url=BASE, api_key=os.environ["OPENAI_API_KEY"], max_retries=0)


@check("chat completion")
def _():
    r = client.chat.completions.create(
        model="mock/echo", temperature=0, messages=[{"role": "user", "content": "python says hi"}]
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == "This is a mock answer to: python says hi", r
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0


@check("a repeated request is a cache hit, seen in the raw headers")
def _():
    raw = client.chat.completions.with_raw_response.create(
        model="mock/echo", temperature=0, messages=[{"role": "user", "content": "python says hi"}]
    )
    assert raw.headers["x-tollgate-cache"] == "hit", dict(raw.headers)
    assert raw.parse().choices[0].message.content == "This is a mock answer to: python says hi"


@check("streaming, with usage")
def _():
    stream = client.chat.completions.create(
        model="mock/echo",
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream for python"}],
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == "This is a mock answer to: stream for python", text
    assert finish == "stop"
    assert usage and usage.completion_tokens == 9, usage


@check("models are listed")
def _():
    ids = [m.id for m in client.models.list()]
    assert "mock/echo" in ids, ids


@check("an unknown model is NotFoundError")
def _():
    try:
        client.chat.completions.create(model="nobody/x", messages=[{"role": "user", "content": "x"}])
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body
        return
    raise AssertionError("no error")


@check("an invalid request is BadRequestError naming the parameter")
def _():
    try:
        client.chat.completions.create(model="mock/echo", messages=[])
    except openai.BadRequestError as e:
        assert e.body["param"] == "messages", e.body
        return
    raise AssertionError("no error")


@check("a wrong key is AuthenticationError")
def _():
    bad = openai.OpenAI(base_url=BASE, api_key="tg-wrong", max_retries=0)
    try:
        bad.chat.completions.create(model="mock/echo", messages=[{"role": "user", "content": "x"}])
    except openai.AuthenticationError:
        return
    raise AssertionError("no error")


@check("a rate-limited key is RateLimitError with retry-after")
def _():
    limited = openai.OpenAI(base_url=BASE, api_key=os.environ["TOLLGATE_LIMITED_KEY"], max_retries=0)
    limited.chat.completions.create(model="mock/echo", messages=[{"role": "user", "content": "one"}])
    try:
        limited.chat.completions.create(model="mock/echo", messages=[{"role": "user", "content": "two"}])
    except openai.RateLimitError as e:
        assert int(e.response.headers["retry-after"]) >= 1
        assert e.response.headers["x-ratelimit-remaining-requests"] == "0"
        return
    raise AssertionError("no error")


finish()
