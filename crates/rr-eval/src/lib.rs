//! Evaluation: tasks, metrics, compute accounting and reports.
//!
//! Compute accounting lives here and is pure arithmetic, so the trainer's running FLOP count
//! and the reports use the same function.

pub mod compute;
pub mod plot;
