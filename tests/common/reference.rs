//! The float64 PyTorch references of the fixture models (tests/fixtures/README.md).

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use sculpt::data::Example;
use sculpt::model::{Gradients, Model, Pair, Tokenizer};
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

    /// The examples of the reference batch, as text.
    pub fn examples(&self) -> Vec<Example> {
        let examples = self.json["batch"]["examples"].as_array().unwrap();
        let text = |e: &serde_json::Value, key: &str| e[key].as_str().unwrap().to_string();
        examples.iter().map(|e| Example::new(text(e, "source"), text(e, "target"))).collect()
    }

    /// The examples of the reference batch as `tokenizer` encodes them: (source, target) ids.
    pub fn pairs(&self, tokenizer: &Tokenizer) -> Vec<Pair> {
        let encode = |text: &str| tokenizer.encode(text).unwrap();
        self.examples().iter().map(|e| (encode(&e.input), encode(&e.target))).collect()
    }

    /// Asserts `got` within `tol` ([`relative_error`]) of reference tensor `name`, adding
    /// the error to `report` for [`Reference::assert_loss`] to print.
    pub fn check(&self, model_name: &str, got: &Tensor, name: &str, tol: f64, report: &mut Vec<String>) {
        let err = relative_error(got, &self.tensor(name), name);
        report.push(format!("{name} {err:.2e}"));
        assert!(err <= tol, "{model_name}: {name} relative error {err:e} > {tol:e}");
    }

    /// Asserts one gradient per reference parameter, each within 1e-4 ([`relative_norm_error`])
    /// of its reference `grad.NAME`.
    pub fn assert_gradients(&self, model_name: &str, grads: &Gradients) {
        let names: Vec<&str> =
            self.json["parameter_names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
        assert_eq!(grads.grads.len(), names.len(), "one gradient per parameter");
        let mut worst = (0.0f64, String::new());
        for name in names {
            let g = grads.get(name);
            let (shape, want) = self.tensor(&format!("grad.{name}"));
            assert_eq!(g.shape(), shape.as_slice(), "{name}");
            let err = relative_norm_error(&g.to_f32().unwrap(), &want);
            if err > worst.0 {
                worst = (err, name.to_string());
            }
        }
        eprintln!("{model_name}: worst gradient {} off by {:.2e} relative", worst.1, worst.0);
        assert!(worst.0 <= 1e-4, "{model_name}: gradient of {} off by {:.2e} relative", worst.1, worst.0);
    }

    /// Asserts, for every reference generation case, the tokenizer's ids of the input, the
    /// greedy output ids and their decoded text.
    pub fn assert_generations(&self, model_name: &str, model: &dyn Model, tokenizer: &Tokenizer) {
        let max_new = self.json["generate_settings"]["max_new_tokens"].as_u64().unwrap() as usize;
        let cases = self.json["generate"].as_array().unwrap();
        assert!(!cases.is_empty());
        for case in cases {
            let ids =
                |k: &str| case[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect::<Vec<_>>();
            let input_ids = tokenizer.encode(case["input"].as_str().unwrap()).unwrap();
            assert_eq!(input_ids, ids("input_ids"), "{model_name}: tokenizer on {}", case["input"]);
            let output = model.generate(&input_ids, max_new).unwrap();
            assert_eq!(output, ids("output_ids"), "{model_name}: greedy output for {}", case["input"]);
            assert_eq!(tokenizer.decode(&output).unwrap(), case["output_text"].as_str().unwrap(), "{model_name}");
        }
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
