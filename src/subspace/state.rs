//! The frozen subspaces on disk: `subspace.safetensors` of an OSFT checkpoint.
//!
//! Tensors, f32, per target matrix NAME (m×n, k frozen directions), the bases the set holds:
//! `NAME.U_k` [m, k] and `NAME.V_k` [n, k], the frozen singular vectors; or, on a side where
//! strict mode keeps the complement instead, `NAME.U_complement` [m, m − k] (or
//! `NAME.V_complement` [n, n − k]), an orthonormal Q with U_k U_kᵀ = I − Q Qᵀ. Every basis
//! has zero columns appended up to a multiple of 4 columns (as it is held on the GPU). That fixes the
//! frozen subspace exactly (U_k itself up to a rotation inside it), which is all that the
//! projection and `sculpt verify` use.
//!
//! `__metadata__`: `format` = "sculpt-subspace/1", `mode` ("strict" / "paper"), `policy`
//! (the rank policy as JSON) and `choices` (JSON list of {name, rows, cols, importance, k}).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

use super::project::{Basis, FrozenSubspace, Mode};
use super::rank::RankPolicy;
use super::set::{RankChoice, SubspaceSet};
use crate::tensor::Tensor;
use crate::Gpu;

/// The file name inside a checkpoint folder.
pub const SUBSPACE_FILE: &str = "subspace.safetensors";
const FORMAT: &str = "sculpt-subspace/1";

/// Tensor name of one side's basis.
fn basis_name(matrix: &str, side: char, basis: &Basis) -> String {
    match basis {
        Basis::Frozen(_) => format!("{matrix}.{side}_k"),
        Basis::Complement(_) => format!("{matrix}.{side}_complement"),
    }
}

impl SubspaceSet {
    /// The set as safetensors bytes (for a checkpoint folder under construction).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut tensors = Vec::with_capacity(2 * self.frozen.len());
        for (name, s) in &self.frozen {
            tensors.push((basis_name(name, 'U', &s.left), s.left.tensor()));
            tensors.push((basis_name(name, 'V', &s.right), s.right.tensor()));
        }
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("mode".to_string(), serde_json::to_value(self.mode)?.as_str().expect("a string").to_string()),
            ("policy".to_string(), serde_json::to_string(&self.policy)?),
            ("choices".to_string(), serde_json::to_string(&self.choices)?),
        ]);
        crate::model::weights::serialize(&tensors, Some(metadata))
    }

    /// Writes the set to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::io::write_atomic(path, &self.to_safetensors()?)
    }

    /// Reads a set saved by [`SubspaceSet::save`] back onto the GPU.
    pub fn load(gpu: &Gpu, path: &Path) -> Result<SubspaceSet> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        SubspaceSet::from_safetensors(gpu, &bytes, &path.display().to_string())
    }

    /// Parses safetensors bytes of a set; `origin` names them in errors.
    pub fn from_safetensors(gpu: &Gpu, bytes: &[u8], origin: &str) -> Result<SubspaceSet> {
        let st = SafeTensors::deserialize(bytes).with_context(|| format!("{origin}: not a safetensors file"))?;
        let (_, header) = SafeTensors::read_metadata(bytes)?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            meta.get(key).with_context(|| format!("{origin}: no \"{key}\" in the metadata; not a sculpt subspace file"))
        };
        if field("format")? != FORMAT {
            bail!("{origin}: format {:?}: not a sculpt subspace file (this build reads {FORMAT})", field("format")?);
        }
        let mode: Mode = serde_json::from_value(serde_json::Value::String(field("mode")?.clone()))
            .with_context(|| format!("{origin}: metadata \"mode\""))?;
        let policy: RankPolicy =
            serde_json::from_str(field("policy")?).with_context(|| format!("{origin}: metadata \"policy\""))?;
        let choices: Vec<RankChoice> =
            serde_json::from_str(field("choices")?).with_context(|| format!("{origin}: metadata \"choices\""))?;
        if st.len() != 2 * choices.len() {
            bail!("{origin}: {} tensors for {} matrices; expected two bases per matrix", st.len(), choices.len());
        }
        let mut frozen = BTreeMap::new();
        for c in &choices {
            let (m, n, k) = (c.rows, c.cols, c.k);
            let side = |letter: char, dim: usize| -> Result<Basis> {
                let (frozen_name, complement_name) =
                    (format!("{}.{letter}_k", c.name), format!("{}.{letter}_complement", c.name));
                let (name, cols, complement) = if st.names().contains(&frozen_name.as_str()) {
                    (frozen_name, k, false)
                } else if st.names().contains(&complement_name.as_str()) && dim == m.min(n) {
                    (complement_name, dim - k.min(dim), true)
                } else {
                    bail!(
                        "{origin}: no tensor {frozen_name} (or a complement basis) for the {m}x{n} matrix {}",
                        c.name
                    );
                };
                let view = st.tensor(&name)?;
                let width = cols.next_multiple_of(4);
                if view.dtype() != Dtype::F32 || view.shape() != [dim, width] {
                    bail!(
                        "{origin}: tensor {name} is {:?} {:?}, expected F32 [{dim}, {width}] ({cols} columns and zero padding) for {m}x{n} with k = {k}",
                        view.dtype(),
                        view.shape()
                    );
                }
                let data = crate::model::weights::to_f32(view.dtype(), view.data())?;
                // Orthonormal columns, then zero padding: anything else is a damaged file.
                for j in 0..width {
                    let norm = (0..dim).map(|i| (data[i * width + j] as f64).powi(2)).sum::<f64>().sqrt();
                    let want = if j < cols { 1.0 } else { 0.0 };
                    if (norm - want).abs() > 1e-3 {
                        bail!("{origin}: column {j} of {name} has norm {norm:.4}, expected {want} ({cols} basis columns, then zero padding, for k = {k})");
                    }
                }
                let t = Tensor::from_f32(gpu, &[dim, width], &data)?;
                Ok(if complement { Basis::Complement(t) } else { Basis::Frozen(t) })
            };
            let (left, right) = (side('U', m)?, side('V', n)?);
            if mode == Mode::Paper && !matches!((&left, &right), (Basis::Frozen(_), Basis::Frozen(_))) {
                bail!("{origin}: {} holds a complement basis, which paper mode cannot use", c.name);
            }
            frozen.insert(c.name.clone(), FrozenSubspace { rows: m, cols: n, k, left, right });
        }
        Ok(SubspaceSet { mode, policy, frozen, choices })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;
    use crate::kernels::testing::random;
    use crate::optim::UpdateFilter;

    fn params(gpu: &Gpu) -> BTreeMap<String, Tensor> {
        [("a.weight", [6, 4]), ("b.weight", [4, 9]), ("c.weight", [8, 8]), ("d.weight", [6, 4])]
            .iter()
            .enumerate()
            .map(|(i, (name, shape))| {
                let data = random(shape[0] * shape[1], 10 + i as u64);
                (name.to_string(), Tensor::from_f32(gpu, shape, &data).unwrap())
            })
            .collect()
    }

    #[test]
    fn a_saved_set_projects_exactly_like_the_original() {
        let gpu = gpu();
        let params = params(&gpu);
        let targets = vec!["*.weight".to_string()];
        let dir = std::env::temp_dir().join(format!("sculpt-subspace-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // strict at 0.75 keeps complements on the full sides; paper keeps U_k and V_k everywhere
        for (mode, policy) in
            [(Mode::Strict, RankPolicy::Fixed { ratio: 0.75 }), (Mode::Paper, RankPolicy::BLOCK_MINMAX)]
        {
            let set = SubspaceSet::build(
                &params,
                &targets,
                policy,
                mode,
                |n: &str| if n.starts_with('a') { 0.9 } else { 0.6 },
                1,
            )
            .unwrap();
            let path = dir.join(SUBSPACE_FILE);
            set.save(&path).unwrap();
            let loaded = SubspaceSet::load(&gpu, &path).unwrap();
            assert_eq!((loaded.mode, loaded.policy, &loaded.choices), (set.mode, set.policy, &set.choices));
            if mode == Mode::Strict {
                assert!(matches!(loaded.frozen["c.weight"].left, Basis::Complement(_)), "the complement is kept");
            }
            for (name, p) in &params {
                let update = random(p.len(), 99);
                let (a, b) = (
                    Tensor::from_f32(&gpu, p.shape(), &update).unwrap(),
                    Tensor::from_f32(&gpu, p.shape(), &update).unwrap(),
                );
                set.filter(name, &a).unwrap();
                loaded.filter(name, &b).unwrap();
                let (a, b) = (a.to_f32().unwrap(), b.to_f32().unwrap());
                assert_eq!(a, b, "{name} ({mode:?})");
                assert_ne!(a, update, "{name}: the projection changed the update");
            }
        }
    }

    #[test]
    fn damaged_files_are_refused_with_the_tensor_named() {
        let gpu = gpu();
        let params = params(&gpu);
        let set = SubspaceSet::build(
            &params,
            &["a.*".to_string()],
            RankPolicy::Fixed { ratio: 0.5 },
            Mode::Strict,
            |_| 0.5,
            1,
        )
        .unwrap();
        let bytes = set.to_safetensors().unwrap();
        let mut meta: HashMap<String, String> =
            SafeTensors::read_metadata(&bytes).unwrap().1.metadata().clone().unwrap();
        meta.insert("choices".into(), meta["choices"].replace("\"k\":2", "\"k\":3"));
        let (u, v) = (&set.frozen["a.weight"].left, &set.frozen["a.weight"].right);
        let tensors = [("a.weight.U_k".to_string(), u.tensor()), ("a.weight.V_k".to_string(), v.tensor())];
        let wrong_k = crate::model::weights::serialize(&tensors, Some(meta)).unwrap();
        let err = SubspaceSet::from_safetensors(&gpu, &wrong_k, "s.safetensors").err().unwrap().to_string();
        assert!(err.contains("a.weight.U_k") && err.contains("column 2") && err.contains("norm 0"), "{err}");
        let plain = crate::model::weights::serialize(&tensors, None).unwrap();
        let err = SubspaceSet::from_safetensors(&gpu, &plain, "s.safetensors").err().unwrap().to_string();
        assert!(err.contains("not a sculpt subspace file"), "{err}");
    }
}
