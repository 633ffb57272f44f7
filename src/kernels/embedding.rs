//! Embedding lookup by U32 ids and its deterministic backward through a host-built CSR of
//! the ids. Launcher for `shaders/embedding.wgsl`.

use anyhow::{bail, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Launch, Shader, LOOP_BUDGET};
use crate::kernels::ShaderContract;
use crate::tensor::{DType, Tensor};

pub static SHADER: Shader = crate::shader!("embedding");

const WG: u64 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    cols: u32,
    a: u32,
    seg: u32,
}

pub(super) fn contract() -> ShaderContract {
    let params = crate::uniform_layout!("Params", Params { n, cols, a, seg });
    ShaderContract { shader: &SHADER, uniforms: vec![params], constants: vec![("WG", WG)] }
}

fn table_shape(what: &str, name: &str, t: &Tensor) -> Result<(usize, usize)> {
    match *t.shape() {
        [vocab, d] if t.dtype() == DType::F32 && d > 0 && t.len() <= u32::MAX as usize => Ok((vocab, d)),
        _ => bail!("{what}: {name} must be an f32 [vocab, d] table, got {:?} {:?}", t.dtype(), t.shape()),
    }
}

fn flat_grid(what: &str, n: usize, d: usize) -> Result<[u32; 3]> {
    let total = n as u64 * d as u64;
    if total + WG > u32::MAX as u64 {
        bail!("{what}: {n} x {d} elements exceed the 32-bit index range");
    }
    Ok(grid_1d(total.div_ceil(WG)))
}

/// `out[i] = table[ids[i]]`: table [vocab, d], ids U32 `[n]` -> [n, d]. Ids >= vocab give zero
/// rows on the GPU (it never reads out of bounds); [`check_ids`] checks ids held on the host.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (vocab, d) = table_shape("embedding", "table", table)?;
    if ids.dtype() != DType::U32 || ids.shape().len() != 1 {
        bail!("embedding: ids must be U32 [n], got {:?} {:?}", ids.dtype(), ids.shape());
    }
    let n = ids.len();
    let out = Tensor::uninit(table.gpu(), &[n, d], DType::F32)?;
    let params = Params { n: n as u32, cols: d as u32, a: vocab as u32, seg: 0 };
    table.gpu().launch(&Launch {
        shader: &SHADER,
        entry: "embedding_gather",
        constants: &[],
        params: bytemuck::bytes_of(&params),
        read: &[table, ids],
        write: &[&out],
        workgroups: flat_grid("embedding", n, d)?,
        loop_iterations: 0,
        workgroup_bytes: 0,
    })?;
    Ok(out)
}

/// Errors on the first id >= vocab, naming its position.
pub fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        bail!(
            "token id {id} at position {i} is outside the vocabulary of {vocab}; check the tokenizer against the model"
        );
    }
    Ok(())
}

/// The positions of each distinct id: ids sorted ascending, `offsets[u]..offsets[u + 1]`
/// indexes `positions` (ascending) for `unique[u]`.
#[derive(Debug, PartialEq, Eq)]
pub struct IdGroups {
    pub unique: Vec<u32>,
    pub offsets: Vec<u32>,
    pub positions: Vec<u32>,
}

impl IdGroups {
    /// Groups of every id but `skip`.
    pub fn new(ids: &[u32], skip: Option<u32>) -> IdGroups {
        let mut positions: Vec<u32> = (0..ids.len() as u32).filter(|&i| Some(ids[i as usize]) != skip).collect();
        // Stable: equal ids keep ascending positions, so the summation order is fixed.
        positions.sort_by_key(|&i| ids[i as usize]);
        let mut unique = Vec::new();
        let mut offsets = Vec::new();
        for (k, &pos) in positions.iter().enumerate() {
            if unique.last() != Some(&ids[pos as usize]) {
                unique.push(ids[pos as usize]);
                offsets.push(k as u32);
            }
        }
        offsets.push(positions.len() as u32);
        IdGroups { unique, offsets, positions }
    }

    fn max_count(&self) -> usize {
        self.offsets.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0)
    }
}

/// `dtable[v] += Σ_{i: ids[i] == v} dy[i]`; dy [n, d], dtable [vocab, d]. Deterministic: the
/// host groups positions by id and one invocation per (distinct id, column) sums its
/// positions in order. An id repeated more than the loop budget allows is summed over
/// several dispatches of consecutive position segments. The row of `padding_idx` gets
/// nothing, as torch's `nn.Embedding(padding_idx=..)` (transformers' Llama embedding).
pub fn embedding_backward(dy: &Tensor, ids: &[u32], dtable: &Tensor, padding_idx: Option<u32>) -> Result<()> {
    let what = "embedding_backward";
    let (vocab, d) = table_shape(what, "dtable", dtable)?;
    if dy.dtype() != DType::F32 || dy.shape() != [ids.len(), d] {
        bail!("{what}: dy must be f32 [{}, {d}] (ids x table width), got {:?} {:?}", ids.len(), dy.dtype(), dy.shape());
    }
    check_ids(ids, vocab)?;
    if ids.is_empty() {
        return Ok(());
    }
    let groups = IdGroups::new(ids, padding_idx);
    if groups.unique.is_empty() {
        return Ok(());
    }
    let gpu = dtable.gpu();
    let unique = Tensor::from_u32(gpu, &[groups.unique.len()], &groups.unique)?;
    let offsets = Tensor::from_u32(gpu, &[groups.offsets.len()], &groups.offsets)?;
    let positions = Tensor::from_u32(gpu, &[groups.positions.len()], &groups.positions)?;
    let workgroups = flat_grid(what, groups.unique.len(), d)?;
    let seg = groups.max_count().min(LOOP_BUDGET as usize);
    for start in (0..groups.max_count()).step_by(seg) {
        let params = Params { n: groups.unique.len() as u32, cols: d as u32, a: start as u32, seg: seg as u32 };
        gpu.launch(&Launch {
            shader: &SHADER,
            entry: "embedding_backward",
            constants: &[],
            params: bytemuck::bytes_of(&params),
            read: &[dy, &unique, &offsets, &positions],
            write: &[dtable],
            workgroups,
            loop_iterations: seg as u64,
            workgroup_bytes: 0,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;
    use crate::kernels::testing::{assert_close, random};
    use crate::rng::Rng;

    #[test]
    fn gather_matches_reference_and_guards_bad_ids() {
        let gpu = gpu();
        for &(vocab, d) in &[(1, 1), (3, 17), (65, 63), (127, 64), (17, 1000)] {
            let table = random(vocab * d, (vocab * d) as u64);
            let t = Tensor::from_f32(&gpu, &[vocab, d], &table).unwrap();
            for n in [1, 3, 65, 255] {
                let mut rng = Rng::new(n as u64);
                let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
                let got = embedding(&t, &Tensor::from_u32(&gpu, &[n], &ids).unwrap()).unwrap();
                assert_eq!(got.shape(), &[n, d]);
                let want: Vec<f32> = ids.iter().flat_map(|&i| table[i as usize * d..][..d].to_vec()).collect();
                assert_eq!(got.to_f32().unwrap(), want);
            }
            let bad = Tensor::from_u32(&gpu, &[2], &[0, vocab as u32]).unwrap();
            let got = embedding(&t, &bad).unwrap().to_f32().unwrap();
            assert_eq!(&got[..d], &table[..d]);
            assert!(got[d..].iter().all(|&v| v == 0.0), "an out-of-range id must give zeros");
        }
    }

    #[test]
    fn id_groups_are_sorted_and_stable() {
        let g = IdGroups::new(&[5, 2, 5, 0, 2, 5], None);
        assert_eq!(g.unique, vec![0, 2, 5]);
        assert_eq!(g.offsets, vec![0, 1, 3, 6]);
        assert_eq!(g.positions, vec![3, 1, 4, 0, 2, 5]);
        assert_eq!(g.max_count(), 3);
        let g = IdGroups::new(&[5, 2, 5, 0, 2, 5], Some(5));
        assert_eq!((g.unique, g.offsets, g.positions), (vec![0, 2], vec![0, 1, 3], vec![3, 1, 4]));
    }

    #[test]
    fn backward_accumulates_repeated_ids() {
        let gpu = gpu();
        for &(vocab, d, n) in &[(1, 3, 17), (3, 17, 65), (65, 64, 255), (17, 65, 1000), (1000, 127, 63), (5, 1, 4099)] {
            let mut rng = Rng::new((vocab + d + n) as u64);
            // Skewed ids: many repeats of id 0 (like padding), the rest spread.
            let ids: Vec<u32> = (0..n).map(|_| if rng.below(3) == 0 { 0 } else { rng.below(vocab) as u32 }).collect();
            let dys = random(n * d, n as u64);
            let init = random(vocab * d, 7);
            let dtable = Tensor::from_f32(&gpu, &[vocab, d], &init).unwrap();
            let dy = Tensor::from_f32(&gpu, &[n, d], &dys).unwrap();
            embedding_backward(&dy, &ids, &dtable, None).unwrap();
            let mut want: Vec<f64> = init.iter().map(|&v| v as f64).collect();
            for (i, &id) in ids.iter().enumerate() {
                for c in 0..d {
                    want[id as usize * d + c] += dys[i * d + c] as f64;
                }
            }
            let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            let got = dtable.to_f32().unwrap();
            assert_close(&got, &want, 1e-5);
            // Deterministic: a second run from the same start gives the same bits.
            dtable.write(&init).unwrap();
            embedding_backward(&dy, &ids, &dtable, None).unwrap();
            assert_eq!(dtable.to_f32().unwrap(), got);
        }
    }

    #[test]
    fn an_id_repeated_past_the_loop_budget_is_summed_in_segments() {
        let gpu = gpu();
        let n = LOOP_BUDGET as usize + 4465;
        let ids: Vec<u32> = (0..n).map(|i| (i % 7 == 0) as u32).collect();
        // Small integers: every partial sum is exact in f32.
        let dys: Vec<f32> = (0..n).map(|i| (i % 5) as f32 - 2.0).collect();
        let dtable = Tensor::zeros(&gpu, &[2, 1], DType::F32).unwrap();
        embedding_backward(&Tensor::from_f32(&gpu, &[n, 1], &dys).unwrap(), &ids, &dtable, None).unwrap();
        let mut want = [0.0f32; 2];
        for (&id, &v) in ids.iter().zip(&dys) {
            want[id as usize] += v;
        }
        assert_eq!(dtable.to_f32().unwrap(), want);
    }

    #[test]
    fn the_padding_row_gets_no_gradient() {
        let gpu = gpu();
        let dtable = Tensor::zeros(&gpu, &[3, 1], DType::F32).unwrap();
        let dy = Tensor::from_f32(&gpu, &[4, 1], &[1.0, 2.0, 4.0, 8.0]).unwrap();
        embedding_backward(&dy, &[2, 0, 2, 1], &dtable, Some(2)).unwrap();
        assert_eq!(dtable.to_f32().unwrap(), vec![2.0, 8.0, 0.0]);
        embedding_backward(&dy, &[2, 2, 2, 2], &dtable, Some(2)).unwrap();
        assert_eq!(dtable.to_f32().unwrap(), vec![2.0, 8.0, 0.0]);
    }

    #[test]
    fn backward_refuses_ids_outside_the_table() {
        let gpu = gpu();
        let dtable = Tensor::zeros(&gpu, &[4, 2], DType::F32).unwrap();
        let dy = Tensor::zeros(&gpu, &[2, 2], DType::F32).unwrap();
        let err = embedding_backward(&dy, &[1, 4], &dtable, None).unwrap_err().to_string();
        assert!(err.contains("token id 4 at position 1"), "{err}");
    }
}
