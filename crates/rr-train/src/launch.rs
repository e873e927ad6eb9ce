//! `rr train --nproc-per-node N`: torchrun's single-node launch without torchrun. This process
//! starts N copies of its own command line (without the flag), each with the environment a
//! torchrun worker gets (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, and
//! `OMP_NUM_THREADS` sharing the cores unless set), and waits for all of them. A rank that
//! loses a peer stops by itself within its collective timeout, so none is killed here.

use std::ffi::OsString;
use std::process::Command;

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
        children.push(
            cmd.spawn()
                .with_context(|| format!("cannot start rank {rank}"))?,
        );
    }
    let mut failed = Vec::new();
    for (rank, mut child) in children.into_iter().enumerate() {
        let status = child
            .wait()
            .with_context(|| format!("waiting for rank {rank}"))?;
        if !status.success() {
            failed.push(format!("rank {rank} ({status})"));
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {nproc} ranks failed: {}",
            failed.len(),
            failed.join(", ")
        );
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
