"""An app written for the OpenAI API, pointed at a Seam agent: the official `openai` package
(PyPI), chat completions streaming and not, a conversation, a legacy completion, embeddings,
the model list and two refusals. Prints one JSON object for the Rust test that runs it.

usage: openai_client.py BASE_URL   (e.g. http://127.0.0.1:8080/v1)
"""

import json
import sys

import openai
from openai import OpenAI

QUESTION = "What is the capital of France?"
# With "You are a concise assistant." the model's first reply token is a tie ("The" 24.695 vs "La"
# 24.693 in the f32 reference), which int8 kernels decide differently on different CPUs. With this
# system prompt every choice up to "Paris" and "Rome" leads its runner-up by more than a logit.
SYSTEM = "Answer in one short sentence."


def main() -> None:
    client = OpenAI(base_url=sys.argv[1], api_key="not-needed-on-the-device", max_retries=0)
    report = {}
    models = [m.id for m in client.models.list().data]
    report["models"] = models
    lm = models[0]

    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    chat = client.chat.completions.create(model=lm, messages=messages, max_tokens=12, temperature=0)
    report["chat"] = {
        "content": chat.choices[0].message.content,
        "role": chat.choices[0].message.role,
        "finish_reason": chat.choices[0].finish_reason,
        "usage": chat.usage.model_dump(),
        "seam": (chat.model_extra or {}).get("seam"),
        "model": chat.model,
        "object": chat.object,
    }

    pieces, finish, usage, chunks = [], None, None, 0
    stream = client.chat.completions.create(
        model=lm,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    report["stream"] = {"content": "".join(pieces), "finish_reason": finish, "usage": usage, "chunks": chunks}

    turn2 = messages + [
        {"role": "assistant", "content": chat.choices[0].message.content},
        {"role": "user", "content": "And of Italy?"},
    ]
    second = client.chat.completions.create(model=lm, messages=turn2, max_tokens=12, temperature=0)
    report["turn2"] = {
        "content": second.choices[0].message.content,
        "prompt_tokens": second.usage.prompt_tokens,
    }

    sampled = [
        client.chat.completions.create(model=lm, messages=messages, max_tokens=8, temperature=0.9, seed=7)
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    report["seeded_equal"] = sampled[0] == sampled[1]

    completion = client.completions.create(model=lm, prompt="The capital of France is", max_tokens=4, temperature=0)
    report["completion"] = {"text": completion.choices[0].text, "object": completion.object}

    if len(models) > 1:
        emb = client.embeddings.create(model=models[1], input=["turn on the lights", "switch the lamp on"])
        vectors = [d.embedding for d in emb.data]
        report["embeddings"] = {
            "count": len(vectors),
            "dim": len(vectors[0]),
            "cosine": sum(a * b for a, b in zip(*vectors)),
            "prompt_tokens": emb.usage.prompt_tokens,
        }

    try:
        client.chat.completions.create(model="gpt-4o", messages=messages)
        report["unknown_model"] = "accepted"
    except openai.NotFoundError as e:
        report["unknown_model"] = {"status": e.status_code, "code": e.code, "param": e.param}
    try:
        client.chat.completions.create(model=lm, messages=messages, temperature=3.5)
        report["bad_temperature"] = "accepted"
    except openai.BadRequestError as e:
        report["bad_temperature"] = {"status": e.status_code, "param": e.param, "message": e.message}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
