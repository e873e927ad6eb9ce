//! `rr export hf`: a static model, a surgery output or a trained checkpoint as a clean Hugging
//! Face folder: `config.json`, `model.safetensors` (F32, `{"format": "pt"}`), the tokenizer
//! files, for recurrent models the Python files that `trust_remote_code=True` loads
//! (`rr_model::recurrent::PYTHON_FILES`), and a generated `README.md` model card. Optimizer
//! state and trainer bookkeeping stay behind.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rr_eval::results::RecurrenceReport;
use rr_model::AnyModel;
use rr_util::fs::StagingDir;
use tch::{Device, Kind};

/// Files copied from the source directory when present.
const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
];

/// Exports `src` into the new directory `out`; `eval` is an `rr eval` result (its JSON) whose
/// table goes into the model card. Returns the files written.
pub fn export_hf(src: &Path, out: &Path, eval: Option<&Path>) -> Result<Vec<String>> {
    rr_util::fs::ensure_output_apart(out, &[src])?;
    if out.exists() {
        bail!("{}: output already exists", out.display());
    }
    let eval_table = match eval {
        Some(path) => Some(eval_markdown(path)?),
        None => None,
    };
    let model = AnyModel::load(src, Device::Cpu, Kind::Float)?;
    let staging = StagingDir::create(out)?;
    model.save_weights_and_config(staging.path())?;
    for name in TOKENIZER_FILES {
        let from = src.join(name);
        if from.exists() {
            let to = staging.path().join(name);
            let text =
                std::fs::read(&from).with_context(|| format!("{}: cannot read", from.display()))?;
            std::fs::write(&to, text).with_context(|| format!("{}: cannot write", to.display()))?;
        }
    }
    let card = model_card(src, out, &model, eval_table.as_deref())?;
    let readme = staging.path().join("README.md");
    std::fs::write(&readme, card).with_context(|| format!("{}: cannot write", readme.display()))?;
    let mut files: Vec<String> = std::fs::read_dir(staging.path())?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    files.sort();
    staging.commit()?;
    Ok(files)
}

fn eval_markdown(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the evaluation", path.display()))?;
    let report = RecurrenceReport::from_json(&text)
        .with_context(|| format!("{}: not an `rr eval` result", path.display()))?;
    Ok(report.to_markdown())
}

/// What training recorded beside a checkpoint `RUN/checkpoints/step-N`: the step count and
/// tokens from `trainer_state.json`, the `[data]` table of the run's `config.toml`.
struct Training {
    step: u64,
    tokens: u64,
    data: Option<String>,
}

fn training(src: &Path) -> Result<Option<Training>> {
    let state_path = src.join("trainer_state.json");
    if !state_path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&state_path)
        .with_context(|| format!("{}: cannot read", state_path.display()))?;
    let state: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid", state_path.display()))?;
    let number = |key: &str| state[key].as_u64().unwrap_or(0);
    let recipe: Option<PathBuf> = src
        .parent()
        .and_then(Path::parent)
        .map(|run| run.join("config.toml"));
    let data = match recipe.filter(|p| p.exists()) {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            let recipe: toml::Value =
                toml::from_str(&text).with_context(|| format!("{}: invalid", path.display()))?;
            recipe.get("data").map(toml::to_string_pretty).transpose()?
        }
        None => None,
    };
    Ok(Some(Training {
        step: number("step"),
        tokens: number("tokens"),
        data,
    }))
}

/// The README.md of the export: what the model is, how to load it, how it was trained, and
/// how it scores.
fn model_card(src: &Path, out: &Path, model: &AnyModel, eval: Option<&str>) -> Result<String> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let mut md = String::new();
    writeln!(md, "---\nlibrary_name: transformers\ntags:\n- rr")?;
    if model.is_recurrent() {
        writeln!(md, "- depth-recurrent")?;
    }
    writeln!(md, "---\n\n# {name}\n")?;
    writeln!(md, "Exported by `rr export hf` from `{}`.\n", src.display())?;
    writeln!(md, "## Architecture\n")?;
    match model {
        AnyModel::Recurrent(m) => {
            let c = &m.config;
            writeln!(
                md,
                "Depth-recurrent ({} blocks): split (prelude, core, coda) = ({}, {}, {}) layers; \
                 the core runs r times on a latent state. Hidden size {}, {} heads ({} KV), \
                 vocabulary {}.\n",
                format!("{:?}", c.block_type).to_lowercase(),
                c.n_layers_in_prelude,
                c.n_layers_in_recurrent_block,
                c.n_layers_in_coda,
                c.n_embd,
                c.n_heads,
                c.num_key_value_heads.unwrap_or(c.n_heads),
                c.vocab_size
            )?;
            writeln!(
                md,
                "Training recurrence (mean): {}; backprop depth: {}. That is the default test \
                 recurrence.\n",
                c.mean_recurrence, c.mean_backprop_depth
            )?;
            writeln!(
                md,
                "```python\nfrom transformers import AutoModelForCausalLM\nmodel = \
                 AutoModelForCausalLM.from_pretrained(\"{name}\", trust_remote_code=True)\n\
                 logits = model(input_ids, num_steps={r}).logits   # r core iterations\n\
                 model.generate(input_ids, num_steps={r}, max_new_tokens=32)\n```\n\n\
                 lm-evaluation-harness: `lm_eval --model hf --model_args \
                 pretrained={name},trust_remote_code=True,mean_recurrence={r} ...`\n",
                r = c.mean_recurrence
            )?;
        }
        AnyModel::Static(m) => {
            let c = &m.config;
            writeln!(
                md,
                "Static {} model: {} layers, hidden size {}, {} heads, vocabulary {}.\n",
                format!("{:?}", c.model_type).to_lowercase(),
                c.num_hidden_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.vocab_size
            )?;
        }
    }
    writeln!(md, "## Training\n")?;
    match training(src)? {
        Some(t) => {
            writeln!(md, "Steps: {}; tokens: {}.\n", t.step, t.tokens)?;
            match t.data {
                Some(data) => {
                    writeln!(md, "Data (the recipe's `[data]`):\n\n```toml\n{data}```\n")?
                }
                None => writeln!(md, "Data: not recorded (no run `config.toml`).\n")?,
            }
        }
        None => writeln!(md, "No training recorded (not a trainer checkpoint).\n")?,
    }
    writeln!(md, "## Evaluation\n")?;
    match eval {
        Some(table) => writeln!(md, "{table}")?,
        None => writeln!(
            md,
            "Not evaluated (`rr export hf --eval EVAL.json` adds a table)."
        )?,
    }
    Ok(md)
}
