//! sculpt's `official` rank policy against a Python transcription of the official code's
//! adaptive rule (tools/official_rank_reference.py → tests/fixtures/official_rank.json):
//! the importance of every matrix from the same inputs, and the frozen rank it gives.

use std::collections::BTreeMap;

use sculpt::model::MatrixInput;
use sculpt::subspace::importance::MatrixImportance;
use sculpt::subspace::rank::normalise_by_mean;
use sculpt::subspace::RankPolicy;
use sculpt::tensor::Tensor;
use sculpt::Gpu;

#[test]
fn official_importance_and_ranks_match_the_python_transcription() {
    let _ = env_logger::builder().is_test(true).try_init();
    let gpu = Gpu::new(&Default::default()).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/official_rank.json");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tokens = fixture["tokens"].as_u64().unwrap() as usize;
    let floats =
        |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect::<Vec<_>>();
    let (mut params, mut inputs, mut want) = (BTreeMap::new(), Vec::new(), BTreeMap::new());
    for m in fixture["matrices"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap().to_string();
        let (rows, cols) = (m["rows"].as_u64().unwrap() as usize, m["cols"].as_u64().unwrap() as usize);
        params.insert(name.clone(), Tensor::from_f32(&gpu, &[rows, cols], &floats(&m["w"])).unwrap());
        inputs.push(MatrixInput {
            names: vec![name.clone()],
            input: Tensor::from_f32(&gpu, &[tokens, cols], &floats(&m["x"])).unwrap(),
            real: vec![true; tokens],
        });
        want.insert(name, (rows, cols, m["importance"].as_f64().unwrap(), m["k"].as_u64().unwrap() as usize));
    }
    let targets: Vec<String> = want.keys().cloned().collect();
    let mut importance = MatrixImportance::default();
    importance.add(&params, &targets, &inputs).unwrap();
    let raw = importance.means();
    assert_eq!(raw.len(), want.len());
    let normalised = normalise_by_mean(&raw);
    let mut ranks_below_d = 0;
    for (name, &(rows, cols, importance, k)) in &want {
        assert!((raw[name] - importance).abs() < 1e-5, "{name}: importance {} vs Python's {importance}", raw[name]);
        let got = RankPolicy::OFFICIAL.frozen_rank(normalised[name], rows, cols, 1);
        assert_eq!(got, k, "{name}: k {got} vs Python's {k}");
        ranks_below_d += usize::from(k < rows.min(cols));
    }
    // The fixture exercises both the clamp at d and ranks below it.
    assert!(ranks_below_d >= 2 && ranks_below_d < want.len());
}
