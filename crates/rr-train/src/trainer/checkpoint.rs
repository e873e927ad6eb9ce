//! Checkpoints: `checkpoints/step-NNNNNN/`, each a usable model directory (config, weights,
//! tokenizer files) plus `optimizer.safetensors` and `trainer_state.json`, written through a
//! staging directory and renamed into place, so a checkpoint is complete or absent, with the
//! SHA-256 of every file in `checksums.json`: a resume verifies them and falls back to the
//! newest intact checkpoint.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rr_data::PhasesState;
use rr_model::recurrent::{write_config, RecurrentConfig};
use rr_model::weights::SafetensorsFiles;
use rr_model::AnyModel;
use rr_recipe::TrainedRecurrence;
use rr_util::fs::StagingDir;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::optim::Optimizer;

pub const CHECKPOINTS: &str = "checkpoints";

/// Everything besides model and optimizer that a resumed run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Micro-batches consumed (seeds the recurrence draw and the state).
    pub micro_batch: u64,
    pub tokens: u64,
    pub flops: f64,
    pub data: PhasesState,
    pub config_hash: String,
}

/// Complete checkpoints of a run by step, oldest first. Temporary (incomplete) directories
/// start with a dot and are never listed.
fn checkpoint_dirs(run_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = run_dir.join(CHECKPOINTS);
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("{}: cannot list", dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint of a run (not verified).
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(checkpoint_dirs(run_dir)?.pop().map(|(_, p)| p))
}

const CHECKSUMS: &str = "checksums.json";

/// The newest checkpoint whose files match their checksums. A damaged newer one is reported
/// in a one-line warning and moved aside (hidden, `.step-NNNNNN.damaged`), so that the resumed
/// run can write that step again. Errors when checkpoints exist but none is intact.
pub fn latest_intact_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    let all = checkpoint_dirs(run_dir)?;
    for (_, ckpt) in all.iter().rev() {
        match verify(ckpt) {
            Ok(()) => return Ok(Some(ckpt.clone())),
            Err(e) => {
                let name = ckpt.file_name().unwrap_or_default().to_string_lossy();
                let aside = ckpt.with_file_name(format!(".{name}.damaged"));
                if aside.exists() {
                    std::fs::remove_dir_all(&aside)
                        .with_context(|| format!("{}: cannot remove", aside.display()))?;
                }
                std::fs::rename(ckpt, &aside)
                    .with_context(|| format!("{}: cannot move aside", ckpt.display()))?;
                eprintln!(
                    "warning: {e:#}; falling back to an older checkpoint (kept as {})",
                    aside.display()
                );
            }
        }
    }
    if !all.is_empty() {
        bail!(
            "{}: no intact checkpoint to resume from (every one failed its checksums)",
            run_dir.display()
        );
    }
    Ok(None)
}

/// Checks every file of a checkpoint against its `checksums.json`.
pub fn verify(checkpoint: &Path) -> Result<()> {
    let path = checkpoint.join(CHECKSUMS);
    if !path.exists() {
        eprintln!(
            "warning: {}: no {CHECKSUMS} (written by an older rr): not verified",
            checkpoint.display()
        );
        return Ok(());
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let want: BTreeMap<String, String> = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid checksums", path.display()))?;
    for (name, sha) in &want {
        let file = checkpoint.join(name);
        let got = sha256_file(&file)?;
        if &got != sha {
            bail!("{}: checksum mismatch (damaged or changed)", file.display());
        }
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Writes `checksums.json` over every file now in `dir`.
fn write_checksums(dir: &Path) -> Result<()> {
    let mut sums = BTreeMap::new();
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        sums.insert(name, sha256_file(&entry.path())?);
    }
    std::fs::write(dir.join(CHECKSUMS), serde_json::to_string_pretty(&sums)?)
        .with_context(|| format!("{}: cannot write", dir.join(CHECKSUMS).display()))
}

/// Reads a checkpoint's trainer state and restores its optimizer state into `optimizer`.
pub fn restore(checkpoint: &Path, optimizer: &mut dyn Optimizer) -> Result<TrainerState> {
    let path = checkpoint.join("trainer_state.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read trainer state", path.display()))?;
    let state: TrainerState = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid trainer state", path.display()))?;
    let files = SafetensorsFiles::open_files(&[checkpoint.join("optimizer.safetensors")])?;
    optimizer.load_state(&files)?;
    Ok(state)
}

/// Files of the source model directory that every checkpoint carries along.
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Writes `checkpoints/step-NNNNNN/` atomically (tokenizer files copied from `init`) and
/// keeps the newest `keep` checkpoints.
pub fn save(
    run_dir: &Path,
    init: &Path,
    model: &AnyModel,
    optimizer: &dyn Optimizer,
    state: &TrainerState,
    keep: usize,
    trained: Option<TrainedRecurrence>,
) -> Result<PathBuf> {
    let path = run_dir
        .join(CHECKPOINTS)
        .join(format!("step-{:06}", state.step));
    let staging = StagingDir::create(&path)?;
    model.save_weights_and_config(staging.path())?;
    record_trained_recurrence(staging.path(), model, trained)?;
    rr_model::weights::write_safetensors(
        &optimizer.state_tensors(),
        &staging.path().join("optimizer.safetensors"),
    )?;
    std::fs::write(
        staging.path().join("trainer_state.json"),
        serde_json::to_string_pretty(state)?,
    )?;
    for name in TOKENIZER_FILES {
        let src = init.join(name);
        if src.exists() {
            std::fs::copy(&src, staging.path().join(name))
                .with_context(|| format!("{}: cannot copy", src.display()))?;
        }
    }
    write_checksums(staging.path())?;
    staging.commit()?;
    let all = checkpoint_dirs(run_dir)?;
    if all.len() > keep {
        for (_, old) in &all[..all.len() - keep] {
            std::fs::remove_dir_all(old)
                .with_context(|| format!("{}: cannot remove old checkpoint", old.display()))?;
        }
    }
    Ok(path)
}

/// Records in a recurrent checkpoint's `config.json` what the model was trained for: the
/// curriculum's target mean recurrence and backprop depth, in place of the surgery's values,
/// so that `rr generate` and `rr score` default to the recurrence it was trained at.
fn record_trained_recurrence(
    dir: &Path,
    model: &AnyModel,
    trained: Option<TrainedRecurrence>,
) -> Result<()> {
    let (AnyModel::Recurrent(_), Some(trained)) = (model, trained) else {
        return Ok(());
    };
    let mut config = RecurrentConfig::from_path(dir)?;
    config.mean_recurrence = trained.mean_recurrence;
    config.mean_backprop_depth = trained.mean_backprop_depth;
    write_config(&config, dir)
}
