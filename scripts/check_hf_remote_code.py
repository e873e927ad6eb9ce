#!/usr/bin/env python3
"""rr's recurrent checkpoints open in transformers as they are, and compute what rr computes.

For each source model (stories260K, and the SmolLM2-135M import when present) this script runs
`rr surgery`, loads the output with

    AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)

(the Python files rr writes beside the checkpoint, named by config.json's `auto_map`), and
compares its logits with `rr score --dump-logits` at r = 1, 4, 8, from a zero initial state and
from a given one (`--initial-state FILE` / `input_states=`): it fails when max |dlogit| > 1e-4.
The same holds for the config variants real files carry (`num_attention_heads` for `n_heads`,
a disagreeing `n_layers`, `rope_base` without `rope_theta`, `embed_scale` 2, a padded vocabulary),
made from the stories260K retrofit.
It also checks greedy generation from a zero state: `model.generate(num_steps=4, init_scale=0)`
against `rr generate --greedy --initial-state zero`.

With `--write-fixture`, it writes the stories260K numbers (transformers' logits, the given state,
the greedy continuation, a hash of the Python files) to
`crates/rr-cli/tests/fixtures/hf_remote_code/stories260k.json`, which
`crates/rr-cli/tests/hf_remote_code.rs` compares rr against without Python.

Environment: the lm-evaluation-harness venv (`scripts/setup_lm_eval.sh`: transformers 5, torch,
safetensors), or one with transformers 4.51 (the oldest the Python files are written for), e.g.

    cargo xtask build
    .venv-lm-eval/bin/python scripts/check_hf_remote_code.py --rr target/debug/rr [--write-fixture]

(transformers 4.51: a venv with `pip install transformers==4.51.3` whose site-packages also
reaches torch and safetensors, e.g. through a .pth file naming .venv-lm-eval's site-packages.)
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
import transformers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RR_SHARED_DATA", "/work/shared/data"))
TEXT = "Once upon a time, there was a little girl named Lily. She liked to play in the park."
RECURRENCES = (1, 4, 8)
TOLERANCE = 1e-4
GREEDY_STEPS, GREEDY_TOKENS = 4, 16
# transformers 5 renamed from_pretrained's `torch_dtype` to `dtype`.
FP32 = {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": torch.float32}


def sources():
    """(name, source model directory, surgery split)."""
    out = [("stories260k", SHARED / "models/stories260K/hf", "1,3,1")]
    smol = ROOT / ".cache/models/smollm2-135m-instruct"
    if smol.is_dir():
        out.append(("smollm2", smol, "4,6,4"))
    return out


def run(cmd):
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{done.stderr}")
    return done.stdout


def python_files_sha256(model_dir):
    h = hashlib.sha256()
    for name in ("raven_config_minimal.py", "raven_modeling_minimal.py"):
        h.update((model_dir / name).read_bytes())
    return h.hexdigest()


def rr_logits(rr, model_dir, text_file, r, state_arg, dump):
    run([rr, "score", "--model", model_dir, "--device", "cpu", "--text-file", text_file,
         "--recurrence", r, "--initial-state", state_arg, "--dump-logits", dump])
    t = load_file(str(dump))
    return t["input_ids"], t["logits"]


def rr_greedy(rr, model_dir, prompt):
    out = run([rr, "generate", "--model", model_dir, "--device", "cpu", "--prompt", prompt,
               "--greedy", "--recurrence", GREEDY_STEPS, "--initial-state", "zero",
               "--max-new-tokens", GREEDY_TOKENS])
    return out.rstrip("\n")


def check_model(rr, name, source, split, work):
    out = work / f"{name}-rec"
    run([rr, "surgery", "--model", source, "--layers", split, "--out", out, "--force"])
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, **FP32)
    model.eval()
    text_file = work / "text.txt"
    text_file.write_text(TEXT)
    ids, _ = rr_logits(rr, out, text_file, 1, "zero", work / "probe.safetensors")
    t, h = ids.numel(), model.config.n_embd
    # O(1), not the spec's sigma0: a state that visibly changes the logits.
    state = torch.randn(t, h, generator=torch.Generator().manual_seed(0))
    state_file = work / f"{name}-state.safetensors"
    save_file({"state": state.contiguous()}, str(state_file))
    record = {"ids": ids.tolist(), "state": state.flatten().tolist(), "logits": {}}
    worst = 0.0
    for r in RECURRENCES:
        for label, arg, kwargs in (("zero", "zero", {"init_scale": 0.0}),
                                   ("given", state_file, {"input_states": state[None]})):
            _, theirs = rr_logits(rr, out, text_file, r, arg, work / "dump.safetensors")
            with torch.no_grad():
                ours = model(ids[None], num_steps=r, **kwargs).logits[0]
            delta = (ours - theirs).abs().max().item()
            worst = max(worst, delta)
            print(f"{name} r={r} {label:5}: max |dlogit| = {delta:.3e} "
                  f"(logit scale {theirs.abs().max().item():.2f})")
            record["logits"][f"r{r}_{label}"] = [float(f"{x:.7g}") for x in ours.flatten().tolist()]
    # Greedy text from a zero state, rr against transformers' generate.
    prompt = "Once upon a time"
    expected = rr_greedy(rr, out, prompt)
    # The tokenizer file itself: transformers < 5 finds no tokenizer class for a custom config
    # without a tokenizer_config.json (stories260K has none).
    tok = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    enc = tok(prompt, return_tensors="pt")
    gen = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], num_steps=GREEDY_STEPS, init_scale=0.0, do_sample=False,
                         max_new_tokens=GREEDY_TOKENS, pad_token_id=0)
    text = prompt + tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    same = text.startswith(expected) or expected.startswith(text)
    print(f"{name} greedy r={GREEDY_STEPS}: transformers {text!r}\n{'':>{len(name)}} rr           {expected!r}")
    record["greedy"] = {"prompt": prompt, "prompt_ids": enc["input_ids"][0].tolist(),
                        "ids": gen[0].tolist()}
    record["python_sha256"] = python_files_sha256(out)
    return worst, same, record


def variants(base):
    """(name, edit of config.json, extra padding rows) for the config variants real files carry."""
    def drop_n_heads(c):
        c["num_attention_heads"] = c.pop("n_heads")

    def rope_base(c):
        c.pop("rope_theta")
        c["rope_base"] = 500.0

    return [
        ("num_attention_heads", drop_n_heads, 0),
        ("n_layers_disagreeing", lambda c: c.update(n_layers=99), 0),
        ("rope_base_only", rope_base, 0),
        ("embed_scale_2", lambda c: c["init_values"].update(embed_scale=2.0), 0),
        ("padded_vocab", lambda c: c.update(padded_vocab_size=c["vocab_size"] + 64), 64),
    ]


def check_variants(rr, base, work):
    """Each variant of the stories260K retrofit: rr and transformers agree (given state, r = 4)."""
    worst = 0.0
    text_file = work / "text.txt"
    for name, edit, pad in variants(base):
        d = work / f"variant-{name}"
        shutil.copytree(base, d)
        config = json.loads((d / "config.json").read_text())
        edit(config)
        (d / "config.json").write_text(json.dumps(config, indent=2))
        if pad:
            w = load_file(str(d / "model.safetensors"))
            for key in ("transformer.wte.weight", "lm_head.weight"):
                # Padding rows that would dominate a softmax over them.
                w[key] = torch.cat([w[key], 100 * torch.ones(pad, w[key].shape[1])])
            save_file(w, str(d / "model.safetensors"), metadata={"format": "pt"})
        ids, _ = rr_logits(rr, d, text_file, 1, "zero", work / "probe.safetensors")
        model = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True, **FP32)
        state = torch.randn(ids.numel(), model.config.n_embd, generator=torch.Generator().manual_seed(1))
        save_file({"state": state}, str(work / "variant-state.safetensors"))
        _, theirs = rr_logits(rr, d, text_file, 4, work / "variant-state.safetensors", work / "dump.safetensors")
        with torch.no_grad():
            ours = model(ids[None], num_steps=4, input_states=state[None]).logits[0]
        delta = (ours - theirs).abs().max().item()
        worst = max(worst, delta)
        print(f"variant {name}: logits {tuple(theirs.shape)}, max |dlogit| = {delta:.3e}")
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rr", default=ROOT / "target/debug/rr", type=Path)
    ap.add_argument("--write-fixture", action="store_true")
    args = ap.parse_args()
    failed = False
    with tempfile.TemporaryDirectory(prefix="rr-hf-remote-") as tmp:
        for name, source, split in sources():
            worst, same, record = check_model(args.rr, name, source, split, Path(tmp))
            failed |= worst > TOLERANCE or not same
            print(f"{name}: worst max |dlogit| {worst:.3e} (tolerance {TOLERANCE}), "
                  f"greedy text {'identical' if same else 'DIFFERS'}")
            if name == "stories260k":
                worst = check_variants(args.rr, Path(tmp) / "stories260k-rec", Path(tmp))
                failed |= worst > TOLERANCE
                print(f"config variants: worst max |dlogit| {worst:.3e}")
            if args.write_fixture and name == "stories260k":
                record.update(split=split, text=TEXT, recurrences=list(RECURRENCES))
                path = ROOT / "crates/rr-cli/tests/fixtures/hf_remote_code/stories260k.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record) + "\n")
                print(f"wrote {path}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
