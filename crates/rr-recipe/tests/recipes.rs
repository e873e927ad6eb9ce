//! Every committed recipe parses and validates (unknown keys are rejected), and the paper's
//! recipes carry the paper's constants (method.md §5).

use std::path::Path;

use rr_recipe::{OptimizerConfig, TrainConfig};

fn configs() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut out = Vec::new();
    for dir in [root.clone(), root.join("paper")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn all_recipes_parse() {
    let all = configs();
    assert!(all.len() >= 5, "{all:?}");
    for p in all {
        let cfg = TrainConfig::from_path(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        cfg.baseline_variant().unwrap();
    }
}

#[test]
fn paper_recipes_have_the_paper_constants() {
    for p in configs()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/paper/"))
    {
        let two_phase = p.to_string_lossy().contains("-phase");
        let cfg = TrainConfig::from_path(&p).unwrap();
        let t = &cfg.training;
        assert_eq!(t.micro_batch_size * t.grad_accum, 1024, "{}", p.display());
        assert_eq!(t.steps, 50_000);
        assert_eq!(cfg.seed, 74);
        assert_eq!(t.max_grad_norm, 1.0);
        if !two_phase {
            assert_eq!(cfg.prepare.as_ref().unwrap().seq_len, 1024);
        }
        let OptimizerConfig::Muon(m) = &cfg.optimizer else {
            panic!("{}: Muon expected", p.display())
        };
        assert_eq!(
            (m.lr, m.momentum, m.ns_steps, m.adam_lr, m.adam_eps),
            (1e-3, 0.95, 5, 5e-5, 1e-10)
        );
        assert_eq!(m.ns_coefficients, (3.4445, -4.7750, 2.0315));
        assert_eq!(
            cfg.lr,
            rr_curriculum::LrSchedule::WarmupStableDecay {
                peak: 1.0,
                warmup_steps: 125,
                decay_fraction: 0.6,
                floor_ratio: 0.001,
                decay: rr_curriculum::DecayShape::Cosine,
            }
        );
        // The authors' baseline: the same optimizer settings and steps; Llama-3.2 untied.
        let b = cfg.baseline_variant().unwrap();
        assert_eq!(b.optimizer, cfg.optimizer, "{}", p.display());
        assert_eq!(b.training.steps, t.steps);
        assert_eq!(
            b.model.untie_head,
            p.to_string_lossy().contains("llama3.2"),
            "{}",
            p.display()
        );
        if two_phase {
            continue; // tested below
        }
        // The surgery's and the curriculum's mean recurrence, stated once.
        assert_eq!(cfg.mean_recurrence(), Some(32), "{}", p.display());
        let c = cfg.curriculum.unwrap();
        assert_eq!(c.mean.shape, rr_curriculum::RampShape::OneMinusSqrt);
        assert_eq!(c.mean.ramp_fraction, 0.75);
        assert_eq!(c.sampler.backprop_depth, 8);
    }
}

/// The paper's two-phase run as two chained recipes: healing to R = 32, then the task to R = 4,
/// both linear over 25 %; phase 2 starts from phase 1's final checkpoint.
#[test]
fn two_phase_paper_recipes_chain() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/paper");
    let one = TrainConfig::from_path(&dir.join("tinyllama-4-8-4-phase1-healing.toml")).unwrap();
    let two = TrainConfig::from_path(&dir.join("tinyllama-4-8-4-phase2-task.toml")).unwrap();
    let final_checkpoint = Path::new("runs")
        .join(&one.name)
        .join("checkpoints")
        .join(format!("step-{:06}", one.training.steps));
    assert_eq!(two.model.init, final_checkpoint);
    assert!(one.prepare.is_some() && two.prepare.is_none());
    for (cfg, target) in [(&one, 32), (&two, 4)] {
        let mean = cfg.curriculum.unwrap().mean;
        assert_eq!(mean, rr_curriculum::MeanSchedule::linear(target, 0.25));
    }
    assert_eq!(one.optimizer, two.optimizer);
    assert_eq!(one.lr, two.lr);
}

#[test]
fn unknown_keys_are_rejected() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/default.toml"),
    )
    .unwrap();
    let bad = text.replace("[training]", "[training]\nbatch = 3");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, bad).unwrap();
    let err = format!("{:#}", TrainConfig::from_path(&p).unwrap_err());
    assert!(
        err.contains("unknown field `batch`") && err.contains("bad.toml"),
        "{err}"
    );
}

#[test]
fn bad_optimizer_values_are_rejected_when_loading() {
    // A recipe with Muon and a baseline optimizer of its own.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/smollm2-gsm8k.toml"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (bad, expected) in [
        (
            text.replace("kind = \"muon\"", "kind = \"muon\"\nmomentum = 1.5"),
            "optimizer: muon: momentum",
        ),
        (
            text.replace("{ kind = \"adamw\",", "{ kind = \"adamw\", eps = 0.0,"),
            "baseline.optimizer: adamw: eps",
        ),
    ] {
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, bad).unwrap();
        let err = format!("{:#}", TrainConfig::from_path(&p).unwrap_err());
        assert!(err.contains(expected) && err.contains("bad.toml"), "{err}");
    }
}

#[test]
fn the_mean_recurrence_is_stated_once_as_the_curriculum_target() {
    for p in configs() {
        let cfg = TrainConfig::from_path(&p).unwrap();
        let c = cfg.curriculum.unwrap();
        assert_eq!(
            cfg.mean_recurrence(),
            Some(c.mean.target),
            "{}",
            p.display()
        );
        let trained = cfg.trained_recurrence().unwrap();
        assert_eq!(trained.mean_recurrence, c.mean.target);
        assert_eq!(trained.mean_backprop_depth, c.sampler.backprop_depth);
    }
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/default.toml"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("old.toml");
    // The old second statement of it is refused, with a pointer to the one place.
    std::fs::write(
        &p,
        text.replace("[prepare]\n", "[prepare]\nmean_recurrence = 4\n"),
    )
    .unwrap();
    let err = format!("{:#}", TrainConfig::from_path(&p).unwrap_err());
    assert!(
        err.contains("old.toml")
            && err.contains("unknown field `mean_recurrence`")
            && err.contains("[curriculum.mean] target")
            && !err.contains('\n'),
        "{err}"
    );
    // [prepare] builds a recurrent model: it needs the curriculum that gives its recurrence.
    let start = text.find("\n[curriculum.mean]").unwrap();
    let end = text.find("\n[lr]").unwrap();
    std::fs::write(&p, format!("{}{}", &text[..start], &text[end..])).unwrap();
    let err = format!("{:#}", TrainConfig::from_path(&p).unwrap_err());
    assert!(
        err.contains("old.toml") && err.contains("[curriculum.mean] target"),
        "{err}"
    );
}

#[test]
fn a_backprop_ramp_trains_for_its_final_depth() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/default.toml"),
    )
    .unwrap();
    let cfg: TrainConfig = toml::from_str(&text.replace(
        "[lr]\n",
        "[curriculum.sampler]\nbackprop_depth = 3\n\n\
         [curriculum.backprop_ramp]\nend = 6\nramp_fraction = 0.5\n\n[lr]\n",
    ))
    .unwrap();
    cfg.validate().unwrap();
    let t = cfg.trained_recurrence().unwrap();
    assert_eq!((t.mean_recurrence, t.mean_backprop_depth), (4, 6));
    let mut cfg = cfg;
    cfg.curriculum = None;
    cfg.prepare = None;
    assert_eq!(cfg.trained_recurrence(), None);
    assert_eq!(cfg.mean_recurrence(), None);
}

/// `training.activation_checkpointing` is off unless asked for, leaves the hash of a recipe
/// without it unchanged, needs a recurrent model (a [curriculum]) and is dropped by the static
/// baseline.
#[test]
fn activation_checkpointing_is_a_recurrent_switch() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/default.toml"),
    )
    .unwrap();
    let plain: TrainConfig = toml::from_str(&text).unwrap();
    assert!(!plain.training.activation_checkpointing);
    let on_text = text.replace(
        "[training]\n",
        "[training]\nactivation_checkpointing = true\n",
    );
    let on: TrainConfig = toml::from_str(&on_text).unwrap();
    on.validate().unwrap();
    assert!(on.training.activation_checkpointing);
    assert_ne!(on.hash(), plain.hash());
    let mut off = on.clone();
    off.training.activation_checkpointing = false;
    assert_eq!(
        off.hash(),
        plain.hash(),
        "an absent switch keeps old runs' hash"
    );
    let mut static_model = on.clone();
    static_model.curriculum = None;
    static_model.prepare = None;
    let err = format!("{:#}", static_model.validate().unwrap_err());
    assert!(err.contains("activation_checkpointing"), "{err}");
    if on.baseline.is_some() {
        assert!(
            !on.baseline_variant()
                .unwrap()
                .training
                .activation_checkpointing
        );
    }
}

#[test]
fn the_evaluation_and_the_control_are_checked() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/default.toml"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    let bad = text.replace("recurrences = [1, 2, 4, 8, 16, 32]", "recurrences = [0, 4]");
    assert_ne!(bad, text);
    std::fs::write(&p, bad).unwrap();
    let err = format!("{:#}", TrainConfig::from_path(&p).unwrap_err());
    assert!(
        err.contains("bad.toml") && err.contains("evaluate.recurrences"),
        "{err}"
    );
    let start = text.find("\ncontrol = ").unwrap();
    let end = start + 1 + text[start + 1..].find('\n').unwrap();
    let cfg: TrainConfig = toml::from_str(&format!("{}{}", &text[..start], &text[end..])).unwrap();
    let err = format!("{:#}", cfg.control_variant().unwrap_err());
    assert!(err.contains("[prepare] control"), "{err}");
}
