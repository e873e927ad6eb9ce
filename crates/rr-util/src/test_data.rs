//! Where tests and benchmarks find what they need but the repository does not hold: the
//! read-only shared data (`$RR_SHARED_DATA`, else `<workspace>/../shared/data`) and the models
//! `cargo xtask` fetches into the workspace.
//!
//! Something missing is a skip (printed, `None`) on a developer's machine and a failure under
//! `CI=true`, where everything must be present.

use std::path::{Path, PathBuf};

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `$RR_SHARED_DATA` when set and non-empty, else `<workspace>/../shared/data`; not checked.
pub fn shared_data_path() -> PathBuf {
    match std::env::var_os("RR_SHARED_DATA") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => workspace_root().join("../shared/data"),
    }
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `path` when it exists. Otherwise panics under `CI=true`, else prints why (naming `what`) and
/// returns `None` so the caller can skip.
pub fn required(path: PathBuf, what: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    let msg = format!("{what} {} not found", path.display());
    assert!(!ci(), "{msg}; CI=true, so it must be present");
    eprintln!("skipping: {msg}");
    None
}

/// The shared data directory (see [`shared_data_path`]), when it is there.
pub fn shared_data() -> Option<PathBuf> {
    required(
        shared_data_path(),
        "shared data directory (RR_SHARED_DATA, default <workspace>/../shared/data)",
    )
}

/// A file or folder inside the shared data directory.
pub fn shared(rel: &str) -> Option<PathBuf> {
    required(shared_data_path().join(rel), "shared data file")
}

/// SmolLM2-135M-Instruct as `cargo xtask fetch-model smollm2` (which `cargo xtask test` runs
/// first) leaves it: `$RR_CACHE/models/smollm2-135m-instruct`, the cache defaulting to
/// `<workspace>/.cache`.
pub fn smollm2_dir() -> Option<PathBuf> {
    let cache = std::env::var_os("RR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache"));
    let dir = cache.join("models/smollm2-135m-instruct");
    required(
        dir.join("config.json"),
        "SmolLM2 (run `cargo xtask fetch-model smollm2`)",
    )?;
    Some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_present_path_is_returned_and_a_missing_one_skips_or_fails_under_ci() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            required(dir.path().to_path_buf(), "x"),
            Some(dir.path().to_path_buf())
        );
        let missing = dir.path().join("absent");
        let outcome = std::panic::catch_unwind(|| required(missing.clone(), "x"));
        if ci() {
            assert!(
                outcome.is_err(),
                "CI=true must turn a missing path into a failure"
            );
        } else {
            assert_eq!(outcome.unwrap(), None);
        }
    }
}
