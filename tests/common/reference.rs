//! The float64 PyTorch references of the fixture models (tests/fixtures/README.md).

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use sculpt::Tensor;

pub fn fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(model)
}

/// `reference.safetensors` and `reference.json` of one fixture folder.
pub struct Reference {
    bytes: Vec<u8>,
    pub json: serde_json::Value,
}

impl Reference {
    pub fn load(dir: &Path) -> Reference {
        let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
        let json = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        Reference { bytes, json }
    }

    /// (shape, values) of a reference tensor.
    pub fn tensor(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let view = st.tensor(name).unwrap_or_else(|_| panic!("reference tensor {name}"));
        let data = match view.dtype() {
            Dtype::F32 => {
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
            }
            Dtype::F64 => view.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::I64 => {
                view.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect()
            }
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        (view.shape().to_vec(), data)
    }

    pub fn ints(&self, name: &str) -> Vec<i64> {
        self.tensor(name).1.into_iter().map(|v| v as i64).collect()
    }

    /// Asserts `loss` within 1e-5 (relative) of the reference loss, printing it beside the
    /// per-tensor errors of `report`.
    pub fn assert_loss(&self, model_name: &str, loss: &Tensor, report: &[String]) {
        let loss = loss.to_f32().unwrap()[0] as f64;
        let want = self.tensor("loss").1[0];
        let loss_err = (loss - want).abs() / want.abs();
        eprintln!("{model_name}: loss {loss} vs {want} (relative {loss_err:.2e}); {}", report.join(", "));
        assert!(loss_err <= 1e-5, "{model_name}: loss {loss} vs reference {want}");
    }
}

/// max |got - want| / max |want|
pub fn relative_error(got: &Tensor, want: &(Vec<usize>, Vec<f64>), what: &str) -> f64 {
    assert_eq!(got.shape(), want.0.as_slice(), "{what}: shape");
    let got = got.to_f32().unwrap();
    let scale = want.1.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = got.iter().zip(&want.1).fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
    err / scale
}

/// ‖got − want‖ / ‖want‖ over a whole tensor.
pub fn relative_norm_error(got: &[f32], want: &[f64]) -> f64 {
    let diff: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt();
    diff / norm.max(1e-30)
}
