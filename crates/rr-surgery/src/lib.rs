//! Surgery: turns a pretrained model into prelude / recurrent core / coda.
//! (Skeleton: this crate's content comes with a later issue.)
