//! Data-parallel training through the real `rr` binary, as real processes on 127.0.0.1 talking
//! through torch's c10d (Gloo on CPU): world 2 with b rows per rank equals world 1 with 2b rows,
//! a world-2 checkpoint resumes at world 1 on the same curve, a killed rank stops the other with
//! a message naming it, and a rank with another recipe is refused before any step.

use rr_util::test_data::shared_data;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn rr(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rr"))
        .current_dir(dir)
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run rr")
}

fn rr_ok(dir: &Path, args: &[&str]) {
    rr_ok_env(dir, args, &[]);
}

fn rr_ok_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) {
    let out = rr(dir, args, env);
    assert!(
        out.status.success(),
        "rr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One rank of a torchrun-style job, started by hand.
fn rank(dir: &Path, args: &[&str], rank: usize, world: usize, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rr"))
        .current_dir(dir)
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rr")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A stories260K retrofit and packed TinyStories (rows of 32 tokens) in a fresh directory.
fn setup(shared: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let hf = shared.join("models/stories260K/hf");
    rr_ok(
        d,
        &[
            "surgery",
            "--model",
            hf.to_str().unwrap(),
            "--layers",
            "1,3,1",
            "--out",
            "rec",
        ],
    );
    let text = std::fs::read_to_string(shared.join("tinystories/tinystories_validation_head.txt"))
        .unwrap();
    std::fs::write(d.join("stories.txt"), &text[..60_000]).unwrap();
    rr_ok(
        d,
        &[
            "data",
            "pack",
            "--tokenizer",
            "rec",
            "--input",
            "stories.txt",
            "--format",
            "text",
            "--seq-len",
            "32",
            "--out",
            "packed",
            "--heldout-fraction",
            "0.05",
        ],
    );
    tmp
}

/// `micro_batch_size` is the global micro-batch: 4 rows, 2 per rank at world 2.
fn recipe(optimizer: &str, seed: u64, steps: usize) -> String {
    format!(
        r#"name = "dp"
seed = {seed}

[model]
init = "rec"

[data]
train = [{{ path = "packed" }}]

[training]
steps = {steps}
micro_batch_size = 4
grad_accum = 2
device = "cpu"
checkpoint_every = 10
eval_every = 10
keep_last = 3
eval_recurrences = [2]
eval_rows = 2

[curriculum.mean]
shape = "linear"
target = 3
ramp_fraction = 0.5

[lr]
kind = "warmup_stable_decay"
peak = 1.0
warmup_steps = 3
decay_fraction = 0.5
floor_ratio = 0.1

[optimizer]
kind = "{optimizer}"
"#
    )
}

/// (step, loss) of every training line in a run's metrics.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((v["step"].as_u64()?, v["loss"].as_f64()?))
        })
        .collect()
}

/// Every parameter of a checkpoint, by name.
fn parameters(checkpoint: &Path) -> Vec<(String, tch::Tensor)> {
    let mut p = tch::Tensor::read_safetensors(checkpoint.join("model.safetensors")).unwrap();
    p.sort_by(|a, b| a.0.cmp(&b.0));
    p
}

/// Same steps, losses within `rel` of each other.
fn assert_same_curve(a: &[(u64, f64)], b: &[(u64, f64)], rel: f64) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x.1 - y.1).abs() / x.1.abs())
        .fold(0.0, f64::max);
    println!("losses: max relative difference {worst:.2e} (bound {rel:.0e})");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.0, y.0);
        assert!(
            (x.1 - y.1).abs() <= rel * x.1.abs(),
            "step {}: {} vs {}",
            x.0,
            x.1,
            y.1
        );
    }
}

/// max |a - b| / max |a| over every parameter.
fn assert_same_parameters(a: &Path, b: &Path, rel: f64) {
    let (pa, pb) = (parameters(a), parameters(b));
    assert_eq!(pa.len(), pb.len());
    let mut worst = 0f64;
    for ((na, ta), (nb, tb)) in pa.iter().zip(&pb) {
        assert_eq!(na, nb);
        let diff = f64::try_from((ta - tb).abs().max()).unwrap();
        let scale = f64::try_from(ta.abs().max()).unwrap().max(1e-12);
        worst = worst.max(diff / scale);
        assert!(
            diff <= rel * scale,
            "{na}: max diff {diff} at scale {scale}"
        );
    }
    println!("parameters: max relative difference {worst:.2e} (bound {rel:.0e})");
}

/// The tolerance: fp32 sums over 2 rows per rank then across ranks, against sums over 4 rows,
/// differ in rounding order only (~1e-7 relative per reduction); 20 optimizer steps do not
/// grow that past 1e-5 (the issue's bound) unless the two runs differ in substance.
const REL: f64 = 1e-5;

fn world2_equals_world1(optimizer: &str, env: &[(&str, &str)]) {
    let Some(shared) = shared_data() else { return };
    let tmp = setup(&shared);
    let d = tmp.path();
    std::fs::write(d.join("cfg.toml"), recipe(optimizer, 7, 20)).unwrap();
    let train = ["train", "--config", "cfg.toml", "--run-dir"];
    rr_ok_env(d, &[&train[..], &["w1"]].concat(), env);
    rr_ok_env(
        d,
        &[&train[..], &["w2", "--nproc-per-node", "2"]].concat(),
        env,
    );
    let (w1, w2) = (losses(&d.join("w1")), losses(&d.join("w2")));
    assert_eq!(w1.len(), 20);
    assert_same_curve(&w1, &w2, REL);
    let last = "checkpoints/step-000020";
    assert_same_parameters(&d.join("w1").join(last), &d.join("w2").join(last), REL);
}

/// Activation checkpointing under data parallelism and gradient accumulation (2 micro-batches
/// a step): world 2 recomputing every with-gradient iteration in the backward follows world 1
/// keeping their activations, to the same tolerance (the recomputation changes only the order
/// in which a gradient's contributions are summed, ~1e-7 relative).
#[test]
fn checkpointed_world_2_equals_stored_world_1() {
    let Some(shared) = shared_data() else { return };
    let tmp = setup(&shared);
    let d = tmp.path();
    let stored = recipe("adamw", 7, 20);
    let checkpointed = stored.replace(
        "[training]\n",
        "[training]\nactivation_checkpointing = true\n",
    );
    assert_ne!(stored, checkpointed);
    std::fs::write(d.join("stored.toml"), stored).unwrap();
    std::fs::write(d.join("ckpt.toml"), checkpointed).unwrap();
    rr_ok(d, &["train", "--config", "stored.toml", "--run-dir", "w1"]);
    rr_ok(
        d,
        &[
            "train",
            "--config",
            "ckpt.toml",
            "--run-dir",
            "w2",
            "--nproc-per-node",
            "2",
        ],
    );
    let (w1, w2) = (losses(&d.join("w1")), losses(&d.join("w2")));
    assert_eq!(w1.len(), 20);
    assert_same_curve(&w1, &w2, REL);
    let last = "checkpoints/step-000020";
    assert_same_parameters(&d.join("w1").join(last), &d.join("w2").join(last), REL);
}

#[test]
fn world_2_equals_world_1_with_adamw() {
    world2_equals_world1("adamw", &[]);
}

#[test]
fn world_2_equals_world_1_with_muon() {
    // Muon's Newton–Schulz runs in bf16 on CPUs with native bf16 (as on GPUs): there the
    // ~1e-7 gradient differences flip bf16 roundings (relative step 2⁻⁸) and the curves agree
    // only to bf16 resolution, in world 1 against 2 as in PyTorch DDP. Capping oneDNN below
    // AVX512_CORE_BF16 makes rr run the iteration in fp32 (`bf16_is_fast`), so the check
    // compares the data-parallel arithmetic itself at the issue's 1e-5.
    world2_equals_world1("muon", &[("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")]);
}

#[test]
fn a_world_2_checkpoint_resumes_at_world_1_and_4_on_the_same_curve() {
    let Some(shared) = shared_data() else { return };
    let tmp = setup(&shared);
    let d = tmp.path();
    std::fs::write(d.join("cfg.toml"), recipe("adamw", 7, 20)).unwrap();
    let train = ["train", "--config", "cfg.toml", "--run-dir"];
    rr_ok(d, &[&train[..], &["w2", "--nproc-per-node", "2"]].concat());
    for (name, world) in [("at-world-1", "1"), ("at-world-4", "4")] {
        // Back to the step-10 checkpoint: the later checkpoint and the report go, and the
        // resumed run rewrites the metrics after step 10.
        let run = d.join(name);
        Command::new("cp")
            .arg("-r")
            .arg(d.join("w2"))
            .arg(&run)
            .status()
            .unwrap();
        std::fs::remove_dir_all(run.join("checkpoints/step-000020")).unwrap();
        std::fs::remove_file(run.join("summary.json")).unwrap();
        let parallel = ["--resume", "--nproc-per-node", world];
        rr_ok(d, &[&train[..], &[name], &parallel[..]].concat());
        assert_same_curve(&losses(&d.join("w2")), &losses(&run), REL);
    }
}

#[test]
fn a_killed_rank_stops_the_other_and_the_run_resumes() {
    let Some(shared) = shared_data() else { return };
    let tmp = setup(&shared);
    let d = tmp.path();
    std::fs::write(d.join("cfg.toml"), recipe("adamw", 7, 40)).unwrap();
    let args = [
        "train",
        "--config",
        "cfg.toml",
        "--run-dir",
        "run",
        "--collective-timeout",
        "30",
    ];
    let port = free_port();
    let mut rank0 = rank(d, &args, 0, 2, port);
    let mut rank1 = rank(d, &args, 1, 2, port);
    let first = d.join("run/checkpoints/step-000010");
    let start = Instant::now();
    while !first.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        assert!(rank0.try_wait().unwrap().is_none(), "rank 0 ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    rank1.kill().unwrap(); // SIGKILL
    rank1.wait().unwrap();
    let killed_at = Instant::now();
    let out = rank0.wait_with_output().unwrap();
    let stopped_after = killed_at.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "rank 0 went on: {err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{err}");
    assert!(last.contains("lost rank 1"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{err}"
    );
    // Within the collective timeout (30 s), with room for a slow machine's teardown.
    assert!(stopped_after < Duration::from_secs(45), "{stopped_after:?}");
    assert!(
        losses(&d.join("run")).len() < 40,
        "the run finished before the kill; nothing was tested"
    );
    // The last checkpoint is intact: the run resumes from it and finishes.
    rr_ok(
        d,
        &[
            "train",
            "--config",
            "cfg.toml",
            "--run-dir",
            "run",
            "--resume",
            "--nproc-per-node",
            "2",
        ],
    );
    let resumed = losses(&d.join("run"));
    assert_eq!(
        resumed.iter().map(|l| l.0).collect::<Vec<_>>(),
        (1..=40).collect::<Vec<_>>()
    );
}

#[test]
fn a_rank_with_another_recipe_is_refused_before_any_step() {
    let Some(shared) = shared_data() else { return };
    let tmp = setup(&shared);
    let d = tmp.path();
    std::fs::write(d.join("a.toml"), recipe("adamw", 7, 20)).unwrap();
    std::fs::write(d.join("b.toml"), recipe("adamw", 8, 20)).unwrap();
    let port = free_port();
    let args = |cfg| {
        [
            "train",
            "--config",
            cfg,
            "--run-dir",
            "run",
            "--collective-timeout",
            "30",
        ]
    };
    let rank0 = rank(d, &args("a.toml"), 0, 2, port);
    let rank1 = rank(d, &args("b.toml"), 1, 2, port);
    for (r, child) in [rank0, rank1].into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "rank {r}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.contains("rank 1 runs a different recipe or model than rank 0"),
            "rank {r}: {err}"
        );
    }
    assert!(!d.join("run").exists(), "a refused run wrote its directory");
}

/// The pid of the child of `parent` whose environment has `RANK=rank`, from /proc.
fn child_rank_pid(parent: u32, rank: usize) -> Option<u32> {
    let wanted = format!("RANK={rank}");
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The parent pid is the second field after the parenthesised command name.
        let ppid: u32 = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let has_rank = environ
            .split(|&b| b == 0)
            .any(|var| var == wanted.as_bytes());
        (ppid == parent && has_rank).then_some(pid)
    })
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

#[test]
fn the_launcher_kills_the_other_ranks_when_one_dies() {
    let Some(shared) = shared_data() else { return };
    let tmp = setup(&shared);
    let d = tmp.path();
    std::fs::write(d.join("cfg.toml"), recipe("adamw", 7, 40)).unwrap();
    // A long collective timeout: rank 0 must not stop by itself within this test.
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_rr"))
        .current_dir(d)
        .args(["train", "--config", "cfg.toml", "--run-dir", "run"])
        .args(["--collective-timeout", "600", "--nproc-per-node", "2"])
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = d.join("run/checkpoints/step-000010");
    let start = Instant::now();
    while !first.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        assert!(
            launcher.try_wait().unwrap().is_none(),
            "the launcher ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rank0 = child_rank_pid(launcher.id(), 0).expect("rank 0 is a child of the launcher");
    let rank1 = child_rank_pid(launcher.id(), 1).expect("rank 1 is a child of the launcher");
    // Rank 0 hangs (stopped: it can neither notice the loss nor exit by itself), rank 1 dies.
    let stderr = launcher.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut text);
        text
    });
    signal(rank0, "-STOP");
    signal(rank1, "-9");
    let killed_at = Instant::now();
    let status = loop {
        if let Some(status) = launcher.try_wait().unwrap() {
            break status;
        }
        if killed_at.elapsed() > Duration::from_secs(60) {
            let _ = launcher.kill();
            signal(rank0, "-9");
            panic!("the launcher still waits for the hung rank 0 a minute after rank 1 died");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("rank 1 of 2 was lost"), "{err}");
    assert!(errors[0].contains("SIGKILL"), "{err}");
    // The launcher killed and reaped the hung rank 0.
    assert!(
        !Path::new(&format!("/proc/{rank0}")).exists(),
        "rank 0 ({rank0}) is still there"
    );
}
