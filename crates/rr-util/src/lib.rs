//! Small helpers shared across the workspace, free of libtorch so that every crate (xtask and
//! rr-curriculum included) can use them:
//!
//! * [`fs`]: atomic file writes and staging directories, so an interrupted or failed write never
//!   leaves a half-written file or directory under its final name.
//! * [`seed`]: splitmix64 and the seed-stream hashes every deterministic random stream of the
//!   project is derived from.
//! * [`test_data`]: where tests find the shared data and fetched models (skip, or fail under
//!   `CI=true`).

pub mod fs;
pub mod seed;
pub mod test_data;
