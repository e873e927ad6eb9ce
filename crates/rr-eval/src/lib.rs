//! Evaluation: tasks, metrics, compute accounting and reports; `runner` and `evaluate` run
//! them through a model.
//!
//! Compute accounting lives here and is pure arithmetic, so the trainer's running FLOP count,
//! the reports and `rr bench` use the same functions. So does reading the held-out rows of a
//! packed set ([`evaluate::Heldout::packed`]), which `rr eval` and the trainer share.

pub mod compute;
pub mod evaluate;
pub mod job;
pub mod math_verify;
pub mod metrics;
pub mod nll;
pub mod plot;
pub mod results;
pub mod runner;
pub mod tasks;
