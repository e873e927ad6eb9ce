//! Training: optimizers (AdamW, Muon) and the trainer. The data it reads comes from `rr-data`.

pub mod export;
pub mod host;
pub mod launch;
pub mod loss;
pub mod optim;
pub mod report;
pub mod side_by_side;
pub mod trainer;

pub use trainer::{train, TrainOptions, TrainSummary};
