#!/usr/bin/env python3
"""PyTorch reference for `cargo xtask bench-recurrence`.

A lean implementation of the same depth-recurrent model as rr (method.md §1-2, Raven layout:
fused q/k/v and gate/up, a prelude, an adapter over [state, embedding], a core iterated r
times, a coda, final norm and head), timed on the same points as rr's benchmark, so each row of
the report carries a ratio rr / PyTorch measured on the same machine in the same invocation.

It reads the shape and the points from rr's own result file (`--spec rr.json`) so both sides
run exactly the same thing, and writes rows of the same form (`--out torch.json`).

Measured, per point (median of repeats after warm-up):
  train     one optimizer step: r-k iterations without grad, k with, cross-entropy, backward,
            global-norm clipping at 1.0, AdamW (fused on CUDA, foreach on CPU)
  forward   a no-grad forward at recurrence r
  generate  greedy decoding of `gen_tokens` tokens at recurrence r, batch 1, by recomputing the
            whole sequence for every token (a straightforward loop without a recurrent KV cache)

Modes: eager, and torch.compile of every transformer block (default mode; the recurrence loop
stays in Python, as compiling the whole forward would unroll r iterations into one graph per
point).
Precision: bf16 autocast over fp32 master weights on CUDA, fp32 on CPU, as rr's trainer.
"""

import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, h, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(h))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(dtype) * self.weight.to(dtype)


def rope_cos_sin(t, head_dim, theta, device, dtype):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    freqs = torch.arange(t, device=device, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


class Block(nn.Module):
    def __init__(self, s):
        super().__init__()
        h, self.nh, self.nkv = s["hidden"], s["heads"], s["kv_heads"]
        self.hd = s["head_dim"]
        self.norm_1 = RMSNorm(h, s["eps"])
        self.norm_2 = RMSNorm(h, s["eps"])
        self.Wqkv = nn.Linear(h, (self.nh + 2 * self.nkv) * self.hd, bias=False)
        self.proj = nn.Linear(self.nh * self.hd, h, bias=False)
        self.fc = nn.Linear(h, 2 * s["intermediate"], bias=False)
        self.mlp_proj = nn.Linear(s["intermediate"], h, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        qkv = self.Wqkv(self.norm_1(x))
        q, k, v = qkv.split([self.nh * self.hd, self.nkv * self.hd, self.nkv * self.hd], -1)
        q = apply_rope(q.view(b, t, self.nh, self.hd).transpose(1, 2), cos, sin)
        k = apply_rope(k.view(b, t, self.nkv, self.hd).transpose(1, 2), cos, sin)
        v = v.view(b, t, self.nkv, self.hd).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.nh != self.nkv)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, self.nh * self.hd))
        gate, up = self.fc(self.norm_2(x)).chunk(2, -1)
        return x + self.mlp_proj(F.silu(gate) * up)


class Recurrent(nn.Module):
    def __init__(self, s):
        super().__init__()
        h = s["hidden"]
        self.s = s
        self.wte = nn.Embedding(s["vocab"], h)
        self.prelude = nn.ModuleList(Block(s) for _ in range(s["prelude"]))
        self.adapter = nn.Linear(2 * h, h, bias=False)
        self.core_block = nn.ModuleList(Block(s) for _ in range(s["core"]))
        self.coda = nn.ModuleList(Block(s) for _ in range(s["coda"]))
        self.ln_f = RMSNorm(h, s["eps"])
        self.lm_head = nn.Linear(h, s["vocab"], bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def core_step(self, state, e, cos, sin):
        x = self.adapter(torch.cat([state, e], -1))
        for block in self.core_block:
            x = block(x, cos, sin)
        return x

    def forward(self, ids, no_grad_steps, grad_steps):
        t = ids.shape[1]
        e = self.wte(ids)
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else e.dtype
        cos, sin = rope_cos_sin(t, self.s["head_dim"], self.s["rope_theta"], ids.device, dtype)
        for block in self.prelude:
            e = block(e, cos, sin)
        state = torch.empty_like(e)
        nn.init.trunc_normal_(state, std=self.s["state_std"], a=-3 * self.s["state_std"], b=3 * self.s["state_std"])
        with torch.no_grad():
            for _ in range(no_grad_steps):
                state = self.core_step(state, e, cos, sin)
        state = state.detach()
        for _ in range(grad_steps):
            state = self.core_step(state, e, cos, sin)
        x = state
        for block in self.coda:
            x = block(x, cos, sin)
        return self.lm_head(self.ln_f(x))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        # Linux: writing 5 resets the process's peak resident set size (VmHWM).
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def peak_bytes(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def timed(fn, device, warmup, repeats):
    for _ in range(warmup):
        fn()
    sync(device)
    reset_peak(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_bytes(device)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True, help="rr's bench result JSON (shape and points)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", default="eager,compile")
    args = ap.parse_args()

    with open(args.spec) as f:
        spec = json.load(f)["spec"]
    device = torch.device(spec["device"])
    shape = spec["shape"]
    torch.manual_seed(0)
    if device.type == "cpu":
        torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    autocast = device.type == "cuda"
    b, t = spec["batch"], spec["seq"]
    warmup, repeats = spec["warmup"], spec["repeats"]
    rows = []
    for mode in [m for m in args.modes.split(",") if m]:
        model = Recurrent(shape).to(device)
        if mode == "compile":
            torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
            for block in [*model.prelude, *model.core_block, *model.coda]:
                block.compile()
        forward = model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=device.type == "cuda")
        ids = torch.randint(shape["vocab"], (b, t), device=device)
        labels = torch.randint(shape["vocab"], (b * t,), device=device)

        def ctx():
            return torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast)

        for point in spec["points"]:
            r, k, kind = point["r"], point["k"], point["kind"]
            row = {"impl": f"pytorch-{mode}", "kind": kind, "r": r, "k": k}
            try:
                if kind == "train":
                    def step():
                        with ctx():
                            logits = forward(ids, r - k, k)
                            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels)
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                    seconds, peak = timed(step, device, warmup, repeats)
                    row["tokens_per_s"] = b * t / seconds
                elif kind == "forward":
                    def fwd():
                        with torch.no_grad(), ctx():
                            forward(ids, r, 0)
                    seconds, peak = timed(fwd, device, warmup, repeats)
                    row["tokens_per_s"] = b * t / seconds
                elif kind == "generate":
                    if mode == "compile":
                        continue  # every length is a new shape: compile would recompile per token
                    prompt = ids[:1, : spec["gen_prompt"]]
                    n_new = spec["gen_tokens"]

                    def gen():
                        seq = prompt
                        with torch.no_grad(), ctx():
                            for _ in range(n_new):
                                nxt = forward(seq, r, 0)[:, -1].argmax(-1, keepdim=True)
                                seq = torch.cat([seq, nxt], 1)
                    seconds, peak = timed(gen, device, max(1, warmup // 2), max(1, repeats // 2))
                    row["tokens_per_s"] = n_new / seconds
                else:
                    continue
                row["ms"] = seconds * 1e3
                row["peak_bytes"] = peak
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        del model, forward, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = {"torch": torch.__version__, "rows": rows}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
