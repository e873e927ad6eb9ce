//! Training: packed token data and its loader, optimizers (AdamW, Muon), and the trainer.

pub mod bench;
pub mod data;
pub mod loss;
pub mod optim;
pub mod report;
pub mod trainer;

pub use trainer::{train, TrainOptions, TrainSummary};
