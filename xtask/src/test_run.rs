//! `cargo xtask test`: `cargo test --workspace --no-fail-fast`, so that one failing test binary
//! never hides the results of the others, and one closing line that adds up every binary's
//! `test result:` line.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ExitCode, Stdio};

use anyhow::{Context, Result};

use crate::torch_env::{self, Torch};

/// Passed, failed and ignored tests over every `test result:` line seen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// Test binaries (and doc-test runs) that reported.
    pub binaries: u64,
}

impl Tally {
    /// Adds one line of libtest output if it is a result line
    /// (`test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`).
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        let count = |label: &str| -> u64 {
            rest.split(';')
                .filter_map(|part| {
                    let part = part
                        .trim()
                        .trim_start_matches("ok.")
                        .trim_start_matches("FAILED.");
                    let (n, what) = part.trim().split_once(' ')?;
                    (what.trim() == label)
                        .then(|| n.parse::<u64>().ok())
                        .flatten()
                })
                .sum()
        };
        self.passed += count("passed");
        self.failed += count("failed");
        self.ignored += count("ignored");
        self.binaries += 1;
    }

    /// The closing line: `N passed, N failed, N skipped` (the plain form CI reads).
    pub fn summary(&self) -> String {
        format!(
            "tests: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        )
    }
}

/// Runs the workspace tests with `args` appended (`cargo test` options, then `--` and the
/// test binaries' own), prints every line as it comes and the summary at the end.
pub fn run(root: &Path, torch: &Torch, cache: &Path, args: &[String]) -> Result<ExitCode> {
    let names_package = args.iter().any(|a| a == "-p" || a.starts_with("--package"));
    let mut cargo_args: Vec<String> = vec!["test".into()];
    if !names_package {
        cargo_args.push("--workspace".into());
    }
    if !args.iter().any(|a| a == "--no-fail-fast") {
        cargo_args.push("--no-fail-fast".into());
    }
    cargo_args.extend(args.iter().cloned());
    println!(
        "test: cargo {} ({}; RR_CACHE={})",
        cargo_args.join(" "),
        torch.summary(),
        cache.display()
    );
    let mut child = torch_env::cargo(torch)
        .current_dir(root)
        .args(&cargo_args)
        .env("RR_CACHE", cache)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo test")?;
    let mut tally = Tally::default();
    let stdout = child.stdout.take().context("cargo test: no stdout")?;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        tally.add_line(&line);
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    drop(out);
    let status = child.wait().context("waiting for cargo test")?;
    println!("{}", tally.summary());
    if status.success() && tally.failed == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    if tally.failed == 0 {
        // A build error, or a test binary that crashed before its result line.
        eprintln!("error: cargo test failed ({status}) although no test reported a failure");
    }
    Ok(ExitCode::FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_result_lines() {
        let mut t = Tally::default();
        for line in [
            "running 3 tests",
            "test a ... ok",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 7 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.50s",
            "   Doc-tests rr_model",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            t.add_line(line);
        }
        assert_eq!(
            t,
            Tally {
                passed: 10,
                failed: 2,
                ignored: 1,
                binaries: 3
            }
        );
        assert_eq!(t.summary(), "tests: 10 passed, 2 failed, 1 skipped");
    }
}
