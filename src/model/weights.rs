//! Safetensors checkpoints with Hugging Face tensor names: one `model.safetensors` or shards
//! listed by `model.safetensors.index.json`. Everything is converted to f32 on load.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

use crate::tensor::{DType, Tensor};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor read from disk, already in f32.
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// The file it came from, for error messages.
    pub file: PathBuf,
}

/// All tensors of a checkpoint, by name.
pub struct Weights {
    tensors: HashMap<String, HostTensor>,
    /// What to name in "missing tensor" errors: the single file or the shard index.
    source: PathBuf,
}

impl Weights {
    /// Reads `DIR/model.safetensors`, or every shard named in `DIR/model.safetensors.index.json`.
    pub fn load(dir: &Path) -> Result<Weights> {
        let single = dir.join(WEIGHTS_FILE);
        let index = dir.join(INDEX_FILE);
        let mut tensors = HashMap::new();
        if single.exists() {
            read_file(&single, None, &mut tensors)?;
            return Ok(Weights { tensors, source: single });
        }
        if !index.exists() {
            bail!("{}: no {WEIGHTS_FILE} or {INDEX_FILE} (the model weights) in this folder", dir.display());
        }
        let text = std::fs::read_to_string(&index).with_context(|| format!("{}: cannot read", index.display()))?;
        let parsed: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", index.display()))?;
        let map = parsed
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{}: no \"weight_map\" object", index.display()))?;
        // shard file -> the names the index assigns to it
        let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .with_context(|| format!("{}: weight_map[{name:?}] is not a file name", index.display()))?;
            shards.entry(file).or_default().push(name);
        }
        for (file, names) in shards {
            read_file(&dir.join(file), Some(&names), &mut tensors)
                .with_context(|| format!("shard listed in {}", index.display()))?;
        }
        Ok(Weights { tensors, source: index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|k| k.as_str())
    }

    /// The tensor `name`, checked against the expected shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&HostTensor> {
        let t = self.tensors.get(name).with_context(|| {
            format!("{}: tensor {name:?} is missing (expected shape {shape:?})", self.source.display())
        })?;
        if t.shape != shape {
            bail!("{}: tensor {name:?} has shape {:?} but the config implies {shape:?}", t.file.display(), t.shape);
        }
        if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: tensor {name:?} holds {} at element {i}; the weights are damaged (use an earlier checkpoint or download the model again)",
                t.file.display(),
                t.data[i]
            );
        }
        Ok(t)
    }
}

fn read_file(path: &Path, only: Option<&[&str]>, out: &mut HashMap<String, HostTensor>) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read the weights", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).with_context(|| format!("{}: not a safetensors file", path.display()))?;
    if let Some(names) = only {
        for name in names {
            if st.tensor(name).is_err() {
                bail!("{}: tensor {name:?} is missing although the shard index lists it here", path.display());
            }
        }
    }
    for (name, view) in st.iter() {
        if only.is_some_and(|names| !names.contains(&name)) {
            continue;
        }
        let data = to_f32(view.dtype(), view.data()).with_context(|| format!("{}: tensor {name:?}", path.display()))?;
        out.insert(name.to_string(), HostTensor { shape: view.shape().to_vec(), data, file: path.to_path_buf() });
    }
    Ok(())
}

pub(crate) fn to_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
        Dtype::BF16 => {
            bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect()
        }
        Dtype::F64 => bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        other => bail!("dtype {other:?} is not a floating-point weight type (F32, F16, BF16, F64 are read)"),
    })
}

/// Writes f32 GPU tensors to a safetensors file under the given names. The file appears
/// whole or not at all (temporary file, then rename).
pub fn save(path: &Path, tensors: &[(String, &Tensor)]) -> Result<()> {
    crate::io::write_atomic(path, &serialize(tensors, None)?)
}

/// Safetensors bytes of f32 GPU tensors under the given names, with optional `__metadata__`;
/// without a `format` there, the file is tagged as PyTorch's (transformers then takes it as its own).
pub fn serialize(tensors: &[(String, &Tensor)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let mut host = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if t.dtype() != DType::F32 {
            bail!("saving {name:?}: only f32 tensors are saved, got {:?}", t.dtype());
        }
        host.push((name.clone(), t.shape().to_vec(), t.to_f32()?));
    }
    serialize_host(&host, metadata)
}

/// As [`serialize`], for f32 values on the host: (name, shape, values).
fn serialize_host(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    Ok(safetensors::tensor::serialize(host_views(tensors)?, Some(tagged(metadata)))?)
}

/// Writes f32 host tensors (name, shape, values) as the safetensors file `path`, streamed
/// (the weights are not copied into one buffer first) and synced.
pub fn write_host(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let views = host_views(tensors)?;
    let write = || -> Result<()> {
        safetensors::tensor::serialize_to_file(views, Some(tagged(metadata)), path)?;
        std::fs::File::open(path)?.sync_all()?;
        Ok(())
    };
    write().with_context(|| format!("writing {} failed", path.display()))
}

/// `metadata` with `format` "pt" unless it says otherwise.
fn tagged(metadata: Option<HashMap<String, String>>) -> HashMap<String, String> {
    let mut metadata = metadata.unwrap_or_default();
    metadata.entry("format".to_string()).or_insert_with(|| "pt".to_string());
    metadata
}

fn host_views(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<(&str, safetensors::tensor::TensorView<'_>)>> {
    tensors
        .iter()
        .map(|(name, shape, values)| {
            // A diverged tensor is refused here rather than written: every reader refuses it
            // anyway, and a checkpoint holding it would replace the last good one.
            if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                bail!("saving {name:?}: element {i} is {v}; tensors holding NaN or Inf are not saved");
            }
            let bytes: &[u8] = bytemuck::cast_slice(values);
            Ok((name.as_str(), safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sculpt-weights-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_raw(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
        let views: Vec<_> = tensors
            .iter()
            .map(|(n, d, s, b)| (*n, safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
    }

    #[test]
    fn save_then_load_round_trips() {
        let gpu = gpu();
        let dir = temp_dir("roundtrip");
        let a = Tensor::from_f32(&gpu, &[2, 3], &[1.0, -2.0, 3.5, 0.0, 1e-7, 9.0]).unwrap();
        let b = Tensor::from_f32(&gpu, &[1], &[42.0]).unwrap();
        save(&dir.join(WEIGHTS_FILE), &[("a.weight".into(), &a), ("b".into(), &b)]).unwrap();
        let w = Weights::load(&dir).unwrap();
        assert_eq!(w.get("a.weight", &[2, 3]).unwrap().data, vec![1.0, -2.0, 3.5, 0.0, 1e-7, 9.0]);
        assert_eq!(w.get("b", &[1]).unwrap().data, vec![42.0]);
        let err = w.get("a.weight", &[3, 2]).err().unwrap().to_string();
        assert!(err.contains("a.weight") && err.contains("[2, 3]") && err.contains(WEIGHTS_FILE), "{err}");
        let err = w.get("c", &[1]).err().unwrap().to_string();
        assert!(err.contains("\"c\"") && err.contains("missing"), "{err}");
    }

    #[test]
    fn host_tensors_are_streamed_to_a_file_that_loads() {
        let dir = temp_dir("host");
        let path = dir.join(WEIGHTS_FILE);
        let tensors = vec![("m".to_string(), vec![2, 2], vec![1.0, -2.0, 0.5, 4.0]), ("v".into(), vec![1], vec![3.0])];
        write_host(&path, &tensors, None).unwrap();
        let w = Weights::load(&dir).unwrap();
        assert_eq!(w.get("m", &[2, 2]).unwrap().data, vec![1.0, -2.0, 0.5, 4.0]);
        assert_eq!(w.get("v", &[1]).unwrap().data, vec![3.0]);
        let bad = vec![("b".to_string(), vec![2], vec![1.0, f32::NAN])];
        let err = write_host(&dir.join("bad.safetensors"), &bad, None).unwrap_err().to_string();
        assert!(err.contains("\"b\"") && err.contains("element 1 is NaN"), "{err}");
        assert!(!dir.join("bad.safetensors").exists());
    }

    #[test]
    fn tensors_holding_nan_or_inf_are_not_saved() {
        let gpu = gpu();
        let dir = temp_dir("nonfinite");
        for bad in [f32::NAN, f32::INFINITY] {
            let t = Tensor::from_f32(&gpu, &[2, 2], &[1.0, 0.5, bad, 2.0]).unwrap();
            let err = save(&dir.join(WEIGHTS_FILE), &[("w".into(), &t)]).unwrap_err().to_string();
            assert!(err.contains("\"w\"") && err.contains(&format!("element 2 is {bad}")), "{err}");
            assert!(!dir.join(WEIGHTS_FILE).exists(), "nothing is written");
        }
    }

    #[test]
    fn shards_and_half_precision_are_read() {
        let dir = temp_dir("shards");
        let halfs: Vec<u8> = [1.5f32, -0.25].iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        let bf: Vec<u8> = [3.0f32].iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
        write_raw(&dir.join("model-00001-of-00002.safetensors"), &[("x", Dtype::F16, vec![2], halfs)]);
        write_raw(&dir.join("model-00002-of-00002.safetensors"), &[("y", Dtype::BF16, vec![1, 1], bf)]);
        std::fs::write(
            dir.join(INDEX_FILE),
            r#"{"metadata": {}, "weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let w = Weights::load(&dir).unwrap();
        assert_eq!(w.get("x", &[2]).unwrap().data, vec![1.5, -0.25]);
        assert_eq!(w.get("y", &[1, 1]).unwrap().data, vec![3.0]);
        assert!(w.get("y", &[1, 1]).unwrap().file.ends_with("model-00002-of-00002.safetensors"));
    }

    #[test]
    fn a_folder_without_weights_is_named() {
        let dir = temp_dir("empty");
        let err = Weights::load(&dir).err().unwrap().to_string();
        assert!(err.contains(&dir.display().to_string()) && err.contains(WEIGHTS_FILE), "{err}");
    }
}
