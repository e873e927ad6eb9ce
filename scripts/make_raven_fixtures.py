#!/usr/bin/env python3
"""Reference logits of the depth-recurrent ("Raven") model, from an independent PyTorch implementation.

Writes `crates/rr-model/tests/fixtures/raven/<case>.json`, read by `crates/rr-model/tests/raven_parity.rs`
(the Rust side rebuilds the same weights from the formula below, writes a Raven model directory
(`config.json` + `model.safetensors`, F32), loads it with `rr_model::recurrent::RecurrentModel` and
compares logits).

The forward pass here is written from `shared/spec/method.md` §1-2 and `shared/spec/raven-format.md`
only, in plain PyTorch: no `transformers` modeling code and no rr code.

    e = wte[ids]                                 # no embedding scale
    e = prelude(e)
    s = s0                                       # the given initial state, below
    repeat r times:  s = core(adapter(cat[s, e]))    # adapter.weight [h, 2h], state first
    logits = lm_head(ln_f(coda(s)))              # untied head

Blocks: Llama (pre-norm) `x = x + attn(norm_1(x)); x = x + mlp(norm_2(x))`;
OLMo-2 (post-norm) `x = x + norm_1(attn(x)); x = x + norm_2(mlp(x))` with RMSNorm over the full q
([n_q*d]) and k ([n_kv*d]) projections before splitting into heads and before RoPE.
RMSNorm `(x.float() * rsqrt(mean(x^2) + eps)).to(dtype) * weight`; MLP `proj(silu(gate) * up)` with
`mlp.fc` rows gate;up; attention causal, GQA (query head i uses kv head i // (n_q / n_kv)),
`attn.Wqkv` rows q;k;v, RoPE rotate-half with inv_freq = 1 / theta^(2i/d), softmax(q k^T / sqrt(d)),
explicit masked softmax (no SDPA).

Setup: the venv of `scripts/make_hf_fixtures.py` (only torch and numpy are used here):

    .venv-fixtures/bin/python scripts/make_raven_fixtures.py               # all cases
    .venv-fixtures/bin/python scripts/make_raven_fixtures.py raven_olmo2   # one case

Weight formula, version "rr-raven-fixture-v1": the generator of "rr-hf-fixture-v1"
(`scripts/make_hf_fixtures.py`, `crates/rr-model/tests/common/mod.rs`), i.e. v_i = 2 u_i - 1 with
u_i from FNV-1a-64(name) + splitmix64, with a classifier for the Raven names:

    norm weights (transformer.ln_f.weight, *.norm_1.weight, *.norm_2.weight,
                  *.attn.q_norm.weight, *.attn.k_norm.weight):   w_i = 1 + 0.1 * v_i
    transformer.wte.weight:                                       w_i = v_i
    every other (2-D) weight [out, in] (Wqkv, attn.proj, mlp.fc, mlp.proj, adapter, lm_head):
                                                                  w_i = sqrt(3.0 / in) * v_i

(The HF classifier, `name.endswith("norm.weight")`, would miss norm_1/norm_2/ln_f.) Computed in
float64 and cast to float32, so Rust and Python agree bit for bit.

Initial state (fed to rr as `InitialState::Given`): the float32 tensor s0 of shape [1, T, h] with
    s0_i = v_i of the name "raven_fixture.initial_state" (row-major flat index i over [1, T, h]),
i.e. uniform in [-1, 1). It is deliberately O(1), not the spec's sigma0 = 0.0087: the fixture must
show that rr uses the given state (a zero or random state gives logits far from the reference,
which the script asserts).

Each fixture stores the config.json to write, the tensor names with shape / first 4 float32 values /
float64 sum (so a generator mismatch shows up as such), the input ids, the initial-state definition
(with its first values and sum), and logits at r = 1, 4, 8 (float32 forward, rounded to 7
significant digits), plus logits at r = 4 with a zero initial state. The float32 reference is
checked against the same forward in float64.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

FORMULA = "rr-raven-fixture-v1"
GENERATOR = "rr-hf-fixture-v1"
MASK64 = (1 << 64) - 1
OUT_DIR = Path(__file__).resolve().parent.parent / "crates" / "rr-model" / "tests" / "fixtures" / "raven"
STATE_NAME = "raven_fixture.initial_state"
RECURRENCES = [1, 4, 8]
ZERO_STATE_R = 4
HUGINN_STD = 0.008703882797784892
HUGINN_OUT_PROJ = 0.0005356869554443541


# ---------------------------------------------------------------------------------------------
# Weight generator (same as make_hf_fixtures.py; repeated here so this script needs no transformers)


def fnv1a64(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return h


def uniform01(name: str, n: int) -> np.ndarray:
    seed = np.uint64(fnv1a64(name))
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = seed + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def _uniform01_slow(name: str, n: int) -> list:
    seed = fnv1a64(name)
    out = []
    for i in range(n):
        z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z ^= z >> 31
        out.append((z >> 11) * 2.0 ** -53)
    return out


def signed(name: str, n: int) -> np.ndarray:
    return 2.0 * uniform01(name, n) - 1.0


NORM_SUFFIXES = ("norm_1.weight", "norm_2.weight", "q_norm.weight", "k_norm.weight")


def is_norm(name: str) -> bool:
    return name == "transformer.ln_f.weight" or name.endswith(NORM_SUFFIXES)


def raven_formula_tensor(name: str, shape) -> torch.Tensor:
    n = int(np.prod(shape))
    v = signed(name, n)
    if is_norm(name):
        assert len(shape) == 1, name
        w = 1.0 + 0.1 * v
    elif name == "transformer.wte.weight":
        w = v
    else:
        assert len(shape) == 2, name
        w = math.sqrt(3.0 / shape[1]) * v
    return torch.from_numpy(w.astype(np.float32).reshape(shape))


def initial_state(T: int, h: int) -> torch.Tensor:
    return torch.from_numpy(signed(STATE_NAME, T * h).astype(np.float32).reshape(1, T, h))


# ---------------------------------------------------------------------------------------------
# Tensor names and shapes, from the raven-format.md tables


def dims(cfg: dict):
    h = cfg["n_embd"]
    nq = cfg["n_heads"]
    nkv = cfg["num_key_value_heads"]
    d = cfg["head_dim"]
    return h, nq, nkv, d, cfg["intermediate_size"], cfg["padded_vocab_size"]


def tensor_shapes(cfg: dict) -> dict:
    h, nq, nkv, d, inter, vocab = dims(cfg)
    olmo = cfg.get("block_type", "llama") == "olmo2"
    shapes = {
        "transformer.wte.weight": [vocab, h],
        "lm_head.weight": [vocab, h],
        "transformer.ln_f.weight": [h],
        "transformer.adapter.weight": [h, 2 * h],
    }
    stacks = [
        ("prelude", cfg["n_layers_in_prelude"]),
        ("core_block", cfg["n_layers_in_recurrent_block"]),
        ("coda", cfg["n_layers_in_coda"]),
    ]
    for stack, n in stacks:
        for i in range(n):
            p = f"transformer.{stack}.{i}."
            shapes[p + "norm_1.weight"] = [h]
            shapes[p + "attn.Wqkv.weight"] = [(nq + 2 * nkv) * d, h]
            shapes[p + "attn.proj.weight"] = [h, nq * d]
            if olmo:
                shapes[p + "attn.q_norm.weight"] = [nq * d]
                shapes[p + "attn.k_norm.weight"] = [nkv * d]
            shapes[p + "norm_2.weight"] = [h]
            shapes[p + "mlp.fc.weight"] = [2 * inter, h]
            shapes[p + "mlp.proj.weight"] = [h, inter]
    return shapes


# ---------------------------------------------------------------------------------------------
# The forward pass


def rms_norm(x, w, eps):
    # fp32 (or wider) statistics, result back in x's dtype, then the weight.
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(cdt)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return y.to(x.dtype) * w


def rope_cos_sin(T, d, theta, dtype):
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).to(torch.float32) / d))
    pos = torch.arange(T, dtype=torch.float32)
    freqs = pos[:, None] * inv_freq[None, :]  # [T, d/2], fp32
    emb = torch.cat([freqs, freqs], dim=-1)  # [T, d]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def attention(x, W, p, cfg, cos, sin, olmo):
    B, T, _ = x.shape
    _, nq, nkv, d, _, _ = dims(cfg)
    qkv = x @ W[p + "attn.Wqkv.weight"].T
    q = qkv[..., : nq * d]
    k = qkv[..., nq * d : (nq + nkv) * d]
    v = qkv[..., (nq + nkv) * d :]
    assert v.shape[-1] == nkv * d
    if olmo:
        q = rms_norm(q, W[p + "attn.q_norm.weight"], cfg["norm_eps"])
        k = rms_norm(k, W[p + "attn.k_norm.weight"], cfg["norm_eps"])
    q = q.view(B, T, nq, d).transpose(1, 2)  # [B, nq, T, d]
    k = k.view(B, T, nkv, d).transpose(1, 2)
    v = v.view(B, T, nkv, d).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    group = nq // nkv
    k = k.repeat_interleave(group, dim=1)  # query head i -> kv head i // group
    v = v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)  # [B, nq, T, T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    probs = torch.softmax(scores.to(torch.float64 if x.dtype == torch.float64 else torch.float32), dim=-1).to(x.dtype)
    y = (probs @ v).transpose(1, 2).reshape(B, T, nq * d)
    return y @ W[p + "attn.proj.weight"].T


def mlp(x, W, p, cfg):
    inter = cfg["intermediate_size"]
    fc = x @ W[p + "mlp.fc.weight"].T
    gate, up = fc[..., :inter], fc[..., inter:]
    return (torch.nn.functional.silu(gate) * up) @ W[p + "mlp.proj.weight"].T


def block(x, W, p, cfg, cos, sin):
    eps = cfg["norm_eps"]
    if cfg.get("block_type", "llama") == "olmo2":
        x = x + rms_norm(attention(x, W, p, cfg, cos, sin, True), W[p + "norm_1.weight"], eps)
        x = x + rms_norm(mlp(x, W, p, cfg), W[p + "norm_2.weight"], eps)
    else:
        x = x + attention(rms_norm(x, W[p + "norm_1.weight"], eps), W, p, cfg, cos, sin, False)
        x = x + mlp(rms_norm(x, W[p + "norm_2.weight"], eps), W, p, cfg)
    return x


@torch.no_grad()
def forward(W, cfg, ids, state, r):
    """Logits [B, T, vocab] of the recurrent model at recurrence r; W and state in the compute dtype."""
    B, T = ids.shape
    dtype = W["transformer.wte.weight"].dtype
    cos, sin = rope_cos_sin(T, cfg["head_dim"], cfg["rope_theta"], dtype)
    e = W["transformer.wte.weight"][ids]  # no embedding scale
    for i in range(cfg["n_layers_in_prelude"]):
        e = block(e, W, f"transformer.prelude.{i}.", cfg, cos, sin)
    s = state.to(dtype)
    for _ in range(r):
        x = torch.cat([s, e], dim=-1) @ W["transformer.adapter.weight"].T
        for j in range(cfg["n_layers_in_recurrent_block"]):
            x = block(x, W, f"transformer.core_block.{j}.", cfg, cos, sin)
        s = x
    x = s
    for k in range(cfg["n_layers_in_coda"]):
        x = block(x, W, f"transformer.coda.{k}.", cfg, cos, sin)
    logits = rms_norm(x, W["transformer.ln_f.weight"], cfg["norm_eps"]) @ W["lm_head.weight"].T
    return logits[..., : cfg["vocab_size"]]


# ---------------------------------------------------------------------------------------------
# Cases: `config` is written verbatim as config.json by the Rust test. Fields exactly as
# raven-format.md lists them (rope_scaling is Llama-3 only and these cases have none), plus ours,
# `block_type`.


def raven_config(block_type, norm_eps, rope_theta):
    p, b, c = 1, 2, 1
    return {
        "architectures": ["RavenForCausalLM"],
        "model_type": "huginn_raven",
        "auto_map": {
            "AutoConfig": "raven_config_minimal.RavenConfig",
            "AutoModelForCausalLM": "raven_modeling_minimal.RavenForCausalLM",
        },
        "block_type": block_type,
        "n_embd": 64,
        "n_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 96,
        "n_layers": p + b + c,
        "n_layers_in_prelude": p,
        "n_layers_in_recurrent_block": b,
        "n_layers_in_coda": c,
        "vocab_size": 97,
        "padded_vocab_size": 97,
        "norm_eps": norm_eps,
        "rope_theta": rope_theta,
        "max_position_embeddings": 64,
        "block_size": 64,
        "tie_embeddings": False,
        "bias": False,
        "qk_bias": False,
        "mean_recurrence": 4,
        "mean_backprop_depth": 8,
        "injection_type": "linear",
        "state_init": "like-init",
        "init_values": {
            "std": HUGINN_STD,
            "embedding": HUGINN_STD,
            "out_proj": HUGINN_OUT_PROJ,
            "embed_scale": 1.0,
        },
        "torch_dtype": "float32",
    }


CASES = {
    "raven_llama": raven_config("llama", 1e-5, 10000.0),
    "raven_olmo2": raven_config("olmo2", 1e-6, 500000.0),
}

INPUT_IDS = [1, 17, 42, 5, 96, 33, 8, 71, 23]


def round7(t: torch.Tensor):
    return [[[float(f"{x:.7g}") for x in row] for row in seq] for seq in t.tolist()]


def tensor_record(t: torch.Tensor) -> dict:
    flat = t.reshape(-1)
    return {
        "shape": list(t.shape),
        "first": [float(x) for x in flat[:4].tolist()],  # exact float32 values
        "sum": float(flat.double().sum().item()),
    }


def make_case(name: str, cfg: dict) -> dict:
    shapes = tensor_shapes(cfg)
    W = {n: raven_formula_tensor(n, s) for n, s in shapes.items()}
    W64 = {n: t.double() for n, t in W.items()}
    ids = torch.tensor([INPUT_IDS], dtype=torch.int64)
    T, h = ids.shape[1], cfg["n_embd"]
    s0 = initial_state(T, h)

    logits = {}
    worst_f64 = 0.0
    for r in RECURRENCES:
        l32 = forward(W, cfg, ids, s0, r)
        l64 = forward(W64, cfg, ids, s0.double(), r)
        d = (l32.double() - l64).abs().max().item()
        worst_f64 = max(worst_f64, d)
        assert d < 2e-5, (name, r, d)  # the float32 reference is itself accurate
        logits[r] = l32
    zero = forward(W, cfg, ids, torch.zeros(1, T, h), ZERO_STATE_R)

    # The fixture must be able to make the test fail.
    for r, l in logits.items():
        assert l.shape == (1, T, cfg["vocab_size"])
        assert torch.isfinite(l).all()
        assert l.std().item() > 0.3 and l.abs().max().item() < 100.0, (name, r, l.std(), l.abs().max())
        assert (l[0, 0] - l[0, -1]).abs().max().item() > 0.1, (name, r)
    d_r = (logits[1] - logits[8]).abs().max().item()
    d_r48 = (logits[4] - logits[8]).abs().max().item()
    assert d_r > 0.5 and d_r48 > 1e-2, (name, d_r, d_r48)
    d_state = (zero - logits[ZERO_STATE_R]).abs().max().item()
    assert d_state > 1e-2, (name, d_state)
    d_state1 = (forward(W, cfg, ids, torch.zeros(1, T, h), 1) - logits[1]).abs().max().item()
    assert d_state1 > 0.1, (name, d_state1)
    # State first: swapping the adapter's halves must matter.
    swapped = dict(W)
    a = W["transformer.adapter.weight"]
    swapped["transformer.adapter.weight"] = torch.cat([a[:, h:], a[:, :h]], dim=1)
    d_swap = (forward(swapped, cfg, ids, s0, 4) - logits[4]).abs().max().item()
    assert d_swap > 0.1, (name, d_swap)
    sens = {
        "max_abs_r1_vs_r8": float(f"{d_r:.4g}"),
        "max_abs_r4_vs_r8": float(f"{d_r48:.4g}"),
        f"max_abs_given_vs_zero_state_r{ZERO_STATE_R}": float(f"{d_state:.4g}"),
        "max_abs_given_vs_zero_state_r1": float(f"{d_state1:.4g}"),
        "max_abs_adapter_halves_swapped_r4": float(f"{d_swap:.4g}"),
        "max_abs_float32_vs_float64": float(f"{worst_f64:.4g}"),
    }

    return {
        "case": name,
        "description": "Reference logits of the recurrent (Raven) model from an independent PyTorch "
        "forward; see scripts/make_raven_fixtures.py",
        "weight_formula": FORMULA,
        "generator": GENERATOR,
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0]},
        "dtype": "float32",
        "config": cfg,
        "tensors": {n: tensor_record(t) for n, t in W.items()},
        "input_ids": ids.tolist(),
        "initial_state": {
            "definition": f"float32 [1, T, n_embd], element i (row-major) = 2*u_i - 1 of the name "
            f"{STATE_NAME!r} ({GENERATOR} generator); passed as InitialState::Given",
            "name": STATE_NAME,
            **tensor_record(s0),
        },
        "logits": {str(r): round7(l) for r, l in logits.items()},
        "zero_state": {"r": ZERO_STATE_R, "logits": round7(zero)},
        "sensitivity": sens,
    }


def main(argv):
    torch.set_num_threads(1)
    assert fnv1a64("") == 0xCBF29CE484222325 and fnv1a64("a") == 0xAF63DC4C8601EC8C
    for n in ("transformer.wte.weight", STATE_NAME):
        assert uniform01(n, 257).tolist() == _uniform01_slow(n, 257)
    # Pinned values of the shared generator (hf_parity.rs: weight_formula_is_pinned).
    v = signed("model.embed_tokens.weight", 2).astype(np.float32).tolist()
    assert v == [-0.25741904973983765, -0.359963595867157], v
    assert is_norm("transformer.core_block.1.norm_1.weight") and is_norm("transformer.coda.0.attn.k_norm.weight")
    assert not is_norm("transformer.core_block.1.attn.proj.weight")
    cases = argv or list(CASES)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in cases:
        fx = make_case(name, CASES[name])
        path = OUT_DIR / f"{name}.json"
        text = json.dumps(fx, separators=(",", ":"))
        assert len(text) < 200_000, len(text)
        path.write_text(text + "\n")
        print(f"{path}: {len(text)} bytes; {fx['sensitivity']}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
