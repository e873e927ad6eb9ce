//! Training through the real `rr` binary: exact resumption after `kill -9`, and bad recipes
//! refused before any compute with nothing written.

use rr_util::test_data::shared_data;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn rr(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rr"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run rr")
}

fn rr_ok(dir: &Path, args: &[&str]) {
    let out = rr(dir, args);
    assert!(
        out.status.success(),
        "rr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rr_err(dir: &Path, args: &[&str]) -> String {
    let out = rr(dir, args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "rr {args:?} should fail: {err}");
    // Progress lines may precede it; the error itself is one line, the last.
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {err}");
    assert_eq!(err.lines().last(), Some(errors[0]), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    errors[0].to_string()
}

/// A stories260K retrofit, packed TinyStories and a recipe, in a fresh directory.
fn setup(shared: &Path, steps: usize) -> tempfile::TempDir {
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
    std::fs::write(d.join("cfg.toml"), recipe(steps, "packed", "rec")).unwrap();
    tmp
}

fn recipe(steps: usize, data: &str, init: &str) -> String {
    format!(
        r#"name = "resume"
seed = 7

[model]
init = "{init}"

[data]
train = [{{ path = "{data}" }}]

[training]
steps = {steps}
micro_batch_size = 2
grad_accum = 2
device = "cpu"
checkpoint_every = 10
eval_every = 10
keep_last = 2
eval_recurrences = [1, 2]
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
kind = "muon"
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

/// Steps of the held-out evaluation lines of a run's metrics.
fn eval_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.get("heldout_loss")?;
            v["step"].as_u64()
        })
        .collect()
}

#[test]
fn kill_and_resume_gives_bit_identical_losses() {
    let Some(shared) = shared_data() else { return };
    // The spec's check: 20 steps straight vs 10 steps, kill -9, and --resume for 10 more.
    let steps = 20;
    let tmp = setup(&shared, steps);
    let d = tmp.path();
    rr_ok(
        d,
        &["train", "--config", "cfg.toml", "--run-dir", "straight"],
    );
    let straight = losses(&d.join("straight"));
    assert_eq!(straight.len(), steps);

    // The same run, really killed (SIGKILL) once its first checkpoint is complete.
    let mut child = Command::new(env!("CARGO_BIN_EXE_rr"))
        .current_dir(d)
        .args(["train", "--config", "cfg.toml", "--run-dir", "killed"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = d.join("killed/checkpoints/step-000010");
    let start = Instant::now();
    while !first.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("training ended early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = losses(&d.join("killed"));
    assert!(
        partial.len() < steps,
        "the run finished before it was killed; nothing was tested"
    );

    rr_ok(
        d,
        &[
            "train",
            "--config",
            "cfg.toml",
            "--run-dir",
            "killed",
            "--resume",
        ],
    );
    let resumed = losses(&d.join("killed"));
    assert_eq!(resumed.len(), steps);
    // Killed right after its step-10 checkpoint, before or after that step's held-out
    // evaluation: the resumed run has each evaluation exactly once, as the straight one.
    assert_eq!(eval_steps(&d.join("killed")), [0, 10, 20]);
    assert_eq!(eval_steps(&d.join("straight")), [0, 10, 20]);
    for (a, b) in straight.iter().zip(&resumed) {
        assert_eq!(a.0, b.0);
        assert_eq!(
            a.1.to_bits(),
            b.1.to_bits(),
            "step {}: {} vs {}",
            a.0,
            a.1,
            b.1
        );
    }
    // Only the newest K checkpoints are kept, and each is a usable model.
    let ckpts: Vec<String> = std::fs::read_dir(d.join("killed/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert_eq!(ckpts.len(), 2, "{ckpts:?}");
    let text = d.join("stories.txt");
    rr_ok(
        d,
        &[
            "score",
            "--model",
            "killed/checkpoints/step-000020",
            "--text-file",
            text.to_str().unwrap(),
            "--max-tokens",
            "64",
            "--recurrence",
            "2",
            "--device",
            "cpu",
        ],
    );
    for f in ["summary.md", "loss.svg", "heldout.svg"] {
        assert!(d.join("killed").join(f).exists(), "{f} missing");
    }

    // A changed recipe is refused on resume unless forced.
    std::fs::write(
        d.join("cfg.toml"),
        recipe(steps, "packed", "rec").replace("seed = 7", "seed = 8"),
    )
    .unwrap();
    let err = rr_err(
        d,
        &[
            "train",
            "--config",
            "cfg.toml",
            "--run-dir",
            "killed",
            "--resume",
        ],
    );
    assert!(err.contains("config changed"), "{err}");
}

#[test]
fn bad_recipes_are_refused_before_any_compute() {
    let Some(shared) = shared_data() else { return };
    let tmp = setup(&shared, 4);
    let d = tmp.path();
    let good = recipe(4, "packed", "rec");
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("seed = 7", "seed = 7\nlearning_rate = 3"),
            "unknown field `learning_rate`",
        ),
        (good.replace("steps = 4", "steps = 0"), "must be at least 1"),
        (
            good.replace("shape = \"linear\"", "shape = \"cubic\""),
            "unknown variant `cubic`",
        ),
        (recipe(4, "missing", "rec"), "missing"),
        (recipe(4, "packed", "nowhere"), "nowhere"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        std::fs::write(d.join("bad.toml"), text).unwrap();
        let run = format!("run{i}");
        let err = rr_err(d, &["train", "--config", "bad.toml", "--run-dir", &run]);
        assert!(err.contains(expected), "case {i}: {err}");
        assert!(!d.join(&run).exists(), "case {i} wrote a run directory");
    }
    // `--control` needs the recipe's `[prepare] control`; the error names the file.
    std::fs::write(d.join("bad.toml"), &good).unwrap();
    let err = rr_err(
        d,
        &[
            "train",
            "--config",
            "bad.toml",
            "--control",
            "--run-dir",
            "run-c",
        ],
    );
    assert!(
        err.contains("bad.toml") && err.contains("[prepare] control"),
        "{err}"
    );
    assert!(!d.join("run-c").exists());
    // Packed with another tokenizer (Llama 2's).
    let llama2 = shared.join("tokenizers/llama2/tokenizer.json");
    rr_ok(
        d,
        &[
            "data",
            "pack",
            "--tokenizer",
            llama2.to_str().unwrap(),
            "--input",
            "stories.txt",
            "--format",
            "text",
            "--seq-len",
            "32",
            "--out",
            "packed-llama2",
        ],
    );
    std::fs::write(d.join("bad.toml"), recipe(4, "packed-llama2", "rec")).unwrap();
    let err = rr_err(
        d,
        &["train", "--config", "bad.toml", "--run-dir", "run-tok"],
    );
    assert!(err.contains("tokenizer"), "{err}");
    assert!(!d.join("run-tok").exists());
    // Rows longer than the model's context (stories260K: 512).
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
            "600",
            "--out",
            "packed-long",
        ],
    );
    std::fs::write(d.join("bad.toml"), recipe(4, "packed-long", "rec")).unwrap();
    let err = rr_err(
        d,
        &["train", "--config", "bad.toml", "--run-dir", "run-long"],
    );
    assert!(err.contains("beyond the model's context"), "{err}");
    assert!(!d.join("run-long").exists());
    // Empty input data.
    std::fs::write(d.join("empty.txt"), "\n\n").unwrap();
    let err = rr_err(
        d,
        &[
            "data",
            "pack",
            "--tokenizer",
            "rec",
            "--input",
            "empty.txt",
            "--format",
            "text",
            "--seq-len",
            "32",
            "--out",
            "packed-empty",
        ],
    );
    assert!(err.contains("empty.txt"), "{err}");
    assert!(!d.join("packed-empty").exists());
    // A shard holding a token id beyond the model's vocabulary (512): refused when the
    // trainer opens the set, naming the shard, not mid-training.
    copy_dir(&d.join("packed"), &d.join("packed-bad-ids"));
    let shard = d.join("packed-bad-ids/train-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[10..12].copy_from_slice(&40_000u16.to_le_bytes());
    std::fs::write(&shard, bytes).unwrap();
    std::fs::write(d.join("bad.toml"), recipe(4, "packed-bad-ids", "rec")).unwrap();
    let err = rr_err(
        d,
        &["train", "--config", "bad.toml", "--run-dir", "run-ids"],
    );
    assert!(
        err.contains("train-00000.bin") && err.contains("token id 40000"),
        "{err}"
    );
    assert!(!d.join("run-ids").exists());
    // --match-flops against a run whose FLOPs are negative or absurd.
    for (flops, expected) in [("-5.0", "not a positive number"), ("1e300", "at most 10^7")] {
        std::fs::create_dir_all(d.join("fake")).unwrap();
        std::fs::write(
            d.join("fake/summary.json"),
            format!("{{\"flops\": {flops}}}"),
        )
        .unwrap();
        let err = rr_err(
            d,
            &[
                "train",
                "--config",
                "cfg.toml",
                "--run-dir",
                "run-mf",
                "--match-flops",
                "fake",
            ],
        );
        assert!(err.contains(expected), "{flops}: {err}");
        assert!(!d.join("run-mf").exists());
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let Some(shared) = shared_data() else { return };
    let tmp = setup(&shared, 5);
    let d = tmp.path();
    // An absurd learning rate: step 1 is finite, its update overflows the model.
    let text = recipe(5, "packed", "rec")
        .replace("checkpoint_every = 10", "checkpoint_every = 1")
        .replace("kind = \"muon\"", "kind = \"adamw\"\nlr = 1e30");
    std::fs::write(d.join("diverge.toml"), text).unwrap();
    let err = rr_err(
        d,
        &["train", "--config", "diverge.toml", "--run-dir", "diverge"],
    );
    assert!(
        err.contains("non-finite") && err.contains("step 2"),
        "{err}"
    );
    assert!(err.contains("step-000001"), "{err}");
    let kept = d.join("diverge/checkpoints/step-000001");
    assert!(kept.join("model.safetensors").exists() && kept.join("trainer_state.json").exists());
    assert!(!d.join("diverge/checkpoints/step-000002").exists());
}

/// bf16 results rounded per decoder layer: 2 norms, q/k/v, scores, softmax, p·v, output
/// projection, 2 residual additions, gate, up, activation × up, down (bf16 matmuls accumulate in
/// fp32, so one rounding per result).
const BF16_ROUNDINGS_PER_LAYER: usize = 14;

/// |bf16 − fp32| allowed for a training loss of the `rec` retrofit (prelude 1, core 3, coda 1)
/// at recurrence up to `r`, `logit_rms` the scale of its logits. Each of the N roundings is a
/// relative error of at most u = 2⁻⁸, uniform (σ = u/√3); independent, they add up to √N·u/√3
/// relative on the logits (the worst case N·u is above 1 and says nothing). A token's loss
/// moves by Σⱼ (pⱼ − yⱼ)·Δzⱼ, at most √2 times one logit's σ: 6σ of that.
fn bf16_loss_bound(r: usize, logit_rms: f64) -> f64 {
    let roundings = (1 + 3 * r + 1) * BF16_ROUNDINGS_PER_LAYER + r + 2;
    let sigma = (roundings as f64 / 3.0).sqrt() / 256.0 * logit_rms;
    6.0 * 2f64.sqrt() * sigma
}

/// Largest recurrence n + k of each training step's micro-batches.
fn step_recurrences(run: &Path) -> Vec<usize> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let (n, k) = (v["n"].as_array()?, v["k"].as_array()?);
            n.iter()
                .zip(k)
                .map(|(n, k)| (n.as_u64().unwrap() + k.as_u64().unwrap()) as usize)
                .max()
        })
        .collect()
}

/// The root mean square of the `rec` model's logits on the first 32 tokens of the packed text,
/// at recurrence `r`.
fn logit_rms(d: &Path, r: usize) -> f64 {
    let model =
        rr_model::AnyModel::load(&d.join("rec"), tch::Device::Cpu, tch::Kind::Float).unwrap();
    let tok = rr_model::Tokenizer::from_path(&d.join("rec")).unwrap();
    let text = std::fs::read_to_string(d.join("stories.txt")).unwrap();
    let mut ids = tok.encode(&text[..400], true).unwrap();
    ids.truncate(32);
    let ids = tch::Tensor::from_slice(&ids).view([1, -1]);
    let tt = rr_model::TestTime {
        recurrence: r,
        seed: 0,
    };
    let logits = tch::no_grad(|| model.logits(&ids, None, tt)).unwrap();
    logits
        .square()
        .mean(tch::Kind::Float)
        .sqrt()
        .double_value(&[])
}

/// bf16 compute with fp32 master weights gives the fp32 losses to bf16 rounding. On a CPU
/// without native bf16 the trainer computes in fp32 instead (with a warning): the same losses.
#[test]
fn bf16_compute_matches_fp32_to_bf16_tolerance() {
    let Some(shared) = shared_data() else { return };
    let tmp = setup(&shared, 4);
    let d = tmp.path();
    let base = recipe(4, "packed", "rec");
    std::fs::write(
        d.join("f32.toml"),
        base.replace("device = \"cpu\"", "device = \"cpu\"\ndtype = \"f32\""),
    )
    .unwrap();
    std::fs::write(
        d.join("bf16.toml"),
        base.replace("device = \"cpu\"", "device = \"cpu\"\ndtype = \"bf16\""),
    )
    .unwrap();
    rr_ok(d, &["train", "--config", "f32.toml", "--run-dir", "f32"]);
    rr_ok(d, &["train", "--config", "bf16.toml", "--run-dir", "bf16"]);
    let (a, b) = (losses(&d.join("f32")), losses(&d.join("bf16")));
    assert_eq!(a.len(), 4);
    let native = rr_model::device::bf16_is_fast(tch::Device::Cpu);
    let recurrences = step_recurrences(&d.join("f32"));
    assert_eq!(recurrences, step_recurrences(&d.join("bf16")));
    for (((step, x), (_, y)), r) in a.iter().zip(&b).zip(recurrences) {
        if !native {
            assert_eq!(
                x, y,
                "step {step}: no native bf16, so the trainer computes in fp32"
            );
            continue;
        }
        let bound = bf16_loss_bound(r, logit_rms(d, r));
        eprintln!(
            "step {step} (r ≤ {r}): f32 {x} vs bf16 {y}: |Δ| {:.3e}, bound {bound:.3e}",
            (x - y).abs()
        );
        assert!(
            (x - y).abs() <= bound,
            "step {step}: f32 {x} vs bf16 {y} (bound {bound:.3e})"
        );
        assert!(x != y, "step {step}: identical losses; bf16 was not used");
    }
}

/// With the kernels capped to AVX2 (`ONEDNN_MAX_CPU_ISA=AVX2`, `ATEN_CPU_CAPABILITY=avx2`: what
/// an AVX2-only CPU runs), a bf16 recipe computes in fp32, bit-identical to the fp32 recipe, and
/// says so; the log's CPU line names the cap. This exercises the no-native-bf16 path on every
/// machine, this AVX-512 BF16 one included.
#[test]
fn bf16_recipe_runs_in_fp32_on_avx2_kernels() {
    let Some(shared) = shared_data() else { return };
    let tmp = setup(&shared, 2);
    let d = tmp.path();
    let base = recipe(2, "packed", "rec");
    // Both runs under the same cap: AVX2 kernels also sum fp32 in another order than AVX-512
    // ones, so only runs on the same kernels can be compared bit for bit.
    let train_capped = |dtype: &str| {
        let text = base.replace(
            "device = \"cpu\"",
            &format!("device = \"cpu\"\ndtype = \"{dtype}\""),
        );
        std::fs::write(d.join(format!("{dtype}.toml")), text).unwrap();
        let config = format!("{dtype}.toml");
        let out = Command::new(env!("CARGO_BIN_EXE_rr"))
            .current_dir(d)
            .env("ONEDNN_MAX_CPU_ISA", "AVX2")
            .env("ATEN_CPU_CAPABILITY", "avx2")
            .args(["train", "--config", &config, "--run-dir", dtype])
            .output()
            .expect("run rr");
        let log = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{log}");
        assert!(
            log.contains("kernels capped by ONEDNN_MAX_CPU_ISA=AVX2"),
            "{log}"
        );
        log
    };
    train_capped("f32");
    let log = train_capped("bf16");
    assert!(
        log.contains("training.dtype = bf16, but this CPU has no native bf16"),
        "{log}"
    );
    assert_eq!(losses(&d.join("f32")), losses(&d.join("bf16")));
}

/// Every checkpoint's config.json records what the model was trained for (the curriculum's
/// target mean recurrence and backprop depth) instead of the surgery's values, and `rr`
/// defaults to it.
#[test]
fn checkpoints_record_the_trained_recurrence() {
    let Some(shared) = shared_data() else { return };
    let tmp = setup(&shared, 2);
    let d = tmp.path();
    let config = |dir: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join(dir).join("config.json")).unwrap())
            .unwrap()
    };
    let pair = |c: &serde_json::Value| {
        (
            c["mean_recurrence"].as_u64().unwrap(),
            c["mean_backprop_depth"].as_u64().unwrap(),
        )
    };
    // The surgery's defaults, which the recipe (mean 3, backprop depth 2) differs from.
    assert_eq!(pair(&config("rec")), (4, 8));
    let text = recipe(2, "packed", "rec")
        .replace("checkpoint_every = 10", "checkpoint_every = 1")
        .replace("[lr]", "[curriculum.sampler]\nbackprop_depth = 2\n\n[lr]");
    std::fs::write(d.join("trained.toml"), text).unwrap();
    rr_ok(
        d,
        &["train", "--config", "trained.toml", "--run-dir", "run"],
    );
    for step in ["step-000001", "step-000002"] {
        let c = config(&format!("run/checkpoints/{step}"));
        assert_eq!(pair(&c), (3, 2), "{step}");
        // Nothing else of the config changed.
        let mut rest = c.clone();
        let mut surgery = config("rec");
        for v in [&mut rest, &mut surgery] {
            let o = v.as_object_mut().unwrap();
            o.remove("mean_recurrence");
            o.remove("mean_backprop_depth");
        }
        assert_eq!(rest, surgery, "{step}");
    }
    // The default test recurrence of the checkpoint is the trained one.
    let ckpt = "run/checkpoints/step-000002";
    let text_file = d.join("stories.txt");
    let nll = |extra: &[&str]| -> f64 {
        let mut args = vec![
            "score",
            "--model",
            ckpt,
            "--text-file",
            text_file.to_str().unwrap(),
            "--max-tokens",
            "48",
            "--device",
            "cpu",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = rr(d, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["mean_nll"].as_f64().unwrap()
    };
    let default = nll(&[]);
    assert_eq!(default.to_bits(), nll(&["--recurrence", "3"]).to_bits());
    assert_ne!(default.to_bits(), nll(&["--recurrence", "4"]).to_bits());
}

/// The run directory is protected: a run name of dots is refused, `--force` only replaces an
/// rr run directory (never the working directory or a user's folder), a second trainer on a
/// locked run refuses, a damaged newest checkpoint makes `--resume` fall back to the newest
/// intact one with a warning, unfinished checkpoint directories of a killed run are cleaned,
/// and resuming a finished run changes nothing.
#[test]
fn run_directories_are_locked_checked_and_never_wiped_by_mistake() {
    let Some(shared) = shared_data() else { return };
    let tmp = setup(&shared, 20);
    let d = tmp.path();
    let cfg = std::fs::read_to_string(d.join("cfg.toml")).unwrap();
    for bad in ["..", ".", "a/b", ""] {
        std::fs::write(
            d.join("bad.toml"),
            cfg.replace("name = \"resume\"", &format!("name = \"{bad}\"")),
        )
        .unwrap();
        let err = rr_err(d, &["train", "--config", "bad.toml", "--force"]);
        assert!(err.contains("plain directory name"), "{bad:?}: {err}");
    }
    assert!(d.join("rec/config.json").exists() && d.join("cfg.toml").exists());

    // --force on a folder that is not a run: refused, untouched.
    std::fs::create_dir(d.join("mine")).unwrap();
    std::fs::write(d.join("mine/notes.txt"), "precious").unwrap();
    let err = rr_err(
        d,
        &[
            "train",
            "--config",
            "cfg.toml",
            "--run-dir",
            "mine",
            "--force",
        ],
    );
    assert!(err.contains("not an rr run directory"), "{err}");
    assert_eq!(
        std::fs::read_to_string(d.join("mine/notes.txt")).unwrap(),
        "precious"
    );

    rr_ok(d, &["train", "--config", "cfg.toml", "--run-dir", "run"]);
    let finished = std::fs::read_to_string(d.join("run/metrics.jsonl")).unwrap();
    // Resuming a finished run appends nothing.
    rr_ok(
        d,
        &[
            "train",
            "--config",
            "cfg.toml",
            "--run-dir",
            "run",
            "--resume",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(d.join("run/metrics.jsonl")).unwrap(),
        finished
    );

    // A live lock (this test process) makes a second trainer refuse.
    let lock = d.join("run/.lock");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    std::fs::write(&lock, format!("{} {}\n", std::process::id(), host.trim())).unwrap();
    let err = rr_err(
        d,
        &[
            "train",
            "--config",
            "cfg.toml",
            "--run-dir",
            "run",
            "--resume",
        ],
    );
    assert!(err.contains("in use by process"), "{err}");
    let err = rr_err(
        d,
        &[
            "train",
            "--config",
            "cfg.toml",
            "--run-dir",
            "run",
            "--force",
        ],
    );
    assert!(err.contains("in use by process"), "{err}");
    std::fs::remove_file(&lock).unwrap();

    // Damage the newest checkpoint's optimizer state; leave an unfinished checkpoint behind.
    let newest = d.join("run/checkpoints/step-000020/optimizer.safetensors");
    let mut bytes = std::fs::read(&newest).unwrap();
    let n = bytes.len();
    bytes[n - 64..].fill(0);
    std::fs::write(&newest, bytes).unwrap();
    std::fs::create_dir(d.join("run/checkpoints/.step-000030.abc123.tmp")).unwrap();
    let out = rr(
        d,
        &[
            "train",
            "--config",
            "cfg.toml",
            "--run-dir",
            "run",
            "--resume",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("step-000020/optimizer.safetensors: checksum mismatch")
            && err.contains("falling back"),
        "{err}"
    );
    assert!(!d.join("run/checkpoints/.step-000030.abc123.tmp").exists());
    // It resumed from step 10 and trained to the end again: 20 step lines as before.
    assert_eq!(losses(&d.join("run")).len(), 20);

    // --force replaces a run directory (it carries the marker).
    rr_ok(
        d,
        &[
            "train",
            "--config",
            "cfg.toml",
            "--run-dir",
            "run",
            "--force",
        ],
    );
    assert_eq!(losses(&d.join("run")).len(), 20);
    let leftovers: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".run"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A two-phase run (healing, then the task) is two recipes chained: phase 2's `model.init` is
/// phase 1's final checkpoint. Phase 2 starts at step 0 with a fresh optimizer, schedule and
/// curriculum: its losses are bit-identical to a run from the checkpoint's model files alone
/// (without `optimizer.safetensors` and `trainer_state.json`), its first step runs at the
/// schedule's step-0 multiplier, and its checkpoints record its own mean recurrence.
#[test]
fn phase_two_starts_fresh_from_a_phase_one_checkpoint() {
    let Some(shared) = shared_data() else { return };
    let tmp = setup(&shared, 2);
    let d = tmp.path();
    let phase_1 =
        recipe(2, "packed", "rec").replace("checkpoint_every = 10", "checkpoint_every = 1");
    std::fs::write(d.join("phase1.toml"), phase_1).unwrap();
    rr_ok(
        d,
        &["train", "--config", "phase1.toml", "--run-dir", "run1"],
    );
    let ckpt = d.join("run1/checkpoints/step-000002");
    assert!(ckpt.join("optimizer.safetensors").exists());
    // The same model without the optimizer and trainer state.
    std::fs::create_dir(d.join("weights-only")).unwrap();
    for entry in std::fs::read_dir(&ckpt).unwrap() {
        let name = entry.unwrap().file_name();
        let name = name.to_str().unwrap();
        if ![
            "optimizer.safetensors",
            "trainer_state.json",
            "checksums.json",
        ]
        .contains(&name)
        {
            std::fs::copy(ckpt.join(name), d.join("weights-only").join(name)).unwrap();
        }
    }
    let phase_2 = |init: &str| {
        recipe(3, "packed", init)
            .replace("name = \"resume\"", "name = \"phase2\"")
            .replace("target = 3", "target = 2")
            .replace("checkpoint_every = 10", "checkpoint_every = 3")
    };
    std::fs::write(
        d.join("phase2.toml"),
        phase_2("run1/checkpoints/step-000002"),
    )
    .unwrap();
    std::fs::write(d.join("fresh.toml"), phase_2("weights-only")).unwrap();
    rr_ok(
        d,
        &["train", "--config", "phase2.toml", "--run-dir", "run2"],
    );
    rr_ok(
        d,
        &["train", "--config", "fresh.toml", "--run-dir", "run-fresh"],
    );

    let chained = losses(&d.join("run2"));
    assert_eq!(chained.iter().map(|l| l.0).collect::<Vec<_>>(), [1, 2, 3]);
    let bits = |v: &[(u64, f64)]| v.iter().map(|l| l.1.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&chained), bits(&losses(&d.join("run-fresh"))));
    let first: serde_json::Value = std::fs::read_to_string(d.join("run2/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v.get("loss").is_some())
        .unwrap();
    // Step 0 of the fresh schedule: warmup from floor_ratio, 0.1 + 0.9 · 0/3; the tokens of
    // one step (2 rows × 2 micro-batches × 32 tokens), not phase 1's running total.
    assert_eq!(first["lr_multiplier"].as_f64(), Some(0.1));
    assert_eq!(first["tokens"].as_u64(), Some(2 * 2 * 32));
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("run2/checkpoints/step-000003/trainer_state.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(state["step"].as_u64(), Some(3));
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("run2/checkpoints/step-000003/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["mean_recurrence"].as_u64(), Some(2));
}

/// No host synchronisation in the step: a step reads nothing on the host (no loss, gradient
/// norm or finiteness flag) unless it logs or checkpoints, and then reads once (the loss,
/// the norm and every unread step's flags together). `log_every = 3`, `checkpoint_every = 4`
/// over 6 steps: reads after steps 3 (log), 4 (checkpoint) and 6 (log and checkpoint). Counted
/// by `rr_train::host`, through which every host read of rr-train goes.
#[test]
fn steps_read_the_host_only_when_they_log_or_checkpoint() {
    let Some(shared) = shared_data() else { return };
    let tmp = setup(&shared, 6);
    let d = tmp.path();
    for (checkpointing, optimizer) in [(false, "muon"), (true, "adamw")] {
        let text = recipe(
            6,
            d.join("packed").to_str().unwrap(),
            d.join("rec").to_str().unwrap(),
        )
        .replace(
            "checkpoint_every = 10",
            "checkpoint_every = 4\nlog_every = 3",
        )
        .replace("eval_every = 10", "eval_every = 0")
        .replace(
            "[training]\n",
            &format!("[training]\nactivation_checkpointing = {checkpointing}\n"),
        )
        .replace("kind = \"muon\"", &format!("kind = \"{optimizer}\""));
        let cfg_path = d.join(format!("reads-{optimizer}.toml"));
        std::fs::write(&cfg_path, text).unwrap();
        let cfg = rr_recipe::TrainConfig::from_path(&cfg_path).unwrap();
        let run_dir = d.join(format!("reads-{optimizer}"));
        let opts = rr_train::TrainOptions {
            run_dir: run_dir.clone(),
            resume: false,
            force: false,
            match_flops: None,
            collective_timeout: Duration::from_secs(60),
        };
        let mut trainer = rr_train::trainer::Trainer::new(&cfg, &opts).unwrap();
        let mut reads = Vec::new();
        for _ in 0..6 {
            let before = rr_train::host::reads();
            trainer.step().unwrap();
            reads.push(rr_train::host::reads() - before);
        }
        assert_eq!(
            reads,
            [0, 0, 1, 1, 0, 1],
            "{optimizer}, checkpointing {checkpointing}"
        );
        let logged: Vec<u64> = losses(&run_dir).iter().map(|(step, _)| *step).collect();
        assert_eq!(logged, [3, 6]);
        assert!(losses(&run_dir)
            .iter()
            .all(|(_, l)| l.is_finite() && *l > 0.0));
    }
}
