//! `sculpt train --retention`: the starting model's greedy answers to general prompts are
//! recorded, and after every task the loss of those answers and the share still given
//! identically are in results.json (both methods, one command), beside the run's settings in
//! run.json.

mod common;

use std::path::Path;
use std::process::Command;

/// A two-task stream of short copy tasks in `dir`.
fn write_stream(dir: &Path) -> std::path::PathBuf {
    for (task, words) in [("first", ["alpha", "beta", "gamma", "delta"]), ("second", ["red", "green", "blue", "white"])]
    {
        let lines: String = (0..12)
            .map(|i| {
                let word = words[i % words.len()];
                format!("{}\n", serde_json::json!({"input": format!("say {word}"), "target": word}))
            })
            .collect();
        std::fs::write(dir.join(format!("{task}.jsonl")), lines).unwrap();
    }
    let stream = serde_json::json!({"tasks": [
        {"name": "first", "train": "first.jsonl", "eval": "first.jsonl", "max_eval": 4},
        {"name": "second", "train": "second.jsonl", "eval": "second.jsonl", "max_eval": 4},
    ]});
    let path = dir.join("stream.json");
    std::fs::write(&path, stream.to_string()).unwrap();
    path
}

#[test]
fn retention_of_the_base_answers_is_measured_after_every_task_for_both_methods() {
    let dir = common::scratch("retention", "run");
    let stream = write_stream(&dir);
    let prompts = dir.join("prompts.jsonl");
    let all = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/retention.jsonl")).unwrap();
    std::fs::write(&prompts, all.lines().take(5).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let out = dir.join("out");
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama_tied");
    let status = Command::new(env!("CARGO_BIN_EXE_sculpt"))
        .args(["train", "--model", model, "--stream"])
        .arg(&stream)
        .args(["--retention"])
        .arg(&prompts)
        .args(["--retention-max-tokens", "6", "--method", "both", "--rank-policy", "official"])
        .args(["--importance-samples", "4", "--batch-size", "4", "--lr", "1e-2", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let mut final_loss = Vec::new();
    for method in ["osft", "seqft"] {
        let results = common::results(&out.join(method));
        let points =
            results["retention"].as_array().unwrap_or_else(|| panic!("{method}: no retention in results.json"));
        let after: Vec<&str> = points.iter().map(|p| p["after"].as_str().unwrap()).collect();
        assert_eq!(after, ["base", "first", "second"], "{method}");
        assert_eq!(points[0]["identical"].as_f64(), Some(1.0), "{method}: the base model answers as itself");
        for p in points {
            let (loss, identical) = (p["loss"].as_f64().unwrap(), p["identical"].as_f64().unwrap());
            assert!(loss.is_finite() && loss > 0.0 && (0.0..=1.0).contains(&identical), "{method}: {p}");
        }
        final_loss.push((points[0]["loss"].as_f64().unwrap(), points[2]["loss"].as_f64().unwrap()));
        let run: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(method).join("run.json")).unwrap()).unwrap();
        let settings = &run["settings"];
        assert_eq!(settings["retention"]["prompts"], 5, "{method}: {settings}");
        assert_eq!(settings["policy"]["policy"], "official");
        assert_eq!(settings["train"]["adamw"]["lr"].as_f64().map(|lr| (lr * 1e6).round()), Some(1e4));
    }
    // Plain fine-tuning at this rate moves the model away from its own answers.
    let (base, after_seqft) = final_loss[1];
    assert!(after_seqft > base, "seqft: base answers' loss {base} -> {after_seqft}");
}
