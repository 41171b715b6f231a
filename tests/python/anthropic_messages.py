"""The official `anthropic` Python package as a tollgate client: the Messages API in front of an
OpenAI-compatible upstream, with an agent's tool loop.

Run by crates/tollgate-cli/tests/openai_python.rs against two live `tollgate serve` replicas on
one Redis, in front of a fake upstream that calls the tools it is given until the last message is
a tool result, then answers "tools said: ...". ANTHROPIC_BASE_URL and TOLLGATE_OTHER_BASE_URL are
the two replicas. Prints one line per check and a closing "N passed, N failed".
"""

import os

import anthropic
from checks import check, finish

first = anthropic.Anthropic(base_url=os.environ["ANTHROPIC_BASE_URL"], api_key="unused", max_retries=0)
other = anthropic.Anthropic(
    base_url=os.environ["TOLLGATE_OTHER_BASE_URL"], api_key="unused", max_retries=0
)

TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
    {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
]


def tool_results(message):
    """The client's side of the loop: run each tool, answer with its result."""
    uses = [block for block in message.content if block.type == "tool_use"]
    assert [u.name for u in uses] == ["get_weather", "get_time"], message.content
    assert [u.input for u in uses] == [{"i": 0}, {"i": 1}], message.content
    return [
        {"type": "tool_result", "tool_use_id": u.id, "content": f"{u.name} ok"} for u in uses
    ]


@check("a tool loop, each step on another replica")
def _():
    question = {"role": "user", "content": "plan my day"}
    m = first.messages.create(
        model="up/m", max_tokens=200, system="Be brief.", tools=TOOLS, messages=[question]
    )
    assert m.stop_reason == "tool_use", m
    m2 = other.messages.create(
        model="up/m",
        max_tokens=200,
        tools=TOOLS,
        messages=[
            question,
            {"role": "assistant", "content": m.content},
            {"role": "user", "content": tool_results(m)},
        ],
    )
    assert m2.stop_reason == "end_turn", m2
    assert m2.content[0].text == "tools said: get_weather ok, get_time ok", m2
    assert m2.usage.output_tokens > 0


@check("a streamed tool loop folds into the same blocks")
def _():
    question = {"role": "user", "content": "plan my evening"}
    with first.messages.stream(
        model="up/m", max_tokens=200, tools=TOOLS, messages=[question]
    ) as stream:
        m = stream.get_final_message()
    assert m.stop_reason == "tool_use", m
    text = ""
    with other.messages.stream(
        model="up/m",
        max_tokens=200,
        tools=TOOLS,
        messages=[
            question,
            {"role": "assistant", "content": m.content},
            {"role": "user", "content": tool_results(m)},
        ],
    ) as stream:
        for chunk in stream.text_stream:
            text += chunk
    assert text == "tools said: get_weather ok, get_time ok", text


@check("count_tokens counts without a call")
def _():
    counted = first.messages.count_tokens(
        model="up/m", messages=[{"role": "user", "content": "how many tokens is this?"}]
    )
    assert counted.input_tokens > 0, counted


@check("a bad request is BadRequestError in Anthropic's shape")
def _():
    try:
        first.messages.create(
            model="up/m",
            max_tokens=10,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"top_k": 3},
        )
    except anthropic.BadRequestError as e:
        assert e.body["error"]["type"] == "invalid_request_error", e.body
        assert "top_k" in e.body["error"]["message"], e.body
        return
    raise AssertionError("no error")


finish()
