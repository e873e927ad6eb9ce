//! Training: packed token data and its loader, optimizers (AdamW, Muon), and the trainer.

pub mod data;
pub mod optim;
