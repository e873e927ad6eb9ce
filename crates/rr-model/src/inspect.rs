//! `rr inspect`: what a model directory holds, read from headers only (no weights loaded).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::config::LlamaConfig;
use crate::recurrent::{is_recurrent_dir, RecurrentConfig};
use crate::tokenizer::Tokenizer;
use crate::weights::SafetensorsFiles;

#[derive(Debug, Serialize)]
pub struct Inspection {
    /// The block hyperparameters (for a recurrent model, those of its blocks).
    pub config: LlamaConfig,
    /// Present for recurrent checkpoints.
    pub recurrent: Option<RecurrentConfig>,
    /// Recurrent models: (r, N_p + N_c + r·N_core) for r = 1, 2, 4, ..., 32 (method.md §7).
    pub effective_parameters: Vec<(usize, usize)>,
    /// Parameter counts per stack, from the tensors actually in the files.
    pub parameters: BTreeMap<String, usize>,
    pub total_parameters: usize,
    /// Tensor count per stored dtype.
    pub dtypes: BTreeMap<String, usize>,
    pub files: String,
    /// Tensors holding NaN or infinite values.
    pub non_finite: Vec<String>,
    pub tokenizer: Option<TokenizerSummary>,
}

#[derive(Debug, Serialize)]
pub struct TokenizerSummary {
    pub kind: String,
    pub vocab_size: usize,
    pub bos_added: Option<i64>,
    pub eos_ids: Vec<i64>,
}

/// The stack a tensor belongs to, by its Hugging Face name.
fn stack_of(name: &str) -> &'static str {
    if name.starts_with("model.embed_tokens") {
        "embeddings"
    } else if name.starts_with("model.layers.") {
        "blocks"
    } else if name.starts_with("model.norm") {
        "final norm"
    } else if name.starts_with("lm_head") {
        "head"
    } else if name.starts_with("transformer.wte") {
        "embeddings"
    } else if name.starts_with("transformer.prelude.") {
        "prelude"
    } else if name.starts_with("transformer.core_block.") {
        "core"
    } else if name.starts_with("transformer.coda.") {
        "coda"
    } else if name.starts_with("transformer.adapter") {
        "adapter"
    } else if name.starts_with("transformer.ln_f") {
        "final norm"
    } else {
        "other"
    }
}

pub fn inspect(dir: &Path) -> Result<Inspection> {
    let (config, recurrent) = if is_recurrent_dir(dir) {
        let rc = RecurrentConfig::from_path(dir)?;
        (rc.block_config(), Some(rc))
    } else {
        (LlamaConfig::from_path(dir)?, None)
    };
    let effective_parameters = recurrent
        .as_ref()
        .map(|rc| {
            [1, 2, 4, 8, 16, 32]
                .iter()
                .map(|&r| (r, rc.effective_parameters(r)))
                .collect()
        })
        .unwrap_or_default();
    let files = SafetensorsFiles::open_dir(dir)?;
    let mut parameters = BTreeMap::new();
    let mut dtypes = BTreeMap::new();
    let mut total = 0;
    let mut non_finite = Vec::new();
    for name in files.names() {
        let info = files.info(name)?;
        let numel: usize = info.shape.iter().product();
        *parameters.entry(stack_of(name).to_string()).or_insert(0) += numel;
        *dtypes.entry(format!("{:?}", info.dtype)).or_insert(0) += 1;
        total += numel;
        let tensor = files.tensor(name)?;
        if tensor.is_floating_point() && !bool::try_from(tensor.isfinite().all())? {
            non_finite.push(name.to_string());
        }
    }
    let tokenizer = if dir.join("tokenizer.json").exists() {
        let tok = Tokenizer::from_path(dir)?;
        Some(TokenizerSummary {
            kind: tok.model_kind(),
            vocab_size: tok.vocab_size(),
            bos_added: tok.adds_bos(),
            eos_ids: config.eos_token_ids(),
        })
    } else {
        None
    };
    Ok(Inspection {
        config,
        recurrent,
        effective_parameters,
        parameters,
        total_parameters: total,
        dtypes,
        files: files.describe(),
        non_finite,
        tokenizer,
    })
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        match &self.recurrent {
            None => writeln!(f, "architecture   {:?} ({} layers)", c.model_type, c.num_hidden_layers)?,
            Some(rc) => writeln!(
                f,
                "architecture   recurrent ({:?} blocks): prelude {}, core {} × r, coda {}; mean recurrence {}",
                rc.block_type,
                rc.n_layers_in_prelude,
                rc.n_layers_in_recurrent_block,
                rc.n_layers_in_coda,
                rc.mean_recurrence
            )?,
        }
        writeln!(
            f,
            "shape          hidden {}, intermediate {}, heads {} (kv {}), head_dim {}",
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
            c.num_kv_heads(),
            c.head_dim()
        )?;
        let scaling = c
            .rope_scaling
            .as_ref()
            .map(|s| format!(", scaling {}", s.rope_type))
            .unwrap_or_default();
        writeln!(
            f,
            "positions      context {}, rope θ {}{scaling}",
            c.max_position_embeddings, c.rope_theta
        )?;
        writeln!(
            f,
            "vocabulary     {} (head {})",
            c.vocab_size,
            if c.tie_word_embeddings {
                "tied"
            } else {
                "untied"
            }
        )?;
        writeln!(f, "files          {}", self.files)?;
        let dtypes: Vec<String> = self
            .dtypes
            .iter()
            .map(|(d, n)| format!("{d} ×{n}"))
            .collect();
        writeln!(f, "dtypes         {}", dtypes.join(", "))?;
        if !self.non_finite.is_empty() {
            writeln!(
                f,
                "NON-FINITE     NaN or infinite values in: {}",
                self.non_finite.join(", ")
            )?;
        }
        self.fmt_parameters(f)?;
        self.fmt_tokenizer(f)
    }
}

impl Inspection {
    fn fmt_parameters(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(f, "parameters")?;
        for (stack, n) in &self.parameters {
            writeln!(f, "  {stack:<13}{:>15}", group_digits(*n))?;
        }
        writeln!(
            f,
            "  {:<13}{:>15}",
            "total",
            group_digits(self.total_parameters)
        )?;
        writeln!(
            f,
            "  {:<13}{:>15}",
            "per layer",
            group_digits(c.params_per_layer())
        )?;
        if !self.effective_parameters.is_empty() {
            writeln!(
                f,
                "effective parameters (blocks only, N_p + N_c + r·N_core)"
            )?;
            for (r, n) in &self.effective_parameters {
                writeln!(f, "  r = {r:<9}{:>15}", group_digits(*n))?;
            }
        }
        Ok(())
    }

    fn fmt_tokenizer(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tokenizer {
            Some(t) => write!(
                f,
                "tokenizer      {}, {} tokens, BOS added: {}, EOS ids {:?}",
                t.kind,
                t.vocab_size,
                t.bos_added
                    .map_or("no".to_string(), |id| format!("yes ({id})")),
                t.eos_ids
            ),
            None => write!(f, "tokenizer      none (no tokenizer.json)"),
        }
    }
}

/// 1234567 -> "1,234,567".
pub fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
