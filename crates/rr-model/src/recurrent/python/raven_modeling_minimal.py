"""A depth-recurrent ("huginn_raven") causal LM, as rr computes it, for transformers.

rr writes this file next to every recurrent checkpoint (with `raven_config_minimal.py`, named in
config.json's `auto_map`), so the directory loads with

    AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)

and lm-evaluation-harness runs it (`--model hf --model_args pretrained=dir,trust_remote_code=True,
mean_recurrence=4`).

    e = prelude(embed_scale * wte[ids])
    s = initial state                                  # zero, given, or a truncated normal
    repeat r times:  s = core(adapter(cat[s, e]))      # adapter.weight [h, 2h], state first
    logits = lm_head(ln_f(coda(s)))[..., :vocab_size]  # untied head, real vocabulary only

`forward(..., num_steps=r)` runs r core iterations (default: config.mean_recurrence);
`input_states` [B, T, h] gives the initial state; otherwise it is drawn from a normal truncated
at +-3 sigma with sigma = init_values["std"] * init_scale, times embed_scale (`init_scale=0`:
zeros). The logits cover the real vocabulary: rows of a padded head beyond `vocab_size` are never
scored or generated. Decoding recomputes the whole sequence at every step (no KV cache).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .raven_config_minimal import RavenConfig


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def rope_inv_freq(config):
    """1 / theta^(2i/d), with Llama-3's piecewise rescaling when rope_scaling asks for it."""
    d = config.head_dim
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    s = config.rope_scaling or {}
    if s.get("rope_type", s.get("type")) != "llama3":
        return inv
    factor = s.get("factor", 1.0)
    low, high = s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_ctx = s.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / inv
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv / factor + smooth * inv
    out = torch.where(wavelen > old_ctx / low, inv / factor, blended)
    return torch.where(wavelen < old_ctx / high, inv, out)


def rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        h, d = config.n_embd, config.head_dim
        self.n_q, self.n_kv, self.d = config.n_heads, config.num_key_value_heads, d
        self.Wqkv = nn.Linear(h, (self.n_q + 2 * self.n_kv) * d, bias=False)
        self.proj = nn.Linear(self.n_q * d, h, bias=False)
        self.qk_norm = config.block_type == "olmo2"
        if self.qk_norm:
            self.q_norm = RMSNorm(self.n_q * d, config.norm_eps)
            self.k_norm = RMSNorm(self.n_kv * d, config.norm_eps)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        q, k, v = self.Wqkv(x).split([self.n_q * self.d, self.n_kv * self.d, self.n_kv * self.d], -1)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = rotate(q.view(b, t, self.n_q, self.d).transpose(1, 2), cos, sin)
        k = rotate(k.view(b, t, self.n_kv, self.d).transpose(1, 2), cos, sin)
        v = v.view(b, t, self.n_kv, self.d).transpose(1, 2)
        # Query head i reads key/value head i // (n_q / n_kv).
        group = self.n_q // self.n_kv
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, self.n_q * self.d))


class Mlp(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 2 * config.intermediate_size, bias=False)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)

    def forward(self, x):
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class RavenBlock(nn.Module):
    """Llama pre-norm, or (block_type "olmo2") post-norm with QK-norm."""

    def __init__(self, config):
        super().__init__()
        self.post_norm = config.block_type == "olmo2"
        self.norm_1 = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = Attention(config)
        self.norm_2 = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = Mlp(config)

    def forward(self, x, cos, sin, mask):
        if self.post_norm:
            x = x + self.norm_1(self.attn(x, cos, sin, mask))
            return x + self.norm_2(self.mlp(x))
        x = x + self.attn(self.norm_1(x), cos, sin, mask)
        return x + self.mlp(self.norm_2(x))


class RavenForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = RavenConfig
    base_model_prefix = "model"
    _no_split_modules = ["RavenBlock"]
    _supports_sdpa = True

    def __init__(self, config):
        super().__init__(config)
        h, v = config.n_embd, config.padded_vocab_size
        stack = lambda n: nn.ModuleList(RavenBlock(config) for _ in range(n))  # noqa: E731
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(v, h),
                prelude=stack(config.n_layers_in_prelude),
                adapter=nn.Linear(2 * h, h, bias=False),
                core_block=stack(config.n_layers_in_recurrent_block),
                coda=stack(config.n_layers_in_coda),
                ln_f=RMSNorm(h, config.norm_eps),
            )
        )
        self.lm_head = nn.Linear(h, v, bias=False)
        self.post_init()

    def _init_weights(self, module):
        std = self.config.init_values["std"]
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=std, a=-3 * std, b=3 * std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, value):
        self.transformer.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def initial_state(self, like, init_scale=1.0):
        """The authors' draw: N(0, sigma^2) truncated at +-3 sigma, times embed_scale."""
        std = self.config.init_values["std"] * init_scale
        if std <= 0:
            return torch.zeros_like(like)
        x = torch.empty_like(like)
        nn.init.trunc_normal_(x, mean=0.0, std=std, a=-3 * std, b=3 * std)
        return x * self.config.init_values.get("embed_scale", 1.0)

    def _rope_and_mask(self, input_ids, attention_mask):
        b, t = input_ids.shape
        device = input_ids.device
        if attention_mask is None:
            positions = torch.arange(t, device=device).expand(b, t)
            mask = torch.ones(t, t, dtype=torch.bool, device=device).tril()[None, None]
        else:
            keep = attention_mask.bool()
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
            # A padding query still sees itself, so no row of the softmax is empty.
            mask = (causal[None] & keep[:, None, :]) | torch.eye(t, dtype=torch.bool, device=device)
            mask = mask[:, None]
        # Computed at every call (no buffer to initialise or outgrow), in float32.
        angles = positions.float()[..., None] * rope_inv_freq(self.config).to(device)
        emb = torch.cat([angles, angles], dim=-1)[:, None]
        return emb.cos(), emb.sin(), mask

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        labels=None,
        num_steps=None,
        input_states=None,
        init_scale=1.0,
        return_dict=True,
        **kwargs,
    ):
        tr = self.transformer
        if num_steps is None:
            num_steps = self.config.mean_recurrence
        elif torch.is_tensor(num_steps):
            num_steps = int(num_steps.sum())  # the authors' [no-grad, with-grad] pair
        e = tr.wte(input_ids)
        embed_scale = self.config.init_values.get("embed_scale", 1.0)
        if embed_scale != 1:
            e = e * embed_scale
        cos, sin, mask = self._rope_and_mask(input_ids, attention_mask)
        cos, sin = cos.to(e.dtype), sin.to(e.dtype)
        for block in tr.prelude:
            e = block(e, cos, sin, mask)
        if input_states is not None:
            state = input_states.to(device=e.device, dtype=e.dtype)
        else:
            state = self.initial_state(e, init_scale)
        for _ in range(int(num_steps)):
            x = tr.adapter(torch.cat([state, e], dim=-1))
            for block in tr.core_block:
                x = block(x, cos, sin, mask)
            state = x
        x = state
        for block in tr.coda:
            x = block(x, cos, sin, mask)
        x = tr.ln_f(x)
        logits = F.linear(x, self.lm_head.weight[: self.config.vocab_size])
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        # No KV cache: every step runs the whole sequence.
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        for key in ("num_steps", "init_scale"):
            if key in kwargs:
                inputs[key] = kwargs[key]
        return inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, **kwargs)
        model_kwargs["past_key_values"] = None
        return model_kwargs
