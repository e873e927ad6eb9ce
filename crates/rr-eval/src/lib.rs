//! Evaluation: tasks, metrics, compute accounting and reports; `runner` and `evaluate` run
//! them through a model.
//!
//! Compute accounting lives here and is pure arithmetic, so the trainer's running FLOP count
//! and the reports use the same function.

pub mod compute;
pub mod evaluate;
pub mod metrics;
pub mod nll;
pub mod plot;
pub mod results;
pub mod runner;
pub mod tasks;
