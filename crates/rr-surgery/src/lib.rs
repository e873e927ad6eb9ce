//! Surgery: turns a pretrained Llama-family checkpoint into a depth-recurrent one (prelude /
//! recurrent core / coda) in the published Raven layout (method.md §1, raven-format.md).
//!
//! The paper's rule for `(p, b, c)`: prelude = the first p layers, core = the b layers directly
//! before the coda, coda = the last c layers; the layers between prelude and core are dropped.
//! Explicit selections (lists of source indices per stack) are accepted too, and so is a split
//! that keeps the most influential layers ([`LayerSelection::by_influence`], [`influence`]).
//! [`random_init`] gives a model of the same shape with fresh weights instead of the source's.

pub mod influence;
pub mod random_init;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rr_model::config::{LlamaConfig, ModelType};
use rr_model::inspect::group_digits;
use rr_model::recurrent::{write_config, RecurrentConfig};
use rr_model::weights::{write_safetensors, SafetensorsFiles};
use rr_util::fs::StagingDir;
use tch::{Kind, Tensor};

/// Source layer indices of each stack, in the order they run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSelection {
    pub prelude: Vec<usize>,
    pub core: Vec<usize>,
    pub coda: Vec<usize>,
}

impl LayerSelection {
    /// The paper's split of an `num_layers`-layer model into `(p, b, c)`.
    pub fn paper(num_layers: usize, p: usize, b: usize, c: usize) -> Result<Self> {
        if b == 0 {
            bail!("the core must have at least one layer (got {p},{b},{c})");
        }
        match p.checked_add(b).and_then(|n| n.checked_add(c)) {
            Some(n) if n <= num_layers => {}
            Some(n) => {
                bail!("--layers {p},{b},{c} needs {n} layers, but the source has {num_layers}")
            }
            None => bail!("--layers {p},{b},{c} needs more layers than any model has"),
        }
        let coda_start = num_layers - c;
        Ok(Self {
            prelude: (0..p).collect(),
            core: (coda_start - b..coda_start).collect(),
            coda: (coda_start..num_layers).collect(),
        })
    }

    /// The `(p, b, c)` split keeping the `p + b + c` most influential layers (ShortGPT's rule:
    /// drop the layers of lowest block influence; ties drop the lower index first). The kept
    /// layers stay in source order: the prelude is the first p of them, the core the next b, the
    /// coda the last c. `influence[i]` is the BI of source layer i.
    pub fn by_influence(influence: &[f64], p: usize, b: usize, c: usize) -> Result<Self> {
        let num_layers = influence.len();
        // The same size checks as the paper's split.
        Self::paper(num_layers, p, b, c)?;
        let mut by_bi: Vec<usize> = (0..num_layers).collect();
        by_bi.sort_by(|&x, &y| influence[x].total_cmp(&influence[y]).then(x.cmp(&y)));
        let mut kept = by_bi.split_off(num_layers - (p + b + c));
        kept.sort_unstable();
        let coda = kept.split_off(p + b);
        let core = kept.split_off(p);
        Ok(Self {
            prelude: kept,
            core,
            coda,
        })
    }

    /// An explicit selection. Indices must exist; no layer may sit in two stacks, or twice in
    /// the prelude or coda. The core may repeat layers (e.g. to loop a block twice per step).
    pub fn explicit(
        num_layers: usize,
        prelude: Vec<usize>,
        core: Vec<usize>,
        coda: Vec<usize>,
    ) -> Result<Self> {
        if core.is_empty() {
            bail!("the core must have at least one layer");
        }
        for (stack, list) in [("prelude", &prelude), ("core", &core), ("coda", &coda)] {
            if let Some(bad) = list.iter().find(|&&i| i >= num_layers) {
                bail!(
                    "{stack} layer {bad} is out of range: the source has layers 0-{}",
                    num_layers - 1
                );
            }
        }
        for (stack, list) in [("prelude", &prelude), ("coda", &coda)] {
            let mut seen = list.clone();
            seen.sort_unstable();
            if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
                bail!("{stack} lists layer {} twice", w[0]);
            }
        }
        let pairs = [
            ("prelude", &prelude, "core", &core),
            ("prelude", &prelude, "coda", &coda),
            ("core", &core, "coda", &coda),
        ];
        for (a_name, a, b_name, b) in pairs {
            if let Some(i) = a.iter().find(|i| b.contains(i)) {
                bail!("layer {i} is in both the {a_name} and the {b_name}");
            }
        }
        Ok(Self {
            prelude,
            core,
            coda,
        })
    }

    /// Source layers that no stack uses.
    pub fn dropped(&self, num_layers: usize) -> Vec<usize> {
        (0..num_layers)
            .filter(|i| {
                !self.prelude.contains(i) && !self.core.contains(i) && !self.coda.contains(i)
            })
            .collect()
    }
}

/// The most layer indices a selection may list (repeats in the core included): far more than
/// any model has, and a bound on what a range like `1-4000000000` may expand to.
pub const MAX_INDICES: usize = 1 << 16;

/// Parses `0-3,6,8-9` (inclusive ranges) into indices; an empty string is an empty list.
pub fn parse_indices(spec: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| {
            s.trim()
                .parse::<usize>()
                .with_context(|| format!("`{part}` is not a layer index or range"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    bail!("range `{part}` runs backwards");
                }
                if b - a >= MAX_INDICES - out.len() {
                    bail!("`{spec}` lists more than {MAX_INDICES} layers");
                }
                out.extend(a..=b);
            }
            None => out.push(parse(part)?),
        }
        if out.len() > MAX_INDICES {
            bail!("`{spec}` lists more than {MAX_INDICES} layers");
        }
    }
    Ok(out)
}

/// How the adapter `Linear(2h -> h)` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterInit {
    /// PyTorch's default for a Linear layer, U(−1/√(2h), 1/√(2h)), as the reference leaves it.
    Default { seed: u64 },
    /// `[0 | I]`: the first iteration passes the prelude output straight into the core.
    Identity,
}

impl AdapterInit {
    /// The [h, 2h] adapter weight in fp32.
    pub fn weight(&self, h: usize) -> Tensor {
        match *self {
            AdapterInit::Identity => Tensor::cat(
                &[
                    Tensor::zeros([h as i64, h as i64], (Kind::Float, tch::Device::Cpu)),
                    Tensor::eye(h as i64, (Kind::Float, tch::Device::Cpu)),
                ],
                1,
            ),
            AdapterInit::Default { seed } => {
                let bound = 1.0 / ((2 * h) as f64).sqrt();
                let mut rng = StdRng::seed_from_u64(seed);
                let values: Vec<f32> = (0..2 * h * h)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect();
                Tensor::from_slice(&values).view([h as i64, 2 * h as i64])
            }
        }
    }
}

/// Where the recurrent model's weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightInit {
    /// The source's layers, embeddings, final norm and head; the adapter as `AdapterInit` says.
    Pretrained,
    /// Fresh weights of the same shapes ([`random_init`]); the adapter setting is unused.
    Random { seed: u64 },
}

pub struct Surgery {
    pub source_dir: PathBuf,
    pub source: LlamaConfig,
    pub selection: LayerSelection,
    pub adapter: AdapterInit,
    pub mean_recurrence: usize,
    pub init: WeightInit,
}

impl Surgery {
    pub fn new(
        source_dir: &Path,
        selection: LayerSelection,
        adapter: AdapterInit,
        mean_recurrence: usize,
    ) -> Result<Self> {
        let source = LlamaConfig::from_path(source_dir)?;
        if mean_recurrence == 0 {
            bail!("--mean-recurrence must be at least 1");
        }
        let n = source.num_hidden_layers;
        // Re-validate against the real layer count (selections may be built before loading).
        let selection =
            LayerSelection::explicit(n, selection.prelude, selection.core, selection.coda)?;
        Ok(Self {
            source_dir: source_dir.to_path_buf(),
            source,
            selection,
            adapter,
            mean_recurrence,
            init: WeightInit::Pretrained,
        })
    }

    /// The same surgery with freshly initialised weights ([`random_init`]) drawn from `seed`.
    pub fn with_random_weights(self, seed: u64) -> Self {
        Self {
            init: WeightInit::Random { seed },
            ..self
        }
    }

    pub fn target_config(&self) -> RecurrentConfig {
        let s = &self.selection;
        RecurrentConfig::from_source(
            &self.source,
            s.prelude.len(),
            s.core.len(),
            s.coda.len(),
            self.mean_recurrence,
        )
    }

    /// The table printed before writing: block mapping, dropped layers, parameter counts and
    /// effective parameters at r = 1 … 32.
    pub fn table(&self) -> String {
        let cfg = self.target_config();
        let mut t = String::new();
        let n = self.source.num_hidden_layers;
        let _ = writeln!(
            t,
            "source: {} ({:?}, {n} layers)",
            self.source_dir.display(),
            self.source.model_type
        );
        let _ = writeln!(t, "{:<28}source layer", "target block");
        for (stack, name, list) in [
            ("prelude", "transformer.prelude", &self.selection.prelude),
            ("core", "transformer.core_block", &self.selection.core),
            ("coda", "transformer.coda", &self.selection.coda),
        ] {
            let _ = stack;
            for (j, src) in list.iter().enumerate() {
                let _ = writeln!(t, "{:<28}{src}", format!("{name}.{j}"));
            }
        }
        let dropped = self.selection.dropped(n);
        let dropped = if dropped.is_empty() {
            "none".to_string()
        } else {
            format!("{dropped:?}")
        };
        let _ = writeln!(t, "dropped layers: {dropped}");
        match self.init {
            WeightInit::Pretrained => {
                let _ = writeln!(t, "adapter: {:?}", self.adapter);
            }
            WeightInit::Random { seed } => {
                let (std, out_proj) = random_init::takase_stds(&cfg);
                let _ = writeln!(
                    t,
                    "weights: random (takase, seed {seed}): std {std:.6}, output projections \
                     {out_proj:.6}, norms 1; the source's layers are not used"
                );
            }
        }
        let _ = writeln!(t, "mean recurrence {}", self.mean_recurrence);
        let per = cfg.params_per_layer();
        let h = cfg.n_embd;
        let v = cfg.padded_vocab_size();
        let _ = writeln!(t, "parameters");
        for (name, count) in [
            ("prelude", per * cfg.n_layers_in_prelude),
            ("core", per * cfg.n_layers_in_recurrent_block),
            ("coda", per * cfg.n_layers_in_coda),
            ("embeddings", v * h),
            ("head", v * h),
            ("adapter", 2 * h * h),
            ("final norm", h),
        ] {
            let _ = writeln!(t, "  {name:<12}{:>16}", group_digits(count));
        }
        let total = per * cfg.n_layers + 2 * v * h + 2 * h * h + h;
        let _ = writeln!(t, "  {:<12}{:>16}", "total", group_digits(total));
        let _ = writeln!(
            t,
            "effective parameters (blocks only: N_p + N_c + r·N_core)"
        );
        for r in [1, 2, 4, 8, 16, 32] {
            let _ = writeln!(
                t,
                "  r = {r:<8}{:>16}",
                group_digits(cfg.effective_parameters(r))
            );
        }
        t
    }

    /// The recurrent checkpoint's tensors, named as the Raven layout names them, in the source
    /// dtype (the adapter too); with [`WeightInit::Random`], fresh ones of the same names and
    /// shapes.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let files = SafetensorsFiles::open_dir(&self.source_dir)?;
        let get = |name: &str| files.tensor(name);
        let embed_name = "model.embed_tokens.weight";
        if let WeightInit::Random { seed } = self.init {
            let dtype = rr_model::weights::kind_of(files.info(embed_name)?.dtype)?;
            let cfg = self.target_config();
            return Ok(random_init::random_tensors(&cfg, seed, dtype));
        }
        let embed = get(embed_name)?;
        let dtype = embed.kind();
        let head = if files.contains("lm_head.weight") {
            get("lm_head.weight")?
        } else if self.source.tie_word_embeddings {
            // The recurrent head is always its own tensor: a tied source gets two copies.
            embed.copy()
        } else {
            bail!(
                "{}: lm_head.weight is missing and the config does not tie it",
                files.describe()
            );
        };
        let mut out = vec![
            ("transformer.wte.weight".to_string(), embed),
            ("lm_head.weight".to_string(), head),
            (
                "transformer.ln_f.weight".to_string(),
                get("model.norm.weight")?,
            ),
            (
                "transformer.adapter.weight".to_string(),
                self.adapter.weight(self.source.hidden_size).to_kind(dtype),
            ),
        ];
        let s = &self.selection;
        for (stack, list) in [
            ("prelude", &s.prelude),
            ("core_block", &s.core),
            ("coda", &s.coda),
        ] {
            for (j, &src) in list.iter().enumerate() {
                let from = |part: &str| get(&format!("model.layers.{src}.{part}"));
                let to = |part: &str| format!("transformer.{stack}.{j}.{part}");
                let (norm_1, norm_2) = match self.source.model_type {
                    ModelType::Llama => ("input_layernorm", "post_attention_layernorm"),
                    ModelType::Olmo2 => ("post_attention_layernorm", "post_feedforward_layernorm"),
                };
                let qkv = Tensor::cat(
                    &[
                        from("self_attn.q_proj.weight")?,
                        from("self_attn.k_proj.weight")?,
                        from("self_attn.v_proj.weight")?,
                    ],
                    0,
                );
                let fc = Tensor::cat(
                    &[from("mlp.gate_proj.weight")?, from("mlp.up_proj.weight")?],
                    0,
                );
                out.push((to("norm_1.weight"), from(&format!("{norm_1}.weight"))?));
                out.push((to("norm_2.weight"), from(&format!("{norm_2}.weight"))?));
                out.push((to("attn.Wqkv.weight"), qkv));
                out.push((to("attn.proj.weight"), from("self_attn.o_proj.weight")?));
                out.push((to("mlp.fc.weight"), fc));
                out.push((to("mlp.proj.weight"), from("mlp.down_proj.weight")?));
                if self.source.model_type == ModelType::Olmo2 {
                    out.push((to("attn.q_norm.weight"), from("self_attn.q_norm.weight")?));
                    out.push((to("attn.k_norm.weight"), from("self_attn.k_norm.weight")?));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Writes the recurrent checkpoint to `out` through a temporary directory renamed into
    /// place; an existing `out` is replaced only with `force`, and only once the new one is
    /// complete.
    pub fn write(&self, out: &Path, force: bool) -> Result<()> {
        rr_util::fs::ensure_output_apart(out, &[&self.source_dir])?;
        if out.exists() && !force {
            bail!(
                "{}: output already exists (use --force to replace it)",
                out.display()
            );
        }
        let tensors = self.tensors()?;
        let staging = if force {
            StagingDir::replacing(out)?
        } else {
            StagingDir::create(out)?
        };
        let mut cfg = self.target_config();
        cfg.torch_dtype = Some(rr_model::recurrent::dtype_name(tensors[0].1.kind()).to_string());
        write_config(&cfg, staging.path())?;
        write_safetensors(&tensors, &staging.path().join("model.safetensors"))?;
        for name in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "generation_config.json",
            "tokenizer.model",
        ] {
            let src = self.source_dir.join(name);
            if src.exists() {
                std::fs::copy(&src, staging.path().join(name))
                    .with_context(|| format!("{}: cannot copy", src.display()))?;
            }
        }
        // With `force`, an existing output is moved aside only now that the new one is complete.
        staging.commit()
    }
}
