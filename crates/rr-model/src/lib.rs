//! Llama-family models (Llama, TinyLlama, SmolLM2, Llama-3.x, OLMo-2) on libtorch: configs read
//! straight from Hugging Face `config.json`, the depth-recurrent model built from their blocks,
//! checkpoint I/O, KV caches and decoding.
//!
//! Where things are: `llama.rs` (the blocks and the static model), `recurrent/` (prelude, core,
//! coda and the adapter in `mod.rs`, the initial state in `state.rs`, the per-iteration KV
//! cache in `cache.rs`, the depth and exit rule in `depth.rs`), `any.rs` (one model type for
//! either), `decode.rs` (the one decoding loop), `rows.rs` (one decoding step over sequences that
//! each own a cache: continuous batching).
//!
//! This crate knows nothing of training.

pub mod any;
pub mod config;
pub mod decode;
pub mod device;
pub mod inspect;
pub mod llama;
pub mod recurrent;
pub mod rows;
pub mod tokenizer;
pub mod weights;

pub use any::{AnyCache, AnyModel, LmOutput, TestTime};
pub use config::{LlamaConfig, ModelType};
pub use decode::{decode, DecodeOptions, Decoded, Generation, Sampling, StopReason, TokenStep};
pub use device::parse_device;
pub use llama::{KvCache, LlamaModel};
pub use recurrent::{
    CacheMode, Depth, ExitCriterion, InitialState, RecurrentCache, RecurrentConfig, RecurrentModel,
};
pub use tokenizer::Tokenizer;
