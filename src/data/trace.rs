//! TRACE (Wang et al. 2023, a continual-learning benchmark for decoder-only LLMs): one
//! folder per dataset, each split a JSON array of `{"prompt": ..., "answer": ...}` records
//! whose prompt already holds the task instruction, so prompts are used as they are.
//!
//! TRACE's loaders read `train.json`, `eval.json` and `test.json`, and its inference
//! scripts score the test split; the preset trains on `train.json` and evaluates on
//! `test.json` (`eval.json`, the validation split, is not needed). TRACE scores MeetingBank,
//! 20Minuten and Py150 by ROUGE-L, SARI and edit similarity; sculpt scores every task by
//! exact match.

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use super::cl_benchmark::{read_records, PresetTask};
use super::jsonl::{string_field, Example};
use super::stream::{Format, Task};

/// The preset's name for `--preset`.
pub const PRESET: &str = "trace";

/// The eight datasets in the paper's training order; each name is also its folder.
pub const DATASETS: &[&str] =
    &["C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm", "NumGLUE-ds", "20Minuten"];

/// Training epochs per dataset, as TRACE's training scripts set them (`--num_train_epochs`).
pub const EPOCHS: &[usize] = &[5, 3, 7, 5, 3, 5, 5, 7];

/// What `--data` must be, for the error of a missing file.
const LAYOUT: &str = "the TRACE benchmark folder (e.g. LLM-CL-Benchmark_5000) with DATASET/{train.json, test.json} \
    for each of C-STANCE, FOMC, MeetingBank, Py150, ScienceQA, NumGLUE-cm, NumGLUE-ds, 20Minuten";

/// The tasks of the TRACE stream from the benchmark folder (e.g. `LLM-CL-Benchmark_5000`),
/// keeping at most `max_train` / `max_eval` examples of each split (the first ones), each
/// with TRACE's epochs.
pub fn tasks(data_dir: &Path, max_train: Option<usize>, max_eval: Option<usize>) -> Result<Vec<Task>> {
    DATASETS
        .iter()
        .zip(EPOCHS)
        .map(|(name, &epochs)| {
            let task = PresetTask {
                preset: PRESET,
                task: name,
                folder: data_dir.join(name),
                format: Format::Trace,
                instruction: None,
                layout: LAYOUT,
            };
            let mut task = task.load(max_train, max_eval)?;
            task.settings.epochs = Some(epochs);
            Ok(task)
        })
        .collect()
}

/// One split: each record's prompt is the input, its answer the target.
pub fn read_split(path: &Path) -> Result<Vec<Example>> {
    let records: Vec<Value> =
        read_records(path, r#"a TRACE split (one array of {"prompt": ..., "answer": ...} objects, both strings)"#)?;
    let needs = r#"each record needs "prompt" and "answer" strings"#;
    records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let field =
                |key: &str| string_field(record, key, format_args!("{}: record {}", path.display(), i + 1), needs);
            Ok(Example::new(field("prompt")?, field("answer")?))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::cl_benchmark::preset;
    use crate::data::stream::tests::scratch;

    /// A fake TRACE folder: two records per split per dataset, tagged with dataset, file and index.
    pub(crate) fn fake_trace(dir: &Path) {
        for name in DATASETS {
            let folder = dir.join(name);
            std::fs::create_dir_all(&folder).unwrap();
            for file in ["train.json", "eval.json", "test.json"] {
                let records: Vec<_> = (0..2)
                    .map(|i| serde_json::json!({"prompt": format!("{name} {file} {i}\nAnswer:"), "answer": format!("{name}-{i}")}))
                    .collect();
                std::fs::write(folder.join(file), serde_json::to_string(&records).unwrap()).unwrap();
            }
        }
    }

    #[test]
    fn the_preset_reads_the_eight_tasks_in_the_paper_order_with_prompts_as_they_are() {
        let dir = scratch("trace-preset");
        fake_trace(&dir);
        let tasks = preset("trace", &dir, None, None).unwrap();
        let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm", "NumGLUE-ds", "20Minuten"]
        );
        let py150 = &tasks[3];
        assert_eq!(
            py150.train,
            vec![
                Example::new("Py150 train.json 0\nAnswer:".into(), "Py150-0".into()),
                Example::new("Py150 train.json 1\nAnswer:".into(), "Py150-1".into()),
            ]
        );
        assert_eq!(py150.eval[1], Example::new("Py150 test.json 1\nAnswer:".into(), "Py150-1".into()));
        assert!(tasks.iter().all(|t| t.labels.is_none() && t.train.len() == 2 && t.eval.len() == 2));
        let epochs: Vec<Option<usize>> = tasks.iter().map(|t| t.settings.epochs).collect();
        assert_eq!(epochs, [5, 3, 7, 5, 3, 5, 5, 7].map(Some), "TRACE's epochs per dataset");
        let capped = preset("trace", &dir, Some(1), None).unwrap();
        assert!(capped.iter().all(|t| t.train.len() == 1 && t.eval.len() == 2));
        let capped = preset("trace", &dir, None, Some(1)).unwrap();
        assert!(capped.iter().all(|t| t.train.len() == 2 && t.eval.len() == 1));
        assert_eq!(capped[7].eval, vec![Example::new("20Minuten test.json 0\nAnswer:".into(), "20Minuten-0".into())]);
    }

    #[test]
    fn a_missing_file_or_a_malformed_record_is_named() {
        let dir = scratch("trace-bad");
        fake_trace(&dir);
        // eval.json is TRACE's validation split, which the preset does not read.
        std::fs::remove_file(dir.join("FOMC/eval.json")).unwrap();
        assert_eq!(preset("trace", &dir, None, None).unwrap().len(), 8);
        std::fs::remove_file(dir.join("ScienceQA/test.json")).unwrap();
        let err = format!("{:#}", preset("trace", &dir, None, None).unwrap_err());
        assert!(
            err.contains("preset trace")
                && err.contains("ScienceQA/test.json is missing")
                && err.contains("DATASET/{train.json, test.json}"),
            "{err}"
        );
        let split = dir.join("NumGLUE-cm/train.json");
        let cases = [
            (r#"[{"prompt": "p", "answer": "a"}, {"prompt": "q"}]"#, "record 2: missing \"answer\""),
            (r#"[{"prompt": 7, "answer": "a"}]"#, "record 1: \"prompt\" must be a string, got 7"),
            (r#"[]"#, "no examples"),
            (r#"{"prompt": "p", "answer": "a"}"#, "not valid JSON for a TRACE split"),
        ];
        for (text, want) in cases {
            std::fs::write(&split, text).unwrap();
            let err = format!("{:#}", read_split(&split).unwrap_err());
            assert!(err.contains(&split.display().to_string()) && err.contains(want), "{err}");
        }
        std::fs::write(dir.join("ScienceQA/test.json"), r#"[{"prompt": "p", "answer": "a"}]"#).unwrap();
        let err = format!("{:#}", preset("trace", &dir, None, None).unwrap_err());
        assert!(err.contains("preset trace: task NumGLUE-cm") && err.contains("NumGLUE-cm/train.json"), "{err}");
    }
}
