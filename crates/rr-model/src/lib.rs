//! Llama-family models (Llama, TinyLlama, SmolLM2, Llama-3.x, OLMo-2) on libtorch: configs read
//! straight from Hugging Face `config.json`, checkpoint I/O, a KV cache and generation.
//!
//! This crate knows nothing of training.

pub mod config;
pub mod device;
pub mod generate;
pub mod import;
pub mod inspect;
pub mod llama;
pub mod score;
pub mod tokenizer;
pub mod weights;

pub use config::{LlamaConfig, ModelType};
pub use device::parse_device;
pub use generate::{generate, GenerateOptions, Sampling};
pub use llama::{KvCache, LlamaModel};
pub use tokenizer::Tokenizer;
