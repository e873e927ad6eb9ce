//! Checkpoint I/O: memory-mapped safetensors (single file or sharded with
//! `model.safetensors.index.json`) copied into a `VarStore`, and atomic safetensors writing.
//!
//! We never use `VarStore::load`: it silently re-types every variable to the file's dtype
//! (a bf16 checkpoint would turn fp32 parameters into bf16). Instead each tensor is copied
//! into the existing variable, which keeps the variable's dtype and device.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use tch::{nn::VarStore, Kind, Tensor};

/// Model-weight files of a checkpoint directory, memory-mapped and indexed by tensor name.
pub struct SafetensorsFiles {
    files: Vec<(PathBuf, Mmap)>,
    /// tensor name -> index into `files`
    index: BTreeMap<String, usize>,
}

/// Shape and dtype of one tensor, read from a header without touching the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
}

impl SafetensorsFiles {
    /// Opens `model.safetensors.index.json` and its shards, or `model.safetensors`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!("{}: no such model directory", dir.display());
        }
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.exists() {
            return Self::open_index(dir, &index_path);
        }
        let single = dir.join("model.safetensors");
        if !single.exists() {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json in this directory",
                dir.display()
            );
        }
        Self::open_files(&[single])
    }

    fn open_index(dir: &Path, index_path: &Path) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: HashMap<String, String>,
        }
        let text = std::fs::read_to_string(index_path)
            .with_context(|| format!("{}: cannot read", index_path.display()))?;
        let index: Index = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid shard index", index_path.display()))?;
        if index.weight_map.is_empty() {
            bail!(
                "{}: the shard index lists no tensors (empty weight_map)",
                index_path.display()
            );
        }
        let mut shard_names: Vec<&String> = index.weight_map.values().collect();
        shard_names.sort();
        shard_names.dedup();
        let mut shards = Vec::new();
        for name in shard_names {
            if name.contains('/') || name.contains("..") {
                bail!(
                    "{}: shard name `{name}` is not a plain file name",
                    index_path.display()
                );
            }
            let path = dir.join(name);
            if !path.exists() {
                bail!(
                    "{}: shard listed in {} is missing",
                    path.display(),
                    index_path.file_name().unwrap_or_default().to_string_lossy()
                );
            }
            shards.push(path);
        }
        let files = Self::open_files(&shards)?;
        for (tensor, shard) in &index.weight_map {
            match files.index.get(tensor) {
                Some(&i)
                    if files.files[i]
                        .0
                        .file_name()
                        .map(|f| f.to_string_lossy() == **shard)
                        == Some(true) => {}
                _ => bail!(
                    "{}: index says tensor `{tensor}` is in {shard}, but it is not there",
                    index_path.display()
                ),
            }
        }
        Ok(files)
    }

    /// Maps and validates each file (a truncated or corrupt file fails here, by name).
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file =
                File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
            // SAFETY: the map is read-only; checkpoint files are not modified while we read.
            let mmap = unsafe { Mmap::map(&file) }
                .with_context(|| format!("{}: cannot memory-map", path.display()))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| {
                anyhow::anyhow!("{}: not a valid safetensors file ({e})", path.display())
            })?;
            for name in st.names() {
                if index.insert(name.to_string(), i).is_some() {
                    bail!(
                        "{}: tensor `{name}` appears in more than one file",
                        path.display()
                    );
                }
            }
            drop(st);
            files.push((path.clone(), mmap));
        }
        Ok(Self { files, index })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Path of the file that holds `name`, for error messages.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.files[i].0.as_path())
    }

    /// Human-readable list of the files, for error messages.
    pub fn describe(&self) -> String {
        match self.files.as_slice() {
            [(path, _)] => path.display().to_string(),
            files => format!(
                "{} shards in {}",
                files.len(),
                files[0].0.parent().unwrap_or(Path::new(".")).display()
            ),
        }
    }

    pub fn info(&self, name: &str) -> Result<TensorInfo> {
        let (path, view) = self.view(name)?;
        let _ = path;
        Ok(TensorInfo {
            shape: view.shape().to_vec(),
            dtype: view.dtype(),
        })
    }

    fn view(&self, name: &str) -> Result<(&Path, safetensors::tensor::TensorView<'_>)> {
        let &i = self
            .index
            .get(name)
            .with_context(|| format!("{}: tensor `{name}` is missing", self.describe()))?;
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let view = st
            .tensor(name)
            .map_err(|e| anyhow::anyhow!("{}: tensor `{name}`: {e}", path.display()))?;
        Ok((path.as_path(), view))
    }

    /// Reads one tensor onto the CPU in its stored dtype.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let (path, view) = self.view(name)?;
        let kind = kind_of(view.dtype())
            .with_context(|| format!("{}: tensor `{name}`", path.display()))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        Tensor::f_from_data_size(view.data(), &shape, kind)
            .with_context(|| format!("{}: tensor `{name}`", path.display()))
    }

    /// Copies every variable of `vs` from the file tensor of the same name (through `rename`,
    /// which maps a variable name to a file name), converting dtype and device. Every
    /// variable must be present with exactly the variable's shape.
    /// Elements of every tensor in the files (from the headers).
    pub fn elements(&self) -> Result<u128> {
        let mut total = 0u128;
        for name in self.names() {
            total += self
                .info(name)?
                .shape
                .iter()
                .map(|&d| d as u128)
                .product::<u128>();
        }
        Ok(total)
    }

    /// Refuses, before anything is allocated, a config that implies more parameters than the
    /// files hold: the two do not belong together (a vocabulary or width typed wrong).
    pub fn check_fits(&self, config_elements: u128, config: &Path) -> Result<()> {
        let held = self.elements()?;
        if config_elements > held {
            bail!(
                "{}: implies {config_elements} parameters, but {} holds only {held}",
                config.display(),
                self.describe()
            );
        }
        Ok(())
    }

    /// Loads a model checkpoint into `vs`, whose variables the model's config created: every
    /// tensor in the files must have a variable (else the files and config.json disagree, and
    /// the error names the file and `described`, the config's shape), except those that
    /// `ignorable` accepts (buffers some exporters write, a tied head).
    pub fn load_model(
        &self,
        vs: &VarStore,
        ignorable: impl Fn(&str) -> bool,
        described: &str,
    ) -> Result<()> {
        let vars = vs.variables();
        if let Some(name) = self
            .names()
            .find(|name| !vars.contains_key(*name) && !ignorable(name))
        {
            let file = self
                .file_of(name)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            bail!(
                "{file}: tensor `{name}` does not belong to the model described by config.json \
                 ({described})"
            );
        }
        self.load_into(vs, |name| name.to_string())
    }

    pub fn load_into(&self, vs: &VarStore, rename: impl Fn(&str) -> String) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (var_name, mut var) in vars {
            let file_name = rename(&var_name);
            let (path, view) = self.view(&file_name)?;
            let expected: Vec<usize> = var.size().iter().map(|&d| d as usize).collect();
            if view.shape() != expected.as_slice() {
                bail!(
                    "{}: tensor `{file_name}` has shape {:?}, but the config implies {:?}",
                    path.display(),
                    view.shape(),
                    expected
                );
            }
            let kind = kind_of(view.dtype())
                .with_context(|| format!("{}: tensor `{file_name}`", path.display()))?;
            if !matches!(
                kind,
                Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double
            ) {
                bail!(
                    "{}: tensor `{file_name}` is {:?}; model weights must be floating point",
                    path.display(),
                    view.dtype()
                );
            }
            let shape: Vec<i64> = expected.iter().map(|&d| d as i64).collect();
            let src = Tensor::f_from_data_size(view.data(), &shape, kind)
                .with_context(|| format!("{}: tensor `{file_name}`", path.display()))?;
            var.f_copy_(&src)
                .with_context(|| format!("{}: copying tensor `{file_name}`", path.display()))?;
        }
        Ok(())
    }
}

/// The tch kind of a safetensors dtype, for the float types checkpoints use.
pub fn kind_of(dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        other => bail!("dtype {other:?} is not supported for model weights"),
    })
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        other => bail!("kind {other:?} cannot be written to safetensors here"),
    })
}

/// Writes named tensors to `path` atomically (a temporary file in the same directory, then
/// rename: [`rr_util::fs::write_atomic`]), so an interrupted write never leaves a half file under
/// the final name. Each tensor is copied to host memory only while its bytes are appended, so
/// the host holds the file's bytes plus one tensor at a time.
pub fn write_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    /// A tensor read (on the CPU) only when the serialiser asks for its bytes.
    struct Lazy<'a> {
        tensor: &'a Tensor,
        dtype: Dtype,
        shape: Vec<usize>,
        len: usize,
    }
    impl safetensors::View for &Lazy<'_> {
        fn dtype(&self) -> Dtype {
            self.dtype
        }
        fn shape(&self) -> &[usize] {
            &self.shape
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            let t = self.tensor.to_device(tch::Device::Cpu).contiguous();
            let mut data = vec![0u8; self.len];
            t.copy_data_u8(&mut data, t.numel());
            std::borrow::Cow::Owned(data)
        }
        fn data_len(&self) -> usize {
            self.len
        }
    }
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = dtype_of(t.kind()).with_context(|| format!("tensor `{name}`"))?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        let len = t.numel() * t.kind().elt_size_in_bytes();
        views.push((
            name.as_str(),
            Lazy {
                tensor: t,
                dtype,
                shape,
                len,
            },
        ));
    }
    // transformers reads a file without `format: pt` metadata only with a warning.
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views.iter().map(|(n, v)| (*n, v)), Some(metadata))
        .map_err(|e| anyhow::anyhow!("{}: cannot write ({e})", path.display()))?;
    rr_util::fs::write_atomic(path, &bytes)
}

/// Every variable of `vs` by its checkpoint name, sorted.
pub fn sorted_variables(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// An empty variable store on `device` whose variables will be created in `dtype`.
pub fn var_store(device: tch::Device, dtype: Kind) -> VarStore {
    let mut vs = VarStore::new(device);
    vs.set_kind(dtype);
    vs
}

/// A model whose variables mirror a checkpoint's tensor names, built from its config: one
/// loading path for the static and the recurrent model (config, header check before any
/// allocation, variables, a name-for-name copy).
pub trait FromCheckpoint: Sized {
    type Config;
    fn read_config(dir: &Path) -> Result<Self::Config>;
    /// Parameters the config implies, compared with the files before allocating.
    fn parameter_elements(config: &Self::Config) -> u128;
    /// The model with placeholder weights in `vs`.
    fn build(vs: VarStore, config: Self::Config) -> Self;
    fn var_store(&self) -> &VarStore;
    /// Tensors a file may carry that the model has no variable for (buffers, a tied head).
    fn ignorable(&self, name: &str) -> bool;
    /// The config's shape, for the error on a tensor that does not belong.
    fn describe(&self) -> String;

    /// Loads a model directory onto `device`, parameters in `dtype` whatever the files hold.
    fn load(dir: &Path, device: tch::Device, dtype: Kind) -> Result<Self> {
        let config = Self::read_config(dir)?;
        let files = SafetensorsFiles::open_dir(dir)?;
        files.check_fits(Self::parameter_elements(&config), &dir.join("config.json"))?;
        let model = Self::build(var_store(device, dtype), config);
        files.load_model(model.var_store(), |n| model.ignorable(n), &model.describe())?;
        Ok(model)
    }
}

/// The `torch_dtype` name of a kind, as config.json records it.
pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}
