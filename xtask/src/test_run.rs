//! `cargo xtask test`: `cargo test --workspace --no-fail-fast`, so that one failing test binary
//! never hides the results of the others, and one closing line that adds up every binary's
//! `test result:` line.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

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
    let mut out = std::io::stdout().lock();
    let status = relay_lines(&mut child, DRAIN_AFTER_EXIT, |line| {
        tally.add_line(line);
        writeln!(out, "{line}")?;
        Ok(out.flush()?)
    })?;
    drop(out);
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

/// How long to keep reading once `cargo test` has exited and its output has gone quiet. A
/// process that a test started and never stopped inherits the pipe and holds it open; waiting
/// for its end of file would stall the run for as long as that process lives.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);

/// Passes every line `child` writes to its piped stdout to `on_line` as it comes, until the pipe
/// closes, or until `child` has exited and the pipe has then been quiet for `drain` (with a
/// warning: something the child started still holds it). Returns the child's exit status.
fn relay_lines(
    child: &mut Child,
    drain: Duration,
    mut on_line: impl FnMut(&str) -> Result<()>,
) -> Result<ExitStatus> {
    let stdout = child.stdout.take().context("cargo test: no stdout")?;
    let (lines, received) = mpsc::channel();
    // Detached: a reader blocked on a pipe that something else holds cannot be joined.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut quiet_since_exit: Option<Instant> = None;
    loop {
        match received.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                on_line(&line.context("reading cargo test's output")?)?;
                quiet_since_exit = quiet_since_exit.map(|_| Instant::now());
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => match quiet_since_exit {
                None => {
                    if child
                        .try_wait()
                        .context("waiting for cargo test")?
                        .is_some()
                    {
                        quiet_since_exit = Some(Instant::now());
                    }
                }
                Some(since) if since.elapsed() >= drain => {
                    eprintln!(
                        "warning: cargo test has exited but a process it started still holds its output open (a test that did not stop a child); not waiting for it"
                    );
                    break;
                }
                Some(_) => {}
            },
        }
    }
    child.wait().context("waiting for cargo test")
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

    #[test]
    fn a_leaked_grandchild_holding_the_pipe_does_not_stall_the_relay() {
        // The shell exits at once; its background `sleep` keeps the pipe open for 30 s.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; echo done"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let mut lines = Vec::new();
        let status = relay_lines(&mut child, Duration::from_secs(2), |l| {
            lines.push(l.to_string());
            Ok(())
        })
        .unwrap();
        let elapsed = started.elapsed();
        let leaked = lines[0].clone();
        let _ = std::process::Command::new("kill").arg(&leaked).status();
        assert!(status.success());
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[1], "done");
        assert!(
            elapsed < Duration::from_secs(20),
            "waited {elapsed:?} for the leaked sleep"
        );
    }

    #[test]
    fn every_line_is_relayed_when_the_pipe_closes_normally() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "for i in 1 2 3; do echo line $i; done; exit 3"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = Vec::new();
        let status = relay_lines(&mut child, Duration::from_secs(60), |l| {
            lines.push(l.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(lines, ["line 1", "line 2", "line 3"]);
        assert_eq!(status.code(), Some(3));
    }
}
