//! Evaluation: tasks, metrics, compute accounting and reports.
//! (Skeleton: this crate's content comes with a later issue.)
