//! Every reader of a user's file, fed damaged copies of a valid file (truncated, bytes
//! replaced, JSON values put in random places, random bytes; for safetensors also wrong
//! header lengths, dtypes and shapes): none panics, and every error names the file.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

use sculpt::continual::checkpoint::{self, TrainingState};
use sculpt::data::{cl_benchmark, jsonl, trace, Stream};
use sculpt::model::{weights, T5Config, Tokenizer};
use sculpt::optim::{AdamW, AdamWConfig};
use sculpt::rng::Rng;
use sculpt::train::Position;
use sculpt::{Gpu, Tensor};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/t5_v1_0");

fn config() -> ProptestConfig {
    ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() }
}

/// One way of damaging a file.
#[derive(Clone, Debug)]
enum Mutation {
    /// Cut at a point.
    Truncate(Index),
    /// Replace bytes at random positions.
    Bytes(Vec<(Index, u8)>),
    /// Put `value` at a random node of the JSON document (a safetensors header), or add it
    /// under `key` where the node is an object.
    Json { path: Vec<Index>, key: Option<String>, value: Value },
    /// Random bytes instead of the file.
    Random(Vec<u8>),
    /// Safetensors: a header length field that disagrees with the file.
    HeaderLength(u64),
    /// Safetensors: another dtype and/or shape for one tensor.
    Tensor { index: Index, dtype: Option<String>, shape: Option<Vec<usize>> },
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(0u64), Just(1), Just(u64::MAX), Just(1 << 40)].prop_map(Value::from),
        prop::num::f64::ANY.prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        prop::collection::vec((any::<Index>(), any::<u8>()), 1..8).prop_map(Mutation::Bytes),
        (prop::collection::vec(any::<Index>(), 0..5), prop::option::of(".{0,8}"), json_value())
            .prop_map(|(path, key, value)| Mutation::Json { path, key, value }),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(Mutation::Random),
    ]
}

fn safetensors_mutation() -> impl Strategy<Value = Mutation> {
    let dtypes = ["F64", "F32", "F16", "BF16", "I64", "I32", "U8", "BOOL", "F8_E4M3", "F4", "X"];
    let dim = prop_oneof![0usize..80, Just(usize::MAX), Just(1 << 40)];
    prop_oneof![
        json_mutation(),
        prop_oneof![any::<u64>(), 0u64..4096].prop_map(Mutation::HeaderLength),
        (
            any::<Index>(),
            prop::option::of(prop::sample::select(dtypes.to_vec()).prop_map(String::from)),
            prop::option::of(prop::collection::vec(dim, 0..4)),
        )
            .prop_map(|(index, dtype, shape)| Mutation::Tensor { index, dtype, shape }),
    ]
}

/// Replaces the node at `path` (or adds `key` to it) with `value`.
fn put(node: &mut Value, path: &[Index], key: Option<&str>, value: Value) {
    if let Some((first, rest)) = path.split_first() {
        let child = match node {
            Value::Object(map) if !map.is_empty() => {
                let i = first.index(map.len());
                map.values_mut().nth(i)
            }
            Value::Array(items) if !items.is_empty() => {
                let i = first.index(items.len());
                items.get_mut(i)
            }
            _ => None,
        };
        if let Some(child) = child {
            return put(child, rest, key, value);
        }
    }
    match (node, key) {
        (Value::Object(map), Some(key)) => {
            map.insert(key.to_string(), value);
        }
        (node, _) => *node = value,
    }
}

/// The damaged bytes; `json` rewrites the document through the JSON mutation.
fn apply_bytes(bytes: &[u8], m: &Mutation, json: impl Fn(&mut Value, &[Index], Option<&str>, Value)) -> Vec<u8> {
    match m {
        Mutation::Truncate(at) => bytes[..at.index(bytes.len() + 1)].to_vec(),
        Mutation::Bytes(edits) => {
            let mut out = bytes.to_vec();
            for (at, b) in edits {
                if !out.is_empty() {
                    out[at.index(bytes.len())] = *b;
                }
            }
            out
        }
        Mutation::Random(random) => random.clone(),
        Mutation::Json { path, key, value } => {
            let mut doc: Value = serde_json::from_slice(bytes).expect("the seed is valid JSON");
            json(&mut doc, path, key.as_deref(), value.clone());
            serde_json::to_vec_pretty(&doc).unwrap()
        }
        Mutation::HeaderLength(_) | Mutation::Tensor { .. } => unreachable!("safetensors mutations"),
    }
}

fn mutate_json(bytes: &[u8], m: &Mutation) -> Vec<u8> {
    apply_bytes(bytes, m, put)
}

/// JSON Lines: the JSON mutation acts on one line (or adds one).
fn mutate_jsonl(text: &str, m: &Mutation) -> Vec<u8> {
    let Mutation::Json { path, key, value } = m else { return mutate_json(text.as_bytes(), m) };
    let mut lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    match key {
        Some(_) if path.is_empty() => lines.push(value.clone()),
        _ => {
            let mut doc = Value::Array(lines);
            put(&mut doc, path, key.as_deref(), value.clone());
            lines = match doc {
                Value::Array(lines) => lines,
                other => vec![other],
            };
        }
    }
    lines.iter().map(|l| format!("{l}\n")).collect::<String>().into_bytes()
}

fn mutate_safetensors(bytes: &[u8], m: &Mutation) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let (header, data) = (&bytes[8..8 + n], &bytes[8 + n..]);
    let rebuild = |header: &Value| {
        let text = serde_json::to_vec(header).unwrap();
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&text);
        out.extend_from_slice(data);
        out
    };
    let mut doc: Value = serde_json::from_slice(header).unwrap();
    match m {
        Mutation::HeaderLength(len) => {
            let mut out = bytes.to_vec();
            out[..8].copy_from_slice(&len.to_le_bytes());
            out
        }
        Mutation::Tensor { index, dtype, shape } => {
            let names: Vec<String> =
                doc.as_object().unwrap().keys().filter(|k| *k != "__metadata__").cloned().collect();
            let entry = &mut doc[&names[index.index(names.len())]];
            if let Some(dtype) = dtype {
                entry["dtype"] = dtype.clone().into();
            }
            if let Some(shape) = shape {
                entry["shape"] = serde_json::to_value(shape).unwrap();
            }
            rebuild(&doc)
        }
        Mutation::Json { path, key, value } => {
            put(&mut doc, path, key.as_deref(), value.clone());
            rebuild(&doc)
        }
        other => mutate_json(bytes, other),
    }
}

/// An error must name `path`; a panic fails the property by itself.
fn names_the_file<T>(result: anyhow::Result<T>, path: &Path) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        let message = format!("{e:#}");
        prop_assert!(
            message.contains(&path.display().to_string()),
            "the error does not name {}: {message}",
            path.display()
        );
    }
    Ok(())
}

fn fixture(file: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURE).join(file)).unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_json(m in json_mutation()) {
        let dir = common::scratch("parsers", "config");
        let path = dir.join("config.json");
        std::fs::write(&path, mutate_json(&fixture("config.json"), &m)).unwrap();
        names_the_file(T5Config::load(&dir), &path)?;
    }

    #[test]
    fn model_safetensors(m in safetensors_mutation()) {
        let dir = common::scratch("parsers", "weights");
        let path = dir.join(weights::WEIGHTS_FILE);
        std::fs::write(&path, mutate_safetensors(&fixture(weights::WEIGHTS_FILE), &m)).unwrap();
        names_the_file(weights::Weights::load(&dir), &path)?;
    }

    #[test]
    fn tokenizer_json(m in json_mutation()) {
        let dir = common::scratch("parsers", "tokenizer");
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, mutate_json(&fixture("tokenizer.json"), &m)).unwrap();
        let tokenizer = Tokenizer::load(&dir, 128);
        if let Ok(t) = &tokenizer {
            names_the_file(t.encode("a b c").and_then(|ids| t.decode(&ids)), &path)?;
        }
        names_the_file(tokenizer, &path)?;
    }

    #[test]
    fn jsonl_data(m in json_mutation()) {
        let dir = common::scratch("parsers", "jsonl");
        let path = dir.join("train.jsonl");
        let seed = concat!(
            "{\"input\": \"a b\", \"target\": \"b a\"}\n{\"input\": \"c\", \"target\": \"c\", \"extra\": [1]}\n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n"
        );
        let bytes = mutate_jsonl(seed, &m);
        std::fs::write(&path, &bytes).unwrap();
        names_the_file(jsonl::read_jsonl(&path), &path)?;
        names_the_file(jsonl::parse_jsonl(&String::from_utf8_lossy(&bytes), &path.display().to_string()), &path)?;
    }

    #[test]
    fn cl_benchmark_split_and_labels(m in json_mutation()) {
        let dir = common::scratch("parsers", "clb");
        let split = dir.join("train.json");
        let seed = r#"[{"sentence": "good film", "label": "positive"}, {"sentence": "dull", "label": "negative"}]"#;
        std::fs::write(&split, mutate_json(seed.as_bytes(), &m)).unwrap();
        names_the_file(cl_benchmark::read_split(&split), &split)?;
        let labels = dir.join(cl_benchmark::LABELS_FILE);
        std::fs::write(&labels, mutate_json(br#"["negative", "positive"]"#, &m)).unwrap();
        names_the_file(cl_benchmark::read_labels(&labels), &labels)?;
    }

    #[test]
    fn trace_split(m in json_mutation()) {
        let dir = common::scratch("parsers", "trace");
        let split = dir.join("test.json");
        let seed = r#"[{"prompt": "Is 2 > 1?\nAnswer:", "answer": "yes"}, {"prompt": "x", "answer": "", "extra": [1]}]"#;
        std::fs::write(&split, mutate_json(seed.as_bytes(), &m)).unwrap();
        names_the_file(trace::read_split(&split), &split)?;
    }

    #[test]
    fn stream_file(m in json_mutation()) {
        let dir = common::scratch("parsers", "stream");
        std::fs::write(dir.join("train.jsonl"), "{\"input\": \"x\", \"target\": \"positive\"}\n").unwrap();
        let seed = serde_json::json!({"tasks": [
            {"name": "a", "train": "train.jsonl", "eval": "train.jsonl", "labels": ["positive"],
             "instruction": "Say: {labels}\n{input}", "max_train": 4, "epochs": 2, "lr": 1e-3, "batch_size": 2},
            {"name": "b", "train": "train.jsonl", "eval": "train.jsonl", "format": "jsonl"},
        ]});
        let path = dir.join("stream.json");
        let bytes = mutate_json(&serde_json::to_vec_pretty(&seed).unwrap(), &m);
        std::fs::write(&path, &bytes).unwrap();
        names_the_file(Stream::load(&path), &path)?;
        let origin = path.display().to_string();
        names_the_file(Stream::parse(&String::from_utf8_lossy(&bytes), &origin, dir.clone()), &path)?;
    }

    #[test]
    fn training_state(m in json_mutation()) {
        let dir = common::scratch("parsers", "state");
        let state = TrainingState {
            task: 1,
            task_done: false,
            step: 3,
            global_step: 7,
            position: Position { epoch: 1, batch: 2, rng: Rng::new(4) },
            run_rng: Rng::new(5),
            before: Some(vec![0.0, 0.25]),
            accuracy: vec![vec![0.5, 0.0]],
        retention_base: None,
        retention: Vec::new(),
        };
        let path = dir.join(checkpoint::STATE_FILE);
        std::fs::write(&path, mutate_json(&serde_json::to_vec_pretty(&state).unwrap(), &m)).unwrap();
        names_the_file(checkpoint::read_state(&dir), &path)?;
    }

    #[test]
    fn optimizer_state(m in safetensors_mutation()) {
        let gpu = Gpu::shared().unwrap();
        let dir = common::scratch("parsers", "optimizer");
        let params: BTreeMap<String, Tensor> = [("a", vec![2, 3]), ("b", vec![4])]
            .into_iter()
            .map(|(n, s)| (n.to_string(), Tensor::zeros(&gpu, &s, sculpt::DType::F32).unwrap()))
            .collect();
        let mut optimizer = AdamW::new(AdamWConfig::default(), &params).unwrap();
        let saved: Vec<(String, &Tensor)> = optimizer
            .moments
            .iter()
            .flat_map(|(n, m)| [(format!("{n}.exp_avg"), &m.exp_avg), (format!("{n}.exp_avg_sq"), &m.exp_avg_sq)])
            .collect();
        let bytes = weights::serialize(&saved, None).unwrap();
        let path = dir.join(checkpoint::OPTIMIZER_FILE);
        std::fs::write(&path, mutate_safetensors(&bytes, &m)).unwrap();
        names_the_file(checkpoint::load_optimizer(&dir, &mut optimizer, 3), &path)?;
    }
}

/// The two panics of the tokenizers crate that the property above found.
#[test]
fn tokenizer_files_that_made_the_tokenizers_crate_panic_are_refused() {
    let dir = common::scratch("parsers", "tokenizer-regressions");
    let path = dir.join("tokenizer.json");
    let text = String::from_utf8(fixture("tokenizer.json")).unwrap();
    // Cut inside the decoder section.
    std::fs::write(&path, &text[..text.find("\"decoder\"").unwrap() + 20]).unwrap();
    let err = format!("{:#}", Tokenizer::load(&dir, 128).err().unwrap());
    assert!(err.contains(&path.display().to_string()) && err.contains("not valid JSON"), "{err}");
    // A template inserting a special token that is not defined.
    let mut json: Value = serde_json::from_str(&text).unwrap();
    json["post_processor"]["special_tokens"] = serde_json::json!({});
    std::fs::write(&path, json.to_string()).unwrap();
    let err = format!("{:#}", Tokenizer::load(&dir, 128).err().unwrap());
    assert!(
        err.contains(&path.display().to_string()) && err.contains("\"</s>\"") && err.contains("special_tokens"),
        "{err}"
    );
}
