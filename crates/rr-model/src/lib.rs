//! Llama-family models (Llama, TinyLlama, SmolLM2, Llama-3.x, OLMo-2) on libtorch: configs read
//! straight from Hugging Face `config.json`, the depth-recurrent model built from their blocks,
//! checkpoint I/O, KV caches and generation.
//!
//! This crate knows nothing of training.

pub mod any;
pub mod config;
pub mod device;
pub mod generate;
pub mod inspect;
pub mod llama;
pub mod recurrent;
pub mod recurrent_infer;
pub mod score;
pub mod tokenizer;
pub mod weights;

pub use any::AnyModel;
pub use config::{LlamaConfig, ModelType};
pub use device::parse_device;
pub use generate::{generate, GenerateOptions, Sampling};
pub use llama::{KvCache, LlamaModel};
pub use recurrent::{InitialState, RecurrentConfig, RecurrentModel};
pub use tokenizer::Tokenizer;
