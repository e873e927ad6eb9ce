//! `cargo xtask download`: Hugging Face downloads through `hf-hub` 0.4 (sync, ureq).
//!
//! The cache is checked first, without any network call, and a fully cached repo is
//! reused as it is. The cache layout is the one `huggingface_hub` and `hf-hub` share:
//! `<cache>/models--org--name/refs/<revision>` holds a commit hash and
//! `<cache>/models--org--name/snapshots/<hash>/<file>` the files.
use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
pub const CONFIG: &str = "config.json";
pub const TOKENIZER: &str = "tokenizer.json";
pub const GENERATION_CONFIG: &str = "generation_config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// Where to look and whom to ask.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The hub cache (the folder holding `models--org--name`).
    pub cache_dir: PathBuf,
    pub endpoint: String,
    pub token: Option<String>,
    /// Never touch the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
}

impl HubConfig {
    /// `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`;
    /// `HF_ENDPOINT`; `HF_TOKEN`, else the token file next to the cache; `HF_HUB_OFFLINE`.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let cache_dir = if let Some(c) = var("HF_HUB_CACHE") {
            PathBuf::from(c)
        } else if let Some(h) = var("HF_HOME") {
            PathBuf::from(h).join("hub")
        } else {
            let home = var("HOME").context(
                "cannot locate the Hugging Face cache: none of HF_HUB_CACHE, HF_HOME or HOME is set",
            )?;
            PathBuf::from(home)
                .join(".cache")
                .join("huggingface")
                .join("hub")
        };
        let token = var("HF_TOKEN").or_else(|| Cache::new(cache_dir.clone()).token());
        let offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"));
        Ok(Self {
            cache_dir,
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            token,
            offline,
        })
    }
}

/// What to fetch.
#[derive(Debug, Clone)]
pub struct Request {
    pub repo_id: String,
    pub revision: String,
    /// `None`: config.json, tokenizer.json, generation_config.json if the repo has one, and
    /// model.safetensors or model.safetensors.index.json with its shards.
    pub files: Option<Vec<String>>,
}

/// `<cache>/models--org--name`.
pub fn repo_cache_dir(cache_dir: &Path, repo_id: &str) -> PathBuf {
    cache_dir.join(Repo::new(repo_id.to_string(), RepoType::Model).folder_name())
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The snapshot folder the cache records for `revision`, if it exists.
pub fn cached_snapshot(cache_dir: &Path, repo_id: &str, revision: &str) -> Option<PathBuf> {
    let repo_dir = repo_cache_dir(cache_dir, repo_id);
    if let Ok(hash) = std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        let dir = repo_dir.join("snapshots").join(hash.trim());
        if dir.is_dir() {
            return Some(dir);
        }
    }
    if is_commit_hash(revision) {
        let dir = repo_dir.join("snapshots").join(revision);
        if dir.is_dir() {
            return Some(dir);
        }
    }
    None
}

/// The shard file names listed in a `*.safetensors.index.json`.
pub fn index_shards(index_json: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index_json)
        .with_context(|| format!("cannot read {}", index_json.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index_json.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow!("{} has no \"weight_map\" object", index_json.display()))?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            anyhow!(
                "{}: weight_map[{tensor:?}] is not a string",
                index_json.display()
            )
        })?;
        shards.insert(file.to_string());
    }
    Ok(shards.into_iter().collect())
}

fn is_index(file: &str) -> bool {
    file.ends_with(".safetensors.index.json")
}

/// The cache as it stands for a request.
#[derive(Debug)]
pub enum CacheState {
    /// Everything asked for is there.
    Complete(PathBuf),
    /// `missing` is not in `looked_in` (a snapshot folder, or the repo folder when no
    /// snapshot is recorded for the revision).
    Missing {
        looked_in: PathBuf,
        has_snapshot: bool,
        missing: String,
    },
}

/// Checks the cache for a request; never touches the network.
pub fn check_cache(cfg: &HubConfig, req: &Request) -> Result<CacheState> {
    let Some(snap) = cached_snapshot(&cfg.cache_dir, &req.repo_id, &req.revision) else {
        let first = match &req.files {
            Some(files) => files.first().cloned().unwrap_or_else(|| CONFIG.to_string()),
            None => CONFIG.to_string(),
        };
        return Ok(CacheState::Missing {
            looked_in: repo_cache_dir(&cfg.cache_dir, &req.repo_id),
            has_snapshot: false,
            missing: first,
        });
    };
    let missing = |f: &str| CacheState::Missing {
        looked_in: snap.clone(),
        has_snapshot: true,
        missing: f.to_string(),
    };
    let required: Vec<String> = match &req.files {
        Some(files) => files.clone(),
        None => vec![CONFIG.to_string(), TOKENIZER.to_string()],
    };
    for f in &required {
        if !snap.join(f).exists() {
            return Ok(missing(f));
        }
        if is_index(f) {
            if let Some(shard) = first_missing_shard(&snap, &snap.join(f))? {
                return Ok(missing(&shard));
            }
        }
    }
    if req.files.is_none() && !snap.join(WEIGHTS).exists() {
        let index = snap.join(WEIGHTS_INDEX);
        if !index.exists() {
            return Ok(missing(&format!("{WEIGHTS} (or {WEIGHTS_INDEX})")));
        }
        if let Some(shard) = first_missing_shard(&snap, &index)? {
            return Ok(missing(&shard));
        }
    }
    Ok(CacheState::Complete(snap))
}

/// The first shard listed in `index` that `snap` lacks.
fn first_missing_shard(snap: &Path, index: &Path) -> Result<Option<String>> {
    Ok(index_shards(index)?
        .into_iter()
        .find(|shard| !snap.join(shard).exists()))
}

fn host_of(endpoint: &str) -> &str {
    let rest = endpoint
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(endpoint);
    rest.split('/').next().unwrap_or(rest)
}

fn cache_phrase(looked_in: &Path, has_snapshot: bool, revision: &str, missing: &str) -> String {
    if has_snapshot {
        format!(
            "looked in the cache at {} and {missing} is not there",
            looked_in.display()
        )
    } else {
        format!(
            "looked in the cache at {} and found no snapshot for revision {revision}",
            looked_in.display()
        )
    }
}

/// One clear line for a failed hub call.
fn explain(
    cfg: &HubConfig,
    req: &Request,
    state: &CacheState,
    file: Option<&str>,
    err: ApiError,
) -> anyhow::Error {
    let (looked_in, has_snapshot, missing) = match state {
        CacheState::Missing {
            looked_in,
            has_snapshot,
            missing,
        } => (looked_in.as_path(), *has_snapshot, missing.as_str()),
        CacheState::Complete(p) => (p.as_path(), true, file.unwrap_or(CONFIG)),
    };
    let missing = file.unwrap_or(missing);
    let repo = &req.repo_id;
    let host = host_of(&cfg.endpoint);
    match err {
        ApiError::RequestError(e) => match *e {
            ureq::Error::Transport(t) => anyhow!(
                "cannot reach {host} for {repo}; {} ({t})",
                cache_phrase(looked_in, has_snapshot, &req.revision, missing)
            ),
            ureq::Error::Status(code @ (401 | 403), _) => anyhow!(
                "{host} refused {repo} (HTTP {code}): it is gated or private; accept its license on the hub and set HF_TOKEN (or put a token in {})",
                Cache::new(cfg.cache_dir.clone()).token_path().display()
            ),
            ureq::Error::Status(404, _) => match file {
                Some(f) => anyhow!("{repo} has no file {f} at revision {} on {host} (HTTP 404)", req.revision),
                None => anyhow!("{host} has no model repo {repo} at revision {} (HTTP 404)", req.revision),
            },
            ureq::Error::Status(code, _) => anyhow!(
                "{host} answered HTTP {code} for {repo}{}",
                file.map(|f| format!(" file {f}")).unwrap_or_default()
            ),
        },
        other => anyhow!(other).context(format!(
            "downloading {repo}{} from {host} failed",
            file.map(|f| format!(" file {f}")).unwrap_or_default()
        )),
    }
}

fn fetch(
    repo: &ApiRepo,
    cfg: &HubConfig,
    req: &Request,
    state: &CacheState,
    file: &str,
) -> Result<PathBuf> {
    // `get` returns the cached file when there is one and downloads it otherwise.
    let cached = cached_snapshot(&cfg.cache_dir, &req.repo_id, &req.revision)
        .map(|s| s.join(file))
        .filter(|p| p.exists());
    if let Some(p) = cached {
        return Ok(p);
    }
    println!("download: {} {file}", req.repo_id);
    repo.get(file)
        .map_err(|e| explain(cfg, req, state, Some(file), e))
}

/// Resolves a request to a local snapshot folder: from the cache alone when everything is
/// there, else from the hub.
pub fn download(cfg: &HubConfig, req: &Request) -> Result<PathBuf> {
    let state = check_cache(cfg, req)?;
    let (looked_in, has_snapshot, missing) = match &state {
        CacheState::Complete(dir) => {
            println!(
                "download: {} is in the cache, no network needed",
                req.repo_id
            );
            return Ok(dir.clone());
        }
        CacheState::Missing {
            looked_in,
            has_snapshot,
            missing,
        } => (looked_in, *has_snapshot, missing),
    };
    if cfg.offline {
        bail!(
            "HF_HUB_OFFLINE is set, so {} is not downloaded; {}",
            req.repo_id,
            cache_phrase(looked_in, has_snapshot, &req.revision, missing)
        );
    }
    let repo = hub_repo(cfg, req)?;
    let files: Vec<String> = match &req.files {
        Some(files) => files.clone(),
        None => default_files(&repo, cfg, req, &state)?,
    };
    let mut first: Option<PathBuf> = None;
    for f in &files {
        let path = fetch(&repo, cfg, req, &state, f)?;
        if is_index(f) {
            for shard in index_shards(&path)? {
                fetch(&repo, cfg, req, &state, &shard)?;
            }
        }
        first.get_or_insert_with(|| strip_file(&path, f));
    }
    let snapshot = cached_snapshot(&cfg.cache_dir, &req.repo_id, &req.revision)
        .or(first)
        .ok_or_else(|| anyhow!("no files requested for {}", req.repo_id))?;
    Ok(snapshot)
}

/// The hub client for the request's repo and revision.
fn hub_repo(cfg: &HubConfig, req: &Request) -> Result<ApiRepo> {
    let api = ApiBuilder::from_cache(Cache::new(cfg.cache_dir.clone()))
        .with_endpoint(cfg.endpoint.trim_end_matches('/').to_string())
        .with_token(cfg.token.clone())
        .with_progress(true)
        .build()
        .map_err(|e| anyhow!(e).context("cannot set up the Hugging Face client"))?;
    Ok(api.repo(Repo::with_revision(
        req.repo_id.clone(),
        RepoType::Model,
        req.revision.clone(),
    )))
}

/// The files to fetch when the request names none, from the repo's file list: config.json,
/// tokenizer.json, generation_config.json if there is one, and model.safetensors or its index.
fn default_files(
    repo: &ApiRepo,
    cfg: &HubConfig,
    req: &Request,
    state: &CacheState,
) -> Result<Vec<String>> {
    let info = repo.info().map_err(|e| explain(cfg, req, state, None, e))?;
    let names: BTreeSet<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    for f in [CONFIG, TOKENIZER] {
        if !names.contains(f) {
            bail!(
                "{} has no {f} at revision {}; pass --files to choose files by hand",
                req.repo_id,
                req.revision
            );
        }
    }
    let mut files = vec![CONFIG.to_string(), TOKENIZER.to_string()];
    if names.contains(GENERATION_CONFIG) {
        files.push(GENERATION_CONFIG.to_string());
    }
    if names.contains(WEIGHTS) {
        files.push(WEIGHTS.to_string());
    } else if names.contains(WEIGHTS_INDEX) {
        files.push(WEIGHTS_INDEX.to_string());
    } else {
        bail!(
            "{} has neither {WEIGHTS} nor {WEIGHTS_INDEX} at revision {} (rr reads safetensors only)",
            req.repo_id,
            req.revision
        );
    }
    Ok(files)
}

/// `snapshots/<hash>/a/b.json` minus `a/b.json`.
fn strip_file(path: &Path, file: &str) -> PathBuf {
    let depth = Path::new(file).components().count();
    let mut p = path.to_path_buf();
    for _ in 0..depth {
        p.pop();
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const HASH: &str = "0123456789abcdef0123456789abcdef01234567";
    /// Nothing listens on the discard port: a network call fails at once, locally.
    const NOWHERE: &str = "http://127.0.0.1:9";

    fn cfg(cache: &Path) -> HubConfig {
        HubConfig {
            cache_dir: cache.to_path_buf(),
            endpoint: NOWHERE.into(),
            token: None,
            offline: false,
        }
    }

    fn req(files: Option<Vec<&str>>) -> Request {
        Request {
            repo_id: "org/name".into(),
            revision: "main".into(),
            files: files.map(|v| v.into_iter().map(String::from).collect()),
        }
    }

    /// A cache with `refs/main` and a snapshot holding `files`.
    fn fake_cache(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--org--name");
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::write(repo.join("refs/main"), HASH).unwrap();
        let snap = repo.join("snapshots").join(HASH);
        fs::create_dir_all(&snap).unwrap();
        for (f, content) in files {
            let p = snap.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        (tmp, snap)
    }

    #[test]
    fn full_cache_resolves_without_network() {
        let (tmp, snap) = fake_cache(&[(CONFIG, "{}"), (TOKENIZER, "{}"), (WEIGHTS, "x")]);
        let got = download(&cfg(tmp.path()), &req(None)).unwrap();
        assert_eq!(got, snap);
        // hf-hub's own cache lookup agrees with the layout.
        let hf = Cache::new(tmp.path().to_path_buf())
            .model("org/name".into())
            .get(CONFIG)
            .unwrap();
        assert_eq!(hf, snap.join(CONFIG));
    }

    #[test]
    fn sharded_cache_resolves_without_network() {
        let index = r#"{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}}"#;
        let (tmp, snap) = fake_cache(&[
            (CONFIG, "{}"),
            (TOKENIZER, "{}"),
            (WEIGHTS_INDEX, index),
            ("model-00001-of-00002.safetensors", "x"),
            ("model-00002-of-00002.safetensors", "x"),
        ]);
        assert_eq!(download(&cfg(tmp.path()), &req(None)).unwrap(), snap);
        assert_eq!(
            index_shards(&snap.join(WEIGHTS_INDEX)).unwrap(),
            vec![
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
        // A missing shard is named.
        fs::remove_file(snap.join("model-00002-of-00002.safetensors")).unwrap();
        let err = download(&cfg(tmp.path()), &req(None))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model-00002-of-00002.safetensors is not there"),
            "{err}"
        );
    }

    #[test]
    fn explicit_files_and_trailing_newline_in_ref() {
        let (tmp, snap) = fake_cache(&[(CONFIG, "{}"), ("sub/extra.bin", "x")]);
        fs::write(
            tmp.path().join("models--org--name/refs/main"),
            format!("{HASH}\n"),
        )
        .unwrap();
        let got = download(&cfg(tmp.path()), &req(Some(vec![CONFIG, "sub/extra.bin"]))).unwrap();
        assert_eq!(got, snap);
        // By commit hash, even without a ref for it.
        let mut r = req(Some(vec![CONFIG]));
        r.revision = HASH.into();
        assert_eq!(download(&cfg(tmp.path()), &r).unwrap(), snap);
    }

    /// A named revision (OLMo-2's `stage1-step1907359-tokens4001B` branch) resolves through
    /// `refs/<revision>` to its own snapshot, not `main`'s.
    #[test]
    fn named_revision_resolves_to_its_snapshot() {
        let (tmp, main_snap) = fake_cache(&[(CONFIG, "{}")]);
        let stage1 = "b".repeat(40);
        let repo = tmp.path().join("models--org--name");
        fs::write(
            repo.join("refs/stage1-step1907359-tokens4001B"),
            format!("{stage1}\n"),
        )
        .unwrap();
        let snap = repo.join("snapshots").join(&stage1);
        fs::create_dir_all(&snap).unwrap();
        fs::write(snap.join(CONFIG), "{\"stage\": 1}").unwrap();
        let mut r = req(Some(vec![CONFIG]));
        r.revision = "stage1-step1907359-tokens4001B".into();
        let got = download(&cfg(tmp.path()), &r).unwrap();
        assert_eq!(got, snap);
        assert_ne!(got, main_snap);
        // A revision the cache has no ref for is not answered with another one's snapshot.
        r.revision = "stage1-step1-tokens1B".into();
        let offline = HubConfig {
            offline: true,
            ..cfg(tmp.path())
        };
        assert!(download(&offline, &r).is_err());
    }

    #[test]
    fn missing_file_names_the_cache_path() {
        let (tmp, snap) = fake_cache(&[(CONFIG, "{}"), (TOKENIZER, "{}")]);
        let err = download(&cfg(tmp.path()), &req(Some(vec![CONFIG, WEIGHTS]))).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with("cannot reach 127.0.0.1:9 for org/name;"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!(
                "looked in the cache at {} and {WEIGHTS} is not there",
                snap.display()
            )),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "one line: {msg}");

        // The default set goes through the repo listing first; that fails the same way.
        let msg = format!("{:#}", download(&cfg(tmp.path()), &req(None)).unwrap_err());
        assert!(
            msg.starts_with("cannot reach 127.0.0.1:9 for org/name;"),
            "{msg}"
        );
        assert!(msg.contains(&snap.display().to_string()), "{msg}");
        assert!(msg.contains("model.safetensors"), "{msg}");
    }

    #[test]
    fn uncached_repo_names_the_repo_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let msg = format!("{:#}", download(&cfg(tmp.path()), &req(None)).unwrap_err());
        let repo_dir = tmp.path().join("models--org--name");
        assert!(
            msg.contains(&format!("looked in the cache at {}", repo_dir.display())),
            "{msg}"
        );
        assert!(msg.contains("no snapshot for revision main"), "{msg}");
    }

    #[test]
    fn offline_flag_never_calls_out() {
        let (tmp, snap) = fake_cache(&[(CONFIG, "{}")]);
        let mut c = cfg(tmp.path());
        c.offline = true;
        c.endpoint = "http://example.invalid".into();
        let msg = format!("{:#}", download(&c, &req(None)).unwrap_err());
        assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
        assert!(
            msg.contains(&format!("{} and {TOKENIZER} is not there", snap.display())),
            "{msg}"
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(host_of("https://huggingface.co"), "huggingface.co");
        assert_eq!(host_of("http://127.0.0.1:9/"), "127.0.0.1:9");
        assert_eq!(
            strip_file(Path::new("/c/snapshots/h/a/b.json"), "a/b.json"),
            PathBuf::from("/c/snapshots/h")
        );
        assert!(is_commit_hash(HASH));
        assert!(!is_commit_hash("main"));
    }
}
