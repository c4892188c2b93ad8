//! The local embedding model (all-MiniLM-L6-v2 through fastembed and ONNX Runtime), and the
//! caches around it.
//!
//! Embedding is CPU work and `TextEmbedding::embed` takes `&mut self`, so the model sits
//! behind a mutex that is only ever taken in blocking code (`spawn_blocking` or a reload), never
//! across an await. Example vectors are cached on disk in the state folder, keyed by model and
//! text, so a reload or a restart only embeds what changed; query vectors go through a bounded
//! LRU cache in memory.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// The files of a model folder, all required.
pub const MODEL_FILES: [&str; 5] = [
    "model.onnx",
    "tokenizer.json",
    "config.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
];

/// Tokens per text; MiniLM was trained on 256.
const MAX_LENGTH: usize = 256;
/// Query vectors kept in memory.
const QUERY_CACHE: usize = 10_000;
/// Texts per model call. ONNX Runtime keeps the memory of its largest batch: 32 long texts
/// peak near 1 GB, 8 stay near 500 MB and short ones far below.
const BATCH: usize = 8;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error(
        "the embedding model is missing: `{0}` does not exist; fetch it with `scripts/fetch-model.sh` (or point --embedding-model / --onnxruntime at it)"
    )]
    Missing(PathBuf),
    #[error("the embedding model could not be loaded: {0}")]
    Broken(String),
    #[error("embedding failed: {0}")]
    Failed(String),
}

fn text_key(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

#[derive(Serialize, Deserialize)]
struct CachedVector {
    /// SHA-256 of the text, hex, first 32 characters.
    text: String,
    vector: Vec<f32>,
}

fn text_digest(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// ONNX Runtime allows one environment per process: it is made once, from the first library
/// that loads, and shared by every model loaded after. A failure is not kept, so fetching the
/// library and reloading is enough.
static ORT: Mutex<Option<(PathBuf, ort::environment::Environment)>> = Mutex::new(None);

fn ort_environment(runtime: &Path) -> Result<ort::environment::Environment, EmbedError> {
    // An absolute path: ort would try a relative one against the executable's folder first.
    let runtime = &runtime
        .canonicalize()
        .map_err(|_| EmbedError::Missing(runtime.to_path_buf()))?;
    let mut slot = ORT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((path, environment)) = &*slot {
        if path != runtime {
            return Err(EmbedError::Broken(format!(
                "ONNX Runtime was already loaded from `{}` in this process; cannot switch to `{}`",
                path.display(),
                runtime.display()
            )));
        }
        return Ok(environment.clone());
    }
    // `init_from` reports a missing or wrong library as an error (relying on ORT_DYLIB_PATH
    // alone would panic).
    let environment = ort::init_from(runtime)
        .map_err(|e| e.to_string())
        .and_then(|builder| builder.build().map_err(|e| e.to_string()))
        .map_err(|e| EmbedError::Broken(format!("`{}`: {e}", runtime.display())))?;
    *slot = Some((runtime.to_path_buf(), environment.clone()));
    Ok(environment)
}

/// A loaded model with its caches.
pub struct Embedder {
    model: Mutex<TextEmbedding>,
    /// Identifies the model's weights, so cached vectors of another model are never used.
    pub model_id: String,
    queries: Mutex<lru::LruCache<u64, Arc<[f32]>>>,
    disk: Mutex<DiskCache>,
    /// Texts embedded by the model (not served from a cache) since start.
    embedded: AtomicU64,
}

struct DiskCache {
    path: Option<PathBuf>,
    vectors: HashMap<String, Arc<[f32]>>,
}

impl Embedder {
    /// Loads the ONNX Runtime library and the model. Blocking (about a third of a second).
    pub fn load(
        model_dir: &Path,
        runtime: &Path,
        cache_dir: Option<&Path>,
    ) -> Result<Self, EmbedError> {
        if !runtime.exists() {
            return Err(EmbedError::Missing(runtime.to_path_buf()));
        }
        for file in MODEL_FILES {
            if !model_dir.join(file).exists() {
                return Err(EmbedError::Missing(model_dir.join(file)));
            }
        }
        let read = |file: &str| {
            std::fs::read(model_dir.join(file)).map_err(|e| {
                EmbedError::Broken(format!("`{}`: {e}", model_dir.join(file).display()))
            })
        };
        let onnx = read("model.onnx")?;
        let model_id: String = sha2::Sha256::digest(&onnx)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let files = TokenizerFiles {
            tokenizer_file: read("tokenizer.json")?,
            config_file: read("config.json")?,
            special_tokens_map_file: read("special_tokens_map.json")?,
            tokenizer_config_file: read("tokenizer_config.json")?,
        };
        let environment = ort_environment(runtime)?;
        // Mean pooling is what MiniLM was trained with; the user-defined default (CLS) is not.
        let model = UserDefinedEmbeddingModel::new(onnx, files).with_pooling(Pooling::Mean);
        let options = InitOptionsUserDefined::new()
            .with_environment(environment)
            .with_max_length(MAX_LENGTH);
        let model = TextEmbedding::try_new_from_user_defined(model, options)
            .map_err(|e| EmbedError::Broken(format!("{e:#}")))?;
        let disk =
            DiskCache::open(cache_dir.map(|d| d.join(format!("embeddings-{model_id}.jsonl"))));
        Ok(Embedder {
            model: Mutex::new(model),
            model_id,
            queries: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(QUERY_CACHE).expect("non-zero"),
            )),
            disk: Mutex::new(disk),
            embedded: AtomicU64::new(0),
        })
    }

    /// How many texts the model itself has embedded since start.
    pub fn embedded(&self) -> u64 {
        self.embedded.load(Ordering::Relaxed)
    }

    /// Embeds texts with the model, unit-normalised. Blocking.
    fn embed_now(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
        let vectors = model
            .embed(texts, Some(BATCH))
            .map_err(|e| EmbedError::Failed(format!("{e:#}")))?;
        drop(model);
        self.embedded
            .fetch_add(texts.len() as u64, Ordering::Relaxed);
        Ok(vectors.into_iter().map(normalise).collect())
    }

    /// Vectors of example texts: from the disk cache where known, embedded (and cached)
    /// otherwise. Blocking.
    pub fn examples(&self, texts: &[&str]) -> Result<Vec<Arc<[f32]>>, EmbedError> {
        let digests: Vec<String> = texts.iter().map(|t| text_digest(t)).collect();
        let missing: Vec<usize> = {
            let disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
            (0..texts.len())
                .filter(|&i| !disk.vectors.contains_key(&digests[i]))
                .collect()
        };
        if !missing.is_empty() {
            let batch: Vec<&str> = missing.iter().map(|&i| texts[i]).collect();
            let vectors = self.embed_now(&batch)?;
            let mut disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
            let fresh: Vec<(String, Vec<f32>)> = missing
                .iter()
                .map(|&i| digests[i].clone())
                .zip(vectors)
                .collect();
            disk.append(&fresh);
        }
        let disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        Ok(digests
            .iter()
            .map(|d| {
                disk.vectors
                    .get(d)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(Vec::new()))
            })
            .collect())
    }

    /// The vector of a query, from the LRU cache or embedded off the reactor.
    pub async fn query(self: &Arc<Self>, text: &str) -> Result<Arc<[f32]>, EmbedError> {
        let key = text_key(text);
        if let Some(v) = self
            .queries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(v.clone());
        }
        let this = self.clone();
        let owned = text.to_owned();
        let vector: Arc<[f32]> =
            tokio::task::spawn_blocking(move || this.embed_now(&[owned.as_str()]))
                .await
                .map_err(|e| EmbedError::Failed(e.to_string()))??
                .pop()
                .map(Arc::from)
                .ok_or_else(|| EmbedError::Failed("no vector returned".to_owned()))?;
        self.queries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(key, vector.clone());
        Ok(vector)
    }
}

fn normalise(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

impl DiskCache {
    fn open(path: Option<PathBuf>) -> Self {
        let mut vectors = HashMap::new();
        if let Some(path) = &path
            && let Ok(file) = File::open(path)
        {
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                // A torn or foreign line is only a cache miss.
                if let Ok(c) = serde_json::from_str::<CachedVector>(&line) {
                    vectors.insert(c.text, Arc::from(c.vector));
                }
            }
        }
        DiskCache { path, vectors }
    }

    fn append(&mut self, fresh: &[(String, Vec<f32>)]) {
        if let Some(path) = &self.path {
            let mut text = String::new();
            for (digest, vector) in fresh {
                let line = CachedVector {
                    text: digest.clone(),
                    vector: vector.clone(),
                };
                if let Ok(json) = serde_json::to_string(&line) {
                    text.push('\n');
                    text.push_str(&json);
                }
            }
            let written = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| OpenOptions::new().create(true).append(true).open(path))
                .and_then(|mut f| f.write_all(text.as_bytes()));
            if let Err(e) = written {
                tracing::warn!(file = %path.display(), "cannot write the embedding cache: {e}");
            }
        }
        for (digest, vector) in fresh {
            self.vectors
                .insert(digest.clone(), Arc::from(vector.as_slice()));
        }
    }
}
