//! Recurrence sampling, mean-recurrence and learning-rate schedules (pure Rust, no tch).
//! (Skeleton: this crate's content comes with a later issue.)
