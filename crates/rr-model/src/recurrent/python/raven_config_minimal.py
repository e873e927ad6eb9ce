"""Configuration of a depth-recurrent ("huginn_raven") checkpoint written by rr.

rr writes this file, and `raven_modeling_minimal.py`, next to every recurrent checkpoint so that

    AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)

loads it. The fields are those of `config.json` (see rr's `shared/spec/raven-format.md`).
"""

from transformers import PretrainedConfig


class RavenConfig(PretrainedConfig):
    model_type = "huginn_raven"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        n_embd=1024,
        n_heads=None,
        num_key_value_heads=None,
        head_dim=None,
        intermediate_size=4096,
        n_layers=None,
        n_layers_in_prelude=2,
        n_layers_in_recurrent_block=4,
        n_layers_in_coda=2,
        vocab_size=32000,
        padded_vocab_size=None,
        norm_eps=1e-5,
        rope_theta=None,
        rope_base=None,
        rope_scaling=None,
        max_position_embeddings=2048,
        block_size=None,
        mean_recurrence=4,
        mean_backprop_depth=8,
        injection_type="linear",
        state_init="like-init",
        init_values=None,
        block_type="llama",
        **kwargs,
    ):
        # Some files say `num_attention_heads` for `n_heads`.
        alias = kwargs.pop("num_attention_heads", None)
        self.n_embd = n_embd
        self.n_heads = n_heads if n_heads is not None else (alias if alias is not None else 16)
        self.num_key_value_heads = num_key_value_heads or self.n_heads
        self.head_dim = head_dim or n_embd // self.n_heads
        self.intermediate_size = intermediate_size
        self.n_layers_in_prelude = n_layers_in_prelude
        self.n_layers_in_recurrent_block = n_layers_in_recurrent_block
        self.n_layers_in_coda = n_layers_in_coda
        # The three stacks are authoritative; a disagreeing n_layers is replaced.
        self.n_layers = n_layers_in_prelude + n_layers_in_recurrent_block + n_layers_in_coda
        self.vocab_size = vocab_size
        self.padded_vocab_size = padded_vocab_size or vocab_size
        self.norm_eps = norm_eps
        # Huginn's older files name theta `rope_base`.
        self.rope_theta = rope_theta if rope_theta is not None else (rope_base or 10000.0)
        self.rope_scaling = rope_scaling
        self.max_position_embeddings = max_position_embeddings
        self.block_size = block_size or max_position_embeddings
        self.mean_recurrence = mean_recurrence
        self.mean_backprop_depth = mean_backprop_depth
        self.injection_type = injection_type
        self.state_init = state_init
        self.init_values = dict(init_values or {})
        self.init_values.setdefault("std", 0.008703882797784892)
        self.init_values.setdefault("embed_scale", 1.0)
        self.block_type = block_type
        # The head is its own tensor, and decoding recomputes the sequence (no KV cache).
        kwargs["tie_word_embeddings"] = False
        kwargs.setdefault("use_cache", False)
        super().__init__(**kwargs)

    # Names the rest of transformers (and lm-evaluation-harness) look for.
    @property
    def hidden_size(self):
        return self.n_embd

    @property
    def num_attention_heads(self):
        return self.n_heads

    @property
    def num_hidden_layers(self):
        return self.n_layers
