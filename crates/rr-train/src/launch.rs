//! `rr train --nproc-per-node N`: torchrun's single-node launch without torchrun. This process
//! starts N copies of its own command line (without the flag), each with the environment a
//! torchrun worker gets (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, and
//! `OMP_NUM_THREADS` sharing the cores unless set), and waits for all of them. When one rank
//! fails or dies, the launcher kills the others at once (a rank that lost a peer would stop by
//! itself within its collective timeout, but a hung one would not) and exits with one line
//! naming the lost rank.

use std::ffi::OsString;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

/// Runs N local ranks of this process's command line, minus `flag` and its value.
pub fn local_ranks(nproc: usize, flag: &str) -> Result<()> {
    ensure!(nproc >= 1, "{flag}: at least one process");
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let args = without_flag(std::env::args_os().skip(1).collect(), flag);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free port for the rendezvous")?
        .port();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / nproc).max(1).to_string();
    let mut children = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            cmd.env("OMP_NUM_THREADS", &threads);
        }
        match cmd.spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                for mut child in children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(e).with_context(|| format!("cannot start rank {rank}"));
            }
        }
    }
    supervise(children)
}

/// How often the launcher looks at its ranks.
const POLL: Duration = Duration::from_millis(100);

/// Waits for every rank. The first one to fail (non-zero exit, or killed: `kill -9`) is the
/// lost rank: the others are killed at once, as torchrun does, since a job missing a rank
/// cannot go on (checkpoints are written atomically, so a kill never leaves a half one), and
/// the error names it.
fn supervise(children: Vec<Child>) -> Result<()> {
    let world = children.len();
    let mut running: Vec<(usize, Child)> = children.into_iter().enumerate().collect();
    while !running.is_empty() {
        let mut lost = None;
        let mut still = Vec::with_capacity(running.len());
        for (rank, mut child) in running {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => lost = lost.or(Some((rank, status.to_string()))),
                Ok(None) => still.push((rank, child)),
                Err(e) => lost = lost.or(Some((rank, format!("cannot be waited for: {e}")))),
            }
        }
        if let Some((rank, how)) = lost {
            for (_, mut child) in still {
                let _ = child.kill();
                let _ = child.wait();
            }
            bail!("rank {rank} of {world} was lost ({how}); stopped the other ranks");
        }
        running = still;
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// Whether this process speaks for the run: a single process, or rank 0 of torchrun's
/// environment (`RANK`).
pub fn is_rank_zero() -> bool {
    std::env::var("RANK").map_or(true, |r| r.trim() == "0")
}

/// `args` without `flag VALUE` or `flag=VALUE`.
fn without_flag(args: Vec<OsString>, flag: &str) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip_value = false;
    let with_value = format!("{flag}=");
    for arg in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        match arg.to_str() {
            Some(a) if a == flag => skip_value = true,
            Some(a) if a.starts_with(&with_value) => {}
            _ => out.push(arg),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_rank_gets_the_others_killed_and_is_named() {
        let spawn = |script: &str| Command::new("sh").args(["-c", script]).spawn().unwrap();
        // `sleep` itself, not under `sh -c`: killing a shell would orphan its `sleep`, which
        // would then hold the test runner's output pipe open for ten minutes.
        let hung = Command::new("sleep")
            .arg("600")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let hung_pid = hung.id();
        let started = std::time::Instant::now();
        let err = supervise(vec![hung, spawn("exit 3")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rank 1 of 2 was lost (exit status: 3); stopped the other ranks"
        );
        assert!(started.elapsed() < Duration::from_secs(60));
        // Killed and reaped: no process is left under its pid.
        assert!(!std::path::Path::new(&format!("/proc/{hung_pid}")).exists());
        assert!(supervise(vec![spawn("exit 0"), spawn("exit 0")]).is_ok());
    }

    #[test]
    fn the_flag_and_its_value_are_dropped_in_both_spellings() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let flag = "--nproc-per-node";
        assert_eq!(
            without_flag(
                args(&["train", "--nproc-per-node", "2", "--config", "c"]),
                flag
            ),
            args(&["train", "--config", "c"])
        );
        assert_eq!(
            without_flag(args(&["train", "--nproc-per-node=4", "--resume"]), flag),
            args(&["train", "--resume"])
        );
    }
}
