//! O-LoRA's CL_Benchmark layout: one folder per dataset holding `train.json`, `test.json`
//! (JSON arrays of `{"sentence": ..., "label": ...}`) and `labels.json` (the label set);
//! a task is scored by exact match of the generated label.
//!
//! The presets are the task orders of the continual-learning literature (O-LoRA's
//! numbering): orders 1–3 over the standard four-task benchmark (AG News, Amazon, Yahoo,
//! DBpedia) and orders 4–6 over the long fifteen-task one. The data is the user's copy of
//! the CL_Benchmark folder; nothing is downloaded.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

use super::jsonl::Example;
use super::stream::{Format, Task, TaskSpec};

/// One dataset of the benchmark: its folder under CL_Benchmark and the task definition
/// that opens its prompt (none where the sentence already asks the question, as in COPA).
pub struct Dataset {
    pub name: &'static str,
    pub folder: &'static str,
    pub instruction: Option<&'static str>,
}

const TOPIC: &str = "What is the topic of the following paragraph? Choose one from the option.";
const SENTIMENT: &str = "What is the sentiment of the following paragraph? Choose one from the option.";
const ENTAILMENT: &str =
    "What is the logical relationship between the \"sentence 1\" and the \"sentence 2\"? Choose one from the option.";

pub const DATASETS: &[Dataset] = &[
    Dataset { name: "agnews", folder: "TC/agnews", instruction: Some(TOPIC) },
    Dataset { name: "dbpedia", folder: "TC/dbpedia", instruction: Some(TOPIC) },
    Dataset { name: "yahoo", folder: "TC/yahoo", instruction: Some(TOPIC) },
    Dataset { name: "amazon", folder: "SC/amazon", instruction: Some(SENTIMENT) },
    Dataset { name: "yelp", folder: "SC/yelp", instruction: Some(SENTIMENT) },
    Dataset { name: "imdb", folder: "SC/IMDB", instruction: Some(SENTIMENT) },
    Dataset { name: "sst-2", folder: "SC/SST-2", instruction: Some(SENTIMENT) },
    Dataset { name: "mnli", folder: "NLI/MNLI", instruction: Some(ENTAILMENT) },
    Dataset { name: "cb", folder: "NLI/CB", instruction: Some(ENTAILMENT) },
    Dataset { name: "rte", folder: "NLI/RTE", instruction: Some(ENTAILMENT) },
    Dataset {
        name: "qqp",
        folder: "QQP/QQP",
        instruction: Some(
            "Whether the \"first sentence\" and the \"second sentence\" have the same meaning? Choose one from the option.",
        ),
    },
    Dataset {
        name: "boolqa",
        folder: "BoolQA/BoolQA",
        instruction: Some("According to the following passage, is the question true or false? Choose one from the option."),
    },
    Dataset {
        name: "multirc",
        folder: "MultiRC/MultiRC",
        instruction: Some(
            "According to the following passage and question, is the candidate answer true or false? Choose one from the option.",
        ),
    },
    Dataset {
        name: "wic",
        folder: "WiC/WiC",
        instruction: Some(
            "Given a word and two sentences, is the word used with the same sense in both sentences? Choose one from the option.",
        ),
    },
    Dataset { name: "copa", folder: "COPA/COPA", instruction: None },
];

/// The presets: task orders by name.
pub const ORDERS: &[(&str, &[&str])] = &[
    ("order1", &["dbpedia", "amazon", "yahoo", "agnews"]),
    ("order2", &["dbpedia", "amazon", "agnews", "yahoo"]),
    ("order3", &["yahoo", "amazon", "agnews", "dbpedia"]),
    (
        "order4",
        &[
            "mnli", "cb", "wic", "copa", "qqp", "boolqa", "rte", "imdb", "yelp", "amazon", "sst-2", "dbpedia",
            "agnews", "multirc", "yahoo",
        ],
    ),
    (
        "order5",
        &[
            "multirc", "boolqa", "wic", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst-2", "dbpedia", "agnews",
            "yelp", "amazon", "yahoo",
        ],
    ),
    (
        "order6",
        &[
            "yelp", "amazon", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst-2", "dbpedia", "agnews", "yahoo",
            "multirc", "boolqa", "wic",
        ],
    ),
];

/// The prompt of a dataset: task definition, the options, the text, then "Answer:".
pub fn template(dataset: &Dataset) -> String {
    match dataset.instruction {
        Some(instruction) => format!("{instruction}\nOption: {{labels}}\n{{input}}\nAnswer:"),
        None => "{input}\nAnswer:".to_string(),
    }
}

/// Every preset name: the CL_Benchmark orders, then TRACE's stream.
pub fn preset_names() -> Vec<&'static str> {
    ORDERS.iter().map(|(n, _)| *n).chain([super::trace::PRESET]).collect()
}

/// The tasks of preset `name` (see [`preset_names`]) from the benchmark folder `data_dir`
/// (CL_Benchmark for the orders, TRACE's folder for "trace"), keeping at most `max_train`
/// / `max_eval` examples of each split (the first ones).
pub fn preset(name: &str, data_dir: &Path, max_train: Option<usize>, max_eval: Option<usize>) -> Result<Vec<Task>> {
    if name == super::trace::PRESET {
        return super::trace::tasks(data_dir, max_train, max_eval);
    }
    let Some((_, order)) = ORDERS.iter().find(|(n, _)| *n == name) else {
        bail!("unknown preset {name:?}; the presets are {}", preset_names().join(", "));
    };
    order
        .iter()
        .map(|task| {
            let dataset = DATASETS.iter().find(|d| d.name == *task).expect("every ordered task is a dataset");
            let layout = format!(
                "the CL_Benchmark folder of O-LoRA, with {}/{{train.json, test.json, labels.json}}",
                dataset.folder
            );
            let task = PresetTask {
                preset: name,
                task: dataset.name,
                folder: data_dir.join(dataset.folder),
                format: Format::ClBenchmark,
                instruction: Some(template(dataset)),
                layout: &layout,
            };
            task.load(max_train, max_eval)
        })
        .collect()
}

/// One task of a preset: a dataset folder holding `train.json` and `test.json` (and
/// `labels.json` for CL_Benchmark).
pub(super) struct PresetTask<'a> {
    pub preset: &'a str,
    pub task: &'a str,
    pub folder: PathBuf,
    pub format: Format,
    pub instruction: Option<String>,
    /// What the preset's data folder should look like, for the error of a missing file.
    pub layout: &'a str,
}

impl PresetTask<'_> {
    pub(super) fn load(self, max_train: Option<usize>, max_eval: Option<usize>) -> Result<Task> {
        let mut files = vec!["train.json", "test.json"];
        if self.format == Format::ClBenchmark {
            files.push(LABELS_FILE);
        }
        for file in files {
            let path = self.folder.join(file);
            if !path.is_file() {
                bail!("preset {}: {} is missing; give {}", self.preset, path.display(), self.layout);
            }
        }
        let spec = TaskSpec {
            name: self.task.to_string(),
            train: self.folder.join("train.json"),
            eval: self.folder.join("test.json"),
            format: self.format,
            instruction: self.instruction,
            labels: None,
            max_train,
            max_eval,
            epochs: None,
            lr: None,
            batch_size: None,
        };
        spec.check()
            .and_then(|_| spec.load(Path::new("")))
            .with_context(|| format!("preset {}: task {}", self.preset, self.task))
    }
}

/// The label set of a dataset folder.
pub const LABELS_FILE: &str = "labels.json";

#[derive(serde::Deserialize)]
struct Record {
    sentence: String,
    label: String,
}

/// One split: the sentence is the input, the label the target.
pub fn read_split(path: &Path) -> Result<Vec<Example>> {
    let records: Vec<Record> = read_records(
        path,
        r#"a CL_Benchmark split (one array of {"sentence": ..., "label": ...} objects, both strings)"#,
    )?;
    Ok(records.into_iter().map(|r| Example::new(r.sentence, r.label)).collect())
}

/// A split file of either preset: one non-empty JSON array of records; `what` names the
/// layout in the error of a file that does not parse as one.
pub(super) fn read_records<T: DeserializeOwned>(path: &Path, what: &str) -> Result<Vec<T>> {
    let text = crate::io::read_text(path)?;
    let records: Vec<T> =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON for {what}", path.display()))?;
    if records.is_empty() {
        bail!("{}: no examples (the array is empty)", path.display());
    }
    Ok(records)
}

/// A `labels.json`: a non-empty JSON array of strings.
pub fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = crate::io::read_text(path)?;
    let labels: Vec<String> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON array of label strings", path.display()))?;
    if labels.is_empty() {
        bail!("{}: the label set is empty", path.display());
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::stream::tests::scratch;

    #[test]
    fn splits_and_labels_are_read_and_malformed_ones_named() {
        let dir = scratch("clb-read");
        let split = dir.join("train.json");
        std::fs::write(&split, r#"[{"label": "B", "sentence": "Which? A: x B: y"}]"#).unwrap();
        assert_eq!(read_split(&split).unwrap(), vec![Example::new("Which? A: x B: y".into(), "B".into())]);
        std::fs::write(&split, r#"[{"sentence": "no label"}]"#).unwrap();
        let err = format!("{:#}", read_split(&split).unwrap_err());
        assert!(err.contains("train.json") && err.contains("missing field `label`"), "{err}");
        std::fs::write(&split, "[]").unwrap();
        assert!(read_split(&split).unwrap_err().to_string().contains("no examples"));
        let labels = dir.join(LABELS_FILE);
        std::fs::write(&labels, r#"["False", "True"]"#).unwrap();
        assert_eq!(read_labels(&labels).unwrap(), vec!["False", "True"]);
        std::fs::write(&labels, "{}").unwrap();
        assert!(format!("{:#}", read_labels(&labels).unwrap_err()).contains("expected a JSON array"));
    }

    /// A fake CL_Benchmark with every dataset: three training and two test records each.
    fn fake_benchmark(dir: &Path) {
        for d in DATASETS {
            let folder = dir.join(d.folder);
            std::fs::create_dir_all(&folder).unwrap();
            let labels = [format!("{}-yes", d.name), format!("{}-no", d.name)];
            std::fs::write(folder.join(LABELS_FILE), serde_json::to_string(&labels).unwrap()).unwrap();
            for (file, n) in [("train.json", 3), ("test.json", 2)] {
                let records: Vec<_> = (0..n)
                    .map(|i| serde_json::json!({"sentence": format!("{} {file} {i}", d.name), "label": labels[i % 2]}))
                    .collect();
                std::fs::write(folder.join(file), serde_json::to_string(&records).unwrap()).unwrap();
            }
        }
    }

    #[test]
    fn presets_follow_the_literature_orders_with_prompts_listing_the_labels() {
        let dir = scratch("clb-preset");
        fake_benchmark(&dir);
        let tasks = preset("order2", &dir, Some(2), None).unwrap();
        let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["dbpedia", "amazon", "agnews", "yahoo"]);
        let agnews = &tasks[2];
        assert_eq!((agnews.train.len(), agnews.eval.len()), (2, 2));
        assert_eq!(
            agnews.train[1],
            Example::new(
                format!("{TOPIC}\nOption: agnews-yes, agnews-no\nagnews train.json 1\nAnswer:"),
                "agnews-no".into()
            )
        );
        assert_eq!(agnews.labels.as_deref(), Some(&["agnews-yes".to_string(), "agnews-no".to_string()][..]));
        for (order, _) in ORDERS {
            let tasks = preset(order, &dir, None, Some(1)).unwrap();
            assert!(tasks.len() == 4 || tasks.len() == 15, "{order}");
            assert!(tasks.iter().all(|t| t.train.len() == 3 && t.eval.len() == 1));
        }
        let copa = preset("order4", &dir, None, None).unwrap().remove(3);
        assert_eq!(copa.eval[0].input, "copa test.json 0\nAnswer:");
    }

    #[test]
    fn presets_name_the_missing_folder_or_the_unknown_order() {
        let dir = scratch("clb-missing");
        fake_benchmark(&dir);
        std::fs::remove_file(dir.join("TC/yahoo/test.json")).unwrap();
        let err = format!("{:#}", preset("order1", &dir, None, None).unwrap_err());
        assert!(
            err.contains("preset order1") && err.contains("TC/yahoo/test.json") && err.contains("is missing"),
            "{err}"
        );
        let err = preset("order9", &dir, None, None).unwrap_err().to_string();
        assert!(err.contains("order9") && err.contains("order1, order2") && err.contains("order6, trace"), "{err}");
        std::fs::write(dir.join("TC/dbpedia/labels.json"), "[\"x\"]").unwrap();
        let err = format!("{:#}", preset("order2", &dir, None, None).unwrap_err());
        assert!(err.contains("task dbpedia") && err.contains("not in the label set [x]"), "{err}");
    }
}
