#!/usr/bin/env python3
"""Reference logits from Hugging Face `transformers` for small deterministic Llama-family models.

Writes `crates/rr-model/tests/fixtures/hf/<case>.json`, read by `crates/rr-model/tests/hf_parity.rs`
(the Rust side rebuilds the very same weights from the formula below, writes an HF model directory,
loads it with `rr_model::LlamaModel` and compares logits).

Setup (a separate venv; CPU is enough):

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install -r scripts/requirements-fixtures.txt
    .venv-fixtures/bin/python scripts/make_hf_fixtures.py            # all cases
    .venv-fixtures/bin/python scripts/make_hf_fixtures.py llama3     # one case

Weight formula, version "rr-hf-fixture-v1" (must match `crates/rr-model/tests/common/mod.rs`):

    seed(N)  = FNV-1a-64 of the UTF-8 bytes of the HF tensor name N
               (offset basis 0xcbf29ce484222325, prime 0x100000001b3, wrapping mod 2^64)
    mix(z)   = splitmix64 finaliser: z ^= z >> 30; z *= 0xbf58476d1ce4e5b9; z ^= z >> 27;
               z *= 0x94d049bb133111eb; z ^= z >> 31            (all mod 2^64)
    u_i      = (mix(seed(N) + (i + 1) * 0x9e3779b97f4a7c15 mod 2^64) >> 11) * 2^-53   in [0, 1)
    v_i      = 2 * u_i - 1                                                          in [-1, 1)
    i        = row-major flat index of the element in the tensor

    norm weights (name ends in "norm.weight"):  w_i = 1 + 0.1 * v_i
    model.embed_tokens.weight:                  w_i = v_i
    every other (2-D projection) weight [out, in]:  w_i = sqrt(3.0 / in) * v_i

  computed in float64 (each step is exact or a single IEEE rounding, so Rust and Python agree bit
  for bit), then cast to float32 (round to nearest even). Projections are i.i.d. uniform with
  variance 1/in (full rank, well conditioned: activations stay O(1), attention is far from uniform
  and logits have a spread of O(1)). For each tensor the fixture stores its shape, its first 4
  float32 values and the float64 sum of its float32 values, so the Rust generator is checked first.

Inputs: (a) one sequence of 11 ids; (b) a right-padded batch of 3 rows (lengths 11, 7, 4; pad id 0,
attention_mask 1 = real, 0 = pad). Logits are rounded to 7 significant digits. Logits at padded
positions are stored as they come out of HF but are meaningless: compare only where mask == 1.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import safetensors
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Olmo2Config, Olmo2ForCausalLM

FORMULA = "rr-hf-fixture-v1"
MASK64 = (1 << 64) - 1
OUT_DIR = Path(__file__).resolve().parent.parent / "crates" / "rr-model" / "tests" / "fixtures" / "hf"


def fnv1a64(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return h


def uniform01(name: str, n: int) -> np.ndarray:
    """u_i for i in 0..n as float64 (exact), vectorised splitmix64 over uint64 (wrapping)."""
    seed = np.uint64(fnv1a64(name))
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = seed + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def _uniform01_slow(name: str, n: int) -> list:
    """Pure-Python reference of uniform01, used to check the vectorised version."""
    seed = fnv1a64(name)
    out = []
    for i in range(n):
        z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z ^= z >> 31
        out.append((z >> 11) * 2.0 ** -53)
    return out


def formula_tensor(name: str, shape) -> torch.Tensor:
    n = int(np.prod(shape))
    v = 2.0 * uniform01(name, n) - 1.0
    if name.endswith("norm.weight"):
        w = 1.0 + 0.1 * v
    elif name == "model.embed_tokens.weight":
        w = v
    else:
        assert len(shape) == 2, name
        w = math.sqrt(3.0 / shape[1]) * v
    return torch.from_numpy(w.astype(np.float32).reshape(shape))


def tensor_names(cfg: dict) -> list:
    names = ["model.embed_tokens.weight"]
    olmo = cfg["model_type"] == "olmo2"
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        if olmo:
            names += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
            names += [p + "post_attention_layernorm.weight", p + "post_feedforward_layernorm.weight"]
        else:
            names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        names += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
    names.append("model.norm.weight")
    if not cfg["tie_word_embeddings"]:
        names.append("lm_head.weight")
    return names


def tensor_shape(cfg: dict, name: str) -> list:
    h, v, f = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // nh
    leaf = name.split(".")[-2]
    return {
        "embed_tokens": [v, h], "lm_head": [v, h],
        "q_proj": [nh * hd, h], "k_proj": [nkv * hd, h], "v_proj": [nkv * hd, h], "o_proj": [h, nh * hd],
        "q_norm": [nh * hd], "k_norm": [nkv * hd],
        "input_layernorm": [h], "post_attention_layernorm": [h], "post_feedforward_layernorm": [h], "norm": [h],
        "gate_proj": [f, h], "up_proj": [f, h], "down_proj": [h, f],
    }[leaf]


# ---------------------------------------------------------------------------------------------
# Cases. `config` is written verbatim as the model directory's config.json by the Rust test, in the
# layout that checkpoints on the Hub use (rope_theta + rope_scaling at top level).

COMMON = {
    "vocab_size": 97,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "hidden_act": "silu",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "use_cache": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}

CASES = {
    # GQA 4 q heads / 2 kv heads, head_dim derived (64/4 = 16), untied head.
    "llama": {
        **COMMON,
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": False,
    },
    # Tied head, explicit head_dim 24 != 64/4, MQA (1 kv head), SmolLM-like theta.
    "llama_tied": {
        **COMMON,
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 24,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "rope_scaling": None,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": True,
    },
    # Llama-3 frequency scaling. original_max_position_embeddings 32 (not 16) so that, with
    # head_dim 16 and theta 10000 (inverse frequencies 10000^(-k/8), wavelengths 2*pi, 19.9, 62.8,
    # ...), all three branches of the llama3 rule occur: k=0 kept (wavelength < 32/4), k=1 smoothed
    # (8 <= wavelength <= 32), k>=2 divided by 8. With 16 the "kept" branch would be unreachable
    # (every wavelength >= 2*pi > 16/4). The script asserts this and that the scaling changes logits.
    "llama3": {
        **COMMON,
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": False,
    },
    # OLMo-2: post-norm blocks, RMSNorm over the full q/k projections, eps 1e-6, GQA 4/2.
    "olmo2": {
        **COMMON,
        "architectures": ["Olmo2ForCausalLM"],
        "model_type": "olmo2",
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "rope_theta": 500000.0,
        "rope_scaling": None,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
    },
}

SINGLE_IDS = [1, 17, 42, 5, 96, 33, 8, 71, 23, 60, 2]
BATCH_ROWS = [
    [1, 64, 12, 88, 3, 45, 19, 77, 30, 91, 6],
    [1, 9, 55, 20, 84, 38, 70],
    [1, 50, 27, 93],
]
PAD_ID = 0


def build_model(cfg: dict):
    kwargs = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype")}
    if cfg["model_type"] == "olmo2":
        config = Olmo2Config(**kwargs)
        cls = Olmo2ForCausalLM
    else:
        config = LlamaConfig(**kwargs)
        cls = LlamaForCausalLM
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = cls(config).to(torch.float32).eval()

    names = tensor_names(cfg)
    sd = {n: formula_tensor(n, tensor_shape(cfg, n)) for n in names}
    load_sd = dict(sd)
    if cfg["tie_word_embeddings"]:
        # The module's state_dict lists lm_head.weight too (it is the embedding); it is not in the
        # checkpoint. Give strict loading the same tensor.
        load_sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model_keys = set(model.state_dict().keys())
    assert model_keys == set(load_sd.keys()), (sorted(model_keys ^ set(load_sd.keys())))
    for n, t in load_sd.items():
        assert list(model.state_dict()[n].shape) == list(t.shape), (n, model.state_dict()[n].shape, t.shape)
    res = model.load_state_dict(load_sd, strict=True)
    assert not res.missing_keys and not res.unexpected_keys, res
    if cfg["tie_word_embeddings"]:
        assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    else:
        assert not torch.equal(model.lm_head.weight[: cfg["vocab_size"]], model.model.embed_tokens.weight)
    for n, p in model.state_dict().items():
        assert torch.equal(p, load_sd[n]), n
    return model, sd


@torch.no_grad()
def run(model, ids, mask):
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    return out.logits.float()


def round7(t: torch.Tensor):
    return [[[float(f"{x:.7g}") for x in row] for row in seq] for seq in t.tolist()]


def check_llama3_scaling(model, cfg):
    rs = cfg["rope_scaling"]
    hd = cfg["head_dim"]
    base = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    scaled = model.model.rotary_emb.inv_freq.float()
    wavelen = 2 * math.pi / base
    hi = rs["original_max_position_embeddings"] / rs["high_freq_factor"]
    lo = rs["original_max_position_embeddings"] / rs["low_freq_factor"]
    kept = wavelen < hi
    divided = wavelen > lo
    smoothed = ~kept & ~divided
    assert kept.any() and divided.any() and smoothed.any(), wavelen
    assert torch.allclose(scaled[kept], base[kept])
    assert torch.allclose(scaled[divided], base[divided] / rs["factor"])
    assert not torch.allclose(scaled[smoothed], base[smoothed])
    assert not torch.allclose(scaled[smoothed], base[smoothed] / rs["factor"])
    return {
        "inv_freq_unscaled": [float(f"{x:.9g}") for x in base.tolist()],
        "inv_freq_scaled": [float(f"{x:.9g}") for x in scaled.tolist()],
    }


def make_case(name: str, cfg: dict) -> dict:
    model, sd = build_model(cfg)

    single = torch.tensor([SINGLE_IDS], dtype=torch.int64)
    single_mask = torch.ones_like(single)
    T = max(len(r) for r in BATCH_ROWS)
    batch = torch.full((len(BATCH_ROWS), T), PAD_ID, dtype=torch.int64)
    bmask = torch.zeros_like(batch)
    for r, row in enumerate(BATCH_ROWS):
        batch[r, : len(row)] = torch.tensor(row)
        bmask[r, : len(row)] = 1

    ls = run(model, single, single_mask)
    lb = run(model, batch, bmask)

    # Sanity: the padded batch agrees with each row run alone at the real positions; logits are
    # spread out (not all equal / near zero).
    for r, row in enumerate(BATCH_ROWS):
        alone = run(model, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.int64))
        d = (alone[0] - lb[r, : len(row)]).abs().max().item()
        assert d < 1e-5, (name, r, d)
    # With no mask at all, HF must give the same single-sequence logits.
    assert (run(model, single, None) - ls).abs().max().item() < 1e-6
    assert ls.std().item() > 0.3, ls.std()
    assert ls.abs().max().item() < 100.0

    extra = {}
    if cfg.get("rope_scaling"):
        extra = check_llama3_scaling(model, cfg)
        unscaled_cfg = dict(cfg, rope_scaling=None)
        m2, _ = build_model(unscaled_cfg)
        diff = (run(m2, single, single_mask) - ls).abs().max().item()
        assert diff > 1e-2, diff
        extra["max_abs_logit_change_without_scaling"] = float(f"{diff:.4g}")

    checks = {}
    for n, t in sd.items():
        flat = t.reshape(-1)
        checks[n] = {
            "shape": list(t.shape),
            "first": [float(x) for x in flat[:4].tolist()],  # exact float32 values
            "sum": float(flat.double().sum().item()),
        }

    hf_cfg = model.config.to_dict()
    hf_cfg.pop("_name_or_path", None)
    return {
        "case": name,
        "description": "HF reference logits for a small deterministic model; see scripts/make_hf_fixtures.py",
        "weight_formula": FORMULA,
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
        },
        "attn_implementation": "eager",
        "dtype": "float32",
        "config": cfg,
        "hf_config_to_dict": hf_cfg,
        "tensors": checks,
        "single": {
            "input_ids": single.tolist(),
            "attention_mask": single_mask.tolist(),
            "logits": round7(ls),
        },
        "batch": {
            "note": "right-padded (pad id 0); logits where attention_mask == 0 are meaningless",
            "input_ids": batch.tolist(),
            "attention_mask": bmask.tolist(),
            "logits": round7(lb),
        },
        **extra,
    }


def main(argv):
    torch.set_num_threads(1)
    # Self-checks of the weight generator against the spelled-out pure-Python version.
    assert fnv1a64("") == 0xCBF29CE484222325 and fnv1a64("a") == 0xAF63DC4C8601EC8C
    for n in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"):
        assert uniform01(n, 257).tolist() == _uniform01_slow(n, 257)
    cases = argv or list(CASES)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in cases:
        fx = make_case(name, CASES[name])
        path = OUT_DIR / f"{name}.json"
        text = json.dumps(fx, separators=(",", ":"))
        assert len(text) < 500_000, len(text)
        path.write_text(text + "\n")
        print(f"{path}: {len(text)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
