"""An agent's tool loop through tollgate's Responses API with the official `openai` package.

Run by crates/tollgate-cli/tests/openai_python.rs against two live `tollgate serve` replicas on
one Redis, in front of a fake OpenAI-compatible upstream that calls the tools it is given until
the last message is a tool result, then answers "tools said: ...". OPENAI_BASE_URL and
TOLLGATE_OTHER_BASE_URL are the two replicas. Prints one line per check and a closing
"N passed, N failed".
"""

import json
import os

import openai
from checks import check, finish

first = openai.OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="unused", max_retries=0)
other = openai.OpenAI(base_url=os.environ["TOLLGATE_OTHER_BASE_URL"], api_key="unused", max_retries=0)

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
    {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}},
]


def run_tools(response):
    """The client's side of the loop: run each call, send its output back."""
    calls = [item for item in response.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_time"], response.output
    for i, c in enumerate(calls):
        assert json.loads(c.arguments) == {"i": i}, c.arguments
    return [
        {"type": "function_call_output", "call_id": c.call_id, "output": f"{c.name} ok"}
        for c in calls
    ]


@check("a tool loop with previous_response_id, each step on another replica")
def _():
    r = first.responses.create(model="up/m", input="plan my day", tools=TOOLS)
    assert r.status == "completed", r
    outputs = run_tools(r)
    r2 = other.responses.create(
        model="up/m", previous_response_id=r.id, input=outputs, tools=TOOLS
    )
    assert r2.output_text == "tools said: get_weather ok, get_time ok", r2
    got = first.responses.retrieve(r2.id)
    assert got.output_text == r2.output_text


@check("a streamed tool loop: function-call events, then the answer")
def _():
    kinds = []
    arguments = {}
    final = None
    with first.responses.stream(model="up/m", input="plan my evening", tools=TOOLS) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.function_call_arguments.delta":
                arguments[event.output_index] = arguments.get(event.output_index, "") + event.delta
        final = stream.get_final_response()
    assert kinds.count("response.output_item.added") == 2, kinds
    assert "response.function_call_arguments.done" in kinds, kinds
    assert arguments == {0: '{"i": 0}', 1: '{"i": 1}'}, arguments
    outputs = run_tools(final)
    text = ""
    with other.responses.stream(
        model="up/m", previous_response_id=final.id, input=outputs, tools=TOOLS
    ) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                text += event.delta
    assert text == "tools said: get_weather ok, get_time ok", text


@check("a hosted tool is a BadRequestError naming it")
def _():
    try:
        first.responses.create(model="up/m", input="x", tools=[{"type": "web_search"}])
    except openai.BadRequestError as e:
        assert "web_search" in str(e), e
        return
    raise AssertionError("no error")


finish()
