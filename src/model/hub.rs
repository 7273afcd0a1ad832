//! Models by Hugging Face Hub id (`openai/gpt-oss-20b`, optionally `@revision`), fetched with the
//! `hf-hub` crate into the standard Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`), the layout Python tools share, so a model fetched by either is
//! found by both. Only what loading needs is fetched (config, tokenizer, generation config,
//! the safetensors shards; not `original/` or `metal/`). Interrupted downloads resume from
//! their `.part` file, a connection cut mid-file is retried from where it stopped, and every
//! file is checked against the size and (for LFS files) the SHA-256 the Hub states.
//! `HF_TOKEN` (or the token file of `huggingface-cli login`), `HF_ENDPOINT` and
//! `HF_HUB_OFFLINE` are honoured.

use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::Progress;
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};

use crate::error::{Error, Result};

/// Files a checkpoint may have besides its shards; only config.json must exist.
const OPTIONAL: [&str; 2] = ["tokenizer.json", "generation_config.json"];
const INDEX: &str = "model.safetensors.index.json";

/// A Hub model id: `owner/name` with an optional `@revision` (branch, tag or commit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
}

impl HubId {
    /// Parses `owner/name[@revision]`; None for anything else (a path, say).
    pub fn parse(s: &str) -> Option<HubId> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev),
            Some(_) => return None,
            None => (s, "main"),
        };
        let ok = |part: &str| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        match repo.split_once('/') {
            Some((owner, name)) if ok(owner) && ok(name) => Some(HubId {
                repo: repo.to_string(),
                revision: revision.to_string(),
            }),
            _ => None,
        }
    }
}

/// How the cache and the Hub are reached, from the environment as huggingface_hub reads it.
#[derive(Clone, Debug)]
pub struct HubSettings {
    pub cache: PathBuf,
    pub endpoint: String,
    pub token: Option<String>,
    pub offline: bool,
}

impl HubSettings {
    pub fn from_env() -> Result<HubSettings> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = || -> Result<PathBuf> {
            if let Some(h) = var("HF_HOME") {
                return Ok(PathBuf::from(h));
            }
            let cache = match var("XDG_CACHE_HOME") {
                Some(x) => PathBuf::from(x),
                None => PathBuf::from(var("HOME").ok_or_else(|| {
                    Error::Config("HOME is not set: set HF_HOME or HF_HUB_CACHE".into())
                })?)
                .join(".cache"),
            };
            Ok(cache.join("huggingface"))
        };
        let cache = match var("HF_HUB_CACHE") {
            Some(c) => PathBuf::from(c),
            None => home()?.join("hub"),
        };
        let token = match var("HF_TOKEN") {
            Some(t) => Some(t),
            None => {
                let file = match var("HF_TOKEN_PATH") {
                    Some(p) => PathBuf::from(p),
                    None => home()?.join("token"),
                };
                std::fs::read_to_string(file)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            }
        };
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        Ok(HubSettings {
            cache,
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            token,
            offline,
        })
    }
}

/// What a download reports: (file, bytes done, bytes in all); a file starts at done = 0 (or
/// where a resumed download stands) and ends at done = total.
pub type HubProgress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// The local checkpoint folder for `--model`: the folder itself when it exists, else the
/// snapshot of a Hub id in the cache, fetched first where files are missing.
pub fn resolve(model: &str, progress: HubProgress<'_>) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let Some(id) = HubId::parse(model) else {
        return Err(Error::Config(format!(
            "{model}: no such checkpoint folder, and not a Hugging Face model id (owner/name or \
             owner/name@revision)"
        )));
    };
    // `models/gpt-oss-20b` may be a mistyped folder as well as an id: say both.
    fetch(&id, &HubSettings::from_env()?, progress).map_err(|e| match e {
        Error::Config(m) => Error::Config(format!("{m} (no folder {model} exists here either)")),
        other => other,
    })
}

/// Fetches what loading `id` needs into the cache (or, offline, finds it there) and returns
/// its snapshot folder.
pub fn fetch(id: &HubId, s: &HubSettings, progress: HubProgress<'_>) -> Result<PathBuf> {
    let repo = Repo::with_revision(id.repo.clone(), RepoType::Model, id.revision.clone());
    if s.offline {
        let config = cached(s, id, "config.json").ok_or_else(|| {
            Error::Config(format!(
                "{}@{} is not in the cache at {} and HF_HUB_OFFLINE is set",
                id.repo,
                id.revision,
                s.cache.display()
            ))
        })?;
        let dir = snapshot_dir(&config)?;
        for shard in shards(&dir)? {
            if cached(s, id, &shard).is_none() {
                return Err(Error::Config(format!(
                    "{}: {shard} is not in the cache and HF_HUB_OFFLINE is set",
                    id.repo
                )));
            }
        }
        return Ok(dir);
    }
    let api = ApiBuilder::new()
        .with_cache_dir(s.cache.clone())
        .with_endpoint(s.endpoint.clone())
        .with_token(s.token.clone())
        .with_progress(false)
        .with_retries(5)
        .build()
        .map_err(|e| hub_error(id, "connecting", e))?;
    let repo = (s, api.repo(repo));
    let config = get(id, &repo, "config.json", progress)?
        .ok_or_else(|| Error::Config(format!("{}: the repository has no config.json", id.repo)))?;
    for f in OPTIONAL {
        get(id, &repo, f, progress)?;
    }
    let dir = snapshot_dir(&config)?;
    if get(id, &repo, INDEX, progress)?.is_none() {
        get(id, &repo, "model.safetensors", progress)?.ok_or_else(|| {
            Error::Config(format!(
                "{}: neither {INDEX} nor model.safetensors in the repository",
                id.repo
            ))
        })?;
    }
    for shard in shards(&dir)? {
        get(id, &repo, &shard, progress)?
            .ok_or_else(|| Error::Config(format!("{}: {shard} is missing", id.repo)))?;
    }
    Ok(dir)
}

fn snapshot_dir(config: &Path) -> Result<PathBuf> {
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::Config(format!("{}: no snapshot folder", config.display())))
}

/// The shard files the index names (or the single file when there is no index).
fn shards(dir: &Path) -> Result<Vec<String>> {
    Ok(super::weights::shard_names(dir)?.unwrap_or_else(|| vec!["model.safetensors".into()]))
}

/// A file of `id` already in the cache: `snapshots/COMMIT/FILE` of the repository's folder,
/// the commit being the revision itself or, for a branch or tag, what `refs/REVISION` names.
fn cached(s: &HubSettings, id: &HubId, file: &str) -> Option<PathBuf> {
    let folder = s
        .cache
        .join(format!("models--{}", id.repo.replace('/', "--")));
    let is_commit = id.revision.len() == 40 && id.revision.bytes().all(|b| b.is_ascii_hexdigit());
    let commit = if is_commit {
        id.revision.clone()
    } else {
        std::fs::read_to_string(folder.join("refs").join(&id.revision))
            .ok()?
            .trim()
            .to_string()
    };
    let path = folder.join("snapshots").join(commit).join(file);
    path.exists().then_some(path)
}

/// One file from the cache, or downloaded into it and checked; None when the Hub has no such
/// file.
fn get(
    id: &HubId,
    (s, repo): &(&HubSettings, ApiRepo),
    file: &str,
    progress: HubProgress<'_>,
) -> Result<Option<PathBuf>> {
    if let Some(path) = cached(s, id, file) {
        return Ok(Some(path));
    }
    // The size the Hub states comes with the download's first progress call; the etag is the
    // name of the blob the snapshot's entry points to.
    let mut size = None;
    let reporter = Reporter {
        file,
        size: &mut size,
        done: 0,
        progress,
    };
    let path = match repo.download_with_progress(file, reporter) {
        Ok(p) => p,
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(hub_error(id, file, e)),
    };
    let blob = std::fs::canonicalize(&path).map_err(|e| Error::io(&path, e))?;
    let etag = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if let Err(e) = verify(&blob, size, etag) {
        // Not left in the cache for a later run to trust.
        let _ = std::fs::remove_file(&blob);
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(Some(path))
}

/// Whether the Hub answered 404 (the file is not there).
fn is_missing(e: &ApiError) -> bool {
    matches!(e, ApiError::RequestError(r) if matches!(**r, ureq::Error::StatusCode(404)))
}

fn hub_error(id: &HubId, what: &str, e: ApiError) -> Error {
    let hint = match &e {
        ApiError::RequestError(r) if matches!(**r, ureq::Error::StatusCode(401 | 403)) => {
            ": the repository needs access; set HF_TOKEN to a token that has it"
        }
        _ => "",
    };
    Error::Config(format!("{}@{}: {what}: {e}{hint}", id.repo, id.revision))
}

/// Checks a downloaded file's size (when the Hub stated one), and its SHA-256 where the etag
/// is one (LFS files).
fn verify(path: &Path, size: Option<u64>, etag: &str) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let bad = |what: String| {
        Err(Error::Weights(format!(
            "{}: {what}: the download is corrupt (removed; run again to fetch it anew)",
            path.display()
        )))
    };
    if let Some(size) = size
        && meta.len() != size
    {
        return bad(format!("{} bytes where the Hub states {size}", meta.len()));
    }
    let is_sha = etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_sha {
        return Ok(());
    }
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if got != etag.to_ascii_lowercase() {
        return bad(format!("SHA-256 {got} where the Hub states {etag}"));
    }
    Ok(())
}

/// hf-hub's progress calls, forwarded as (file, done, total).
struct Reporter<'a, 'p> {
    file: &'a str,
    /// Set by the first progress call: the file's size as the Hub states it.
    size: &'a mut Option<u64>,
    done: u64,
    progress: HubProgress<'p>,
}

impl Reporter<'_, '_> {
    fn report(&mut self, done: u64) {
        let total = self.size.unwrap_or(0);
        (self.progress)(self.file, done, total);
    }
}

impl Progress for Reporter<'_, '_> {
    fn init(&mut self, size: usize, _filename: &str) {
        *self.size = Some(size as u64);
        self.done = 0;
        self.report(0);
    }
    fn update(&mut self, size: usize) {
        self.done += size as u64;
        self.report(self.done);
    }
    fn finish(&mut self) {
        self.report(self.size.unwrap_or(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_parse() {
        let id = |s: &str| HubId::parse(s).map(|h| (h.repo, h.revision));
        assert_eq!(
            id("openai/gpt-oss-20b"),
            Some(("openai/gpt-oss-20b".into(), "main".into()))
        );
        assert_eq!(
            id("openai/gpt-oss-20b@v1.0"),
            Some(("openai/gpt-oss-20b".into(), "v1.0".into()))
        );
        for bad in [
            "gpt-oss",
            "a/b/c",
            "/abs/path",
            "./x/y",
            "a/b@",
            "a b/c",
            "../x",
        ] {
            assert_eq!(HubId::parse(bad), None, "{bad}");
        }
    }
}
