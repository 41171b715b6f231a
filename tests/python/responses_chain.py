"""A previous_response_id chain through the official `openai` package's Responses API.

Run by crates/tollgate-cli/tests/openai_python.rs against a real `tollgate serve` with
OPENAI_BASE_URL and OPENAI_API_KEY set.

    responses_chain.py chain        5 chained steps, a streamed 6th; prints the chain as JSON
    responses_chain.py continue     (CHAIN=that JSON, after Redis lost everything) continues the
                                    chain from the database, reads and deletes early responses
"""

import json
import os
import sys

import openai
from openai import OpenAI

MODEL = "mock/echo"


def chain(client):
    ids, inputs = [], []
    previous = None
    for step in range(5):
        kwargs = dict(
            model=MODEL,
            input=f"step {step}: remember the number {step * 7}",
            instructions="Answer briefly.",
            temperature=0,
        )
        if previous:
            kwargs["previous_response_id"] = previous
        r = client.responses.create(**kwargs)
        assert r.status == "completed", r
        assert r.output_text, r
        assert r.previous_response_id == previous, (r.previous_response_id, previous)
        ids.append(r.id)
        inputs.append(r.usage.input_tokens)
        previous = r.id
    # Each step sends the whole conversation so far, so the prompt grows step by step.
    assert all(b > a for a, b in zip(inputs, inputs[1:])), inputs

    # A sixth, streamed step on the same chain.
    text, final = "", None
    for event in client.responses.create(
        model=MODEL, input="step 5: and now?", previous_response_id=previous, stream=True
    ):
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.completed":
            final = event.response
    assert final is not None and final.output_text == text and text, (final, text)
    assert final.usage.input_tokens > inputs[-1], (final.usage, inputs)
    ids.append(final.id)
    inputs.append(final.usage.input_tokens)

    got = client.responses.retrieve(ids[0])
    assert got.id == ids[0] and got.output_text, got
    print(json.dumps({"ids": ids, "inputs": inputs}))


def continue_chain(client):
    data = json.loads(os.environ["CHAIN"])
    ids, inputs = data["ids"], data["inputs"]
    r = client.responses.create(
        model=MODEL, input="step 6: still there?", previous_response_id=ids[-1], temperature=0
    )
    assert r.status == "completed", r
    # The whole chain came back from the database: the prompt is longer still.
    assert r.usage.input_tokens > inputs[-1], (r.usage, inputs)
    for rid in ids:
        got = client.responses.retrieve(rid)
        assert got.id == rid and got.output_text, got
    deleted = client.responses.delete(ids[0])
    try:
        client.responses.retrieve(ids[0])
        raise AssertionError("a deleted response was still readable")
    except openai.NotFoundError:
        pass
    try:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_does_not_exist")
        raise AssertionError("an unknown previous_response_id was accepted")
    except openai.BadRequestError as e:
        assert "not found" in str(e), e
    print("continued ok")


if __name__ == "__main__":
    client = OpenAI(max_retries=0)
    {"chain": chain, "continue": continue_chain}[sys.argv[1]](client)
