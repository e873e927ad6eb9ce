//! Training: data, optimizers and the trainer.
//! (Skeleton: this crate's content comes with a later issue.)
