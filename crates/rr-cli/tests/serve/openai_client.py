"""Drives `rr serve` with the official `openai` Python client, unmodified: a completion, a
chat completion, and both streamed. Prints what came back as one JSON object; the Rust test
compares it with `rr generate`.

    python openai_client.py BASE_URL MODEL PROMPT MAX_TOKENS
"""

import json
import sys

import openai

base_url, model, prompt, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
result = {}

completion = client.completions.create(
    model=model, prompt=prompt, max_tokens=max_tokens, temperature=0
)
result["completion"] = completion.choices[0].text
result["completion_finish"] = completion.choices[0].finish_reason
result["usage"] = completion.usage.model_dump()

chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": prompt}],
    max_tokens=max_tokens,
    temperature=0,
)
result["chat"] = chat.choices[0].message.content
result["chat_role"] = chat.choices[0].message.role
result["chat_usage"] = chat.usage.model_dump()

pieces, finishes = [], []
for chunk in client.completions.create(
    model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True
):
    pieces.append(chunk.choices[0].text)
    finishes.append(chunk.choices[0].finish_reason)
result["stream_completion"] = "".join(pieces)
result["stream_completion_finish"] = finishes[-1]
result["stream_completion_chunks"] = len(pieces)

pieces, roles, finishes, usage = [], [], [], None
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": prompt}],
    max_tokens=max_tokens,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
    if not chunk.choices:
        continue
    delta = chunk.choices[0].delta
    if delta.role:
        roles.append(delta.role)
    if delta.content:
        pieces.append(delta.content)
    finishes.append(chunk.choices[0].finish_reason)
result["stream_chat"] = "".join(pieces)
result["stream_chat_roles"] = roles
result["stream_chat_finish"] = finishes[-1]
result["stream_chat_usage"] = usage

try:
    client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=7)
    result["bad_request"] = None
except openai.BadRequestError as e:
    result["bad_request"] = e.status_code

print(json.dumps(result))
