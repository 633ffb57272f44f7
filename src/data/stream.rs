//! Tasks and the stream file that lists them.
//!
//! A stream file is JSON: `{"tasks": [ ... ]}`, trained in order. Each task:
//!
//! ```json
//! {"name": "agnews", "train": "agnews/train.json", "eval": "agnews/test.json",
//!  "format": "cl_benchmark",
//!  "instruction": "What is the topic? Choose one from the option.\nOption: {labels}\n{input}\nAnswer:",
//!  "labels": ["World", "Sports", "Business", "Science or Technology"],
//!  "max_train": 1000, "max_eval": 500, "epochs": 1, "lr": 1e-3, "batch_size": 8}
//! ```
//!
//! Paths are relative to the stream file's folder. `format` is `jsonl` (the default: lines
//! `{"input", "target"}`), `cl_benchmark` (O-LoRA's JSON arrays of `{"sentence", "label"}`,
//! whose label set is read from `labels.json` beside the training file when not given) or
//! `trace` (TRACE's JSON arrays of `{"prompt", "answer"}`, the prompt taken as the input).
//! The instruction template (default `{input}`) wraps every input; `{labels}` is the label
//! set joined with ", "; `{{` and `}}` are literal braces (a task of chat conversations,
//! which the model's chat template renders, takes no instruction). With a label set, every target
//! must be one of its labels. Only `name`, `train` and `eval` are required.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::jsonl::{read_jsonl, Example};
use super::{cl_benchmark, trace};

/// Per-task overrides of the run's training options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSettings {
    pub epochs: Option<usize>,
    pub lr: Option<f32>,
    pub batch_size: Option<usize>,
}

/// One task of a stream: examples ready for the model (instruction applied).
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub name: String,
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    /// The answers a classification task may give, when known.
    pub labels: Option<Vec<String>>,
    pub settings: TaskSettings,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One `{"input": ..., "target": ...}` object per line.
    #[default]
    Jsonl,
    /// O-LoRA's CL_Benchmark: a JSON array of `{"sentence": ..., "label": ...}`.
    ClBenchmark,
    /// TRACE: a JSON array of `{"prompt": ..., "answer": ...}`.
    Trace,
}

/// How to build one task from files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    pub train: PathBuf,
    pub eval: PathBuf,
    #[serde(default)]
    pub format: Format,
    /// Template with `{input}` and `{labels}`; none leaves inputs as they are.
    #[serde(default)]
    pub instruction: Option<String>,
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Keep only the first examples of each split.
    #[serde(default)]
    pub max_train: Option<usize>,
    #[serde(default)]
    pub max_eval: Option<usize>,
    #[serde(default)]
    pub epochs: Option<usize>,
    #[serde(default)]
    pub lr: Option<f32>,
    #[serde(default)]
    pub batch_size: Option<usize>,
}

/// The tasks of a stream file, in training order.
#[derive(Clone, Debug, PartialEq)]
pub struct Stream {
    pub tasks: Vec<TaskSpec>,
    /// The folder relative paths start from.
    pub base: PathBuf,
    /// The stream file, for error messages.
    pub origin: String,
}

impl Stream {
    /// Reads a stream file and every task's data.
    pub fn load(path: &Path) -> Result<Vec<Task>> {
        Stream::read(path)?.tasks()
    }

    /// Reads and checks the stream file itself (no data files yet).
    pub fn read(path: &Path) -> Result<Stream> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read the stream file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
        Stream::parse(&text, &path.display().to_string(), base)
    }

    /// Parses stream JSON; `origin` names it in errors, `base` resolves relative paths.
    pub fn parse(text: &str, origin: &str, base: PathBuf) -> Result<Stream> {
        let value: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{origin}: not valid JSON"))?;
        let Some(entries) = value.get("tasks").and_then(|t| t.as_array()) else {
            bail!("{origin}: expected an object {{\"tasks\": [...]}} listing the tasks in training order");
        };
        if entries.is_empty() {
            bail!("{origin}: \"tasks\" is empty; list at least one task");
        }
        if let Some(other) = value.as_object().and_then(|o| o.keys().find(|k| *k != "tasks")) {
            bail!("{origin}: unknown top-level field \"{other}\"; only \"tasks\" is read");
        }
        let mut tasks = Vec::with_capacity(entries.len());
        let mut names = HashSet::new();
        for (i, entry) in entries.iter().enumerate() {
            let label = match entry.get("name").and_then(|n| n.as_str()) {
                Some(name) => format!("{origin}: task {} \"{name}\"", i + 1),
                None => format!("{origin}: task {}", i + 1),
            };
            let spec: TaskSpec = serde_json::from_value(entry.clone())
                .with_context(|| format!("{label}: fields are name, train, eval (required), format, instruction, labels, max_train, max_eval, epochs, lr, batch_size"))?;
            spec.check().with_context(|| label.clone())?;
            if !names.insert(spec.name.clone()) {
                bail!("{label}: the name is used twice; every task needs its own name");
            }
            tasks.push(spec);
        }
        Ok(Stream { tasks, base, origin: origin.to_string() })
    }

    /// Loads every task's data.
    pub fn tasks(&self) -> Result<Vec<Task>> {
        self.tasks
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                spec.load(&self.base).with_context(|| format!("{}: task {} \"{}\"", self.origin, i + 1, spec.name))
            })
            .collect()
    }
}

impl TaskSpec {
    /// Checks what can be checked without reading the data.
    pub fn check(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            bail!("field \"name\" is empty; give the task a name");
        }
        let counts = [
            ("max_train", self.max_train),
            ("max_eval", self.max_eval),
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
        ];
        for (field, value) in counts {
            if value == Some(0) {
                bail!("field \"{field}\" is 0; give a positive number or leave it out");
            }
        }
        if let Some(lr) = self.lr {
            if !(lr.is_finite() && lr > 0.0) {
                bail!("field \"lr\" is {lr}; the learning rate must be positive");
            }
        }
        if let Some(labels) = &self.labels {
            if labels.is_empty() {
                bail!("field \"labels\" is empty; list the answers or leave the field out");
            }
        }
        if let Some(template) = &self.instruction {
            let parts = parse_template(template).context("field \"instruction\"")?;
            if !parts.contains(&Part::Input) {
                bail!("field \"instruction\" has no {{input}}; the example text would be dropped");
            }
        }
        Ok(())
    }

    /// Reads the task's files (relative to `base`) and applies the instruction.
    pub fn load(&self, base: &Path) -> Result<Task> {
        let (train_path, eval_path) = (base.join(&self.train), base.join(&self.eval));
        let read = |path: &Path, field: &str| -> Result<Vec<Example>> {
            if !path.is_file() {
                bail!(
                    "field \"{field}\": {} does not exist (paths are relative to the stream file's folder)",
                    path.display()
                );
            }
            match self.format {
                Format::Jsonl => read_jsonl(path),
                Format::ClBenchmark => cl_benchmark::read_split(path),
                Format::Trace => trace::read_split(path),
            }
        };
        let mut train = read(&train_path, "train")?;
        let mut eval = read(&eval_path, "eval")?;
        train.truncate(self.max_train.unwrap_or(usize::MAX));
        eval.truncate(self.max_eval.unwrap_or(usize::MAX));
        let labels = match (&self.labels, self.format) {
            (Some(labels), _) => Some(labels.clone()),
            (None, Format::ClBenchmark) => {
                let path = train_path.parent().unwrap_or(Path::new("")).join(cl_benchmark::LABELS_FILE);
                Some(cl_benchmark::read_labels(&path).context(
                    "no \"labels\" field, so the label set is read from labels.json beside the training file",
                )?)
            }
            (None, Format::Jsonl | Format::Trace) => None,
        };
        if let Some(labels) = &labels {
            for (examples, path) in [(&train, &train_path), (&eval, &eval_path)] {
                if let Some((i, e)) = examples.iter().enumerate().find(|(_, e)| !labels.iter().any(|l| l == e.answer()))
                {
                    bail!(
                        "{}: example {}: target {:?} is not in the label set [{}]; fix the data or the \"labels\" field",
                        path.display(),
                        i + 1,
                        e.answer(),
                        labels.join(", ")
                    );
                }
            }
        }
        if let Some(template) = &self.instruction {
            if let Some(chat) = train.iter().chain(&eval).find_map(|e| e.chat.as_ref()) {
                bail!(
                    "field \"instruction\" wraps {{\"input\", \"target\"}} examples, but {} is a chat conversation (rendered by the model's chat template); put the instruction in a system message instead",
                    chat.origin
                );
            }
            let parts = parse_template(template).context("field \"instruction\"")?;
            let joined = match (&labels, parts.contains(&Part::Labels)) {
                (Some(l), _) => l.join(", "),
                (None, false) => String::new(),
                (None, true) => {
                    bail!("field \"instruction\" uses {{labels}} but the task has no label set; add \"labels\"")
                }
            };
            for e in train.iter_mut().chain(eval.iter_mut()) {
                e.input = render(&parts, &e.input, &joined);
            }
        }
        let settings = TaskSettings { epochs: self.epochs, lr: self.lr, batch_size: self.batch_size };
        Ok(Task { name: self.name.clone(), train, eval, labels, settings })
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Input,
    Labels,
}

fn parse_template(template: &str) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => bail!(
                            "unclosed {{{name} in {template:?}; close it with }} or write {{{{ for a literal brace"
                        ),
                    }
                }
                parts.push(Part::Text(std::mem::take(&mut text)));
                parts.push(match name.as_str() {
                    "input" => Part::Input,
                    "labels" => Part::Labels,
                    _ => bail!("unknown placeholder {{{name}}}; use {{input}} and {{labels}} (write {{{{ and }}}} for literal braces)"),
                });
            }
            '}' => bail!("a lone }} in {template:?}; write }}}} for a literal brace"),
            c => text.push(c),
        }
    }
    parts.push(Part::Text(text));
    Ok(parts)
}

fn render(parts: &[Part], input: &str, labels: &str) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Text(t) => t.as_str(),
            Part::Input => input,
            Part::Labels => labels,
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh folder under the system temp dir.
    pub(crate) fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sculpt-stream-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    const JSONL: &str =
        "{\"input\": \"great film\", \"target\": \"positive\"}\n{\"input\": \"dull\", \"target\": \"negative\"}\n";

    #[test]
    fn loads_tasks_in_order_with_instructions_labels_and_overrides() {
        let dir = scratch("ok");
        write(&dir, "sst/train.jsonl", JSONL);
        write(&dir, "sst/eval.jsonl", "{\"input\": \"fine\", \"target\": \"positive\"}\n");
        write(
            &dir,
            "tc/train.json",
            r#"[{"sentence": "goal!", "label": "Sports"}, {"sentence": "stocks", "label": "Business"}]"#,
        );
        write(&dir, "tc/test.json", r#"[{"sentence": "match", "label": "Sports"}]"#);
        write(&dir, "tc/labels.json", r#"["Sports", "Business"]"#);
        let stream = write(
            &dir,
            "stream.json",
            r#"{"tasks": [
                {"name": "sst", "train": "sst/train.jsonl", "eval": "sst/eval.jsonl",
                 "instruction": "Sentiment {{{labels}}}? {input}", "labels": ["negative", "positive"],
                 "epochs": 2, "lr": 0.001, "batch_size": 4, "max_train": 1},
                {"name": "tc", "train": "tc/train.json", "eval": "tc/test.json", "format": "cl_benchmark",
                 "instruction": "Topic?\nOption: {labels}\n{input}\nAnswer:"}
            ]}"#,
        );
        let tasks = Stream::load(&stream).unwrap();
        assert_eq!(tasks.len(), 2);
        let sst = &tasks[0];
        assert_eq!(sst.name, "sst");
        assert_eq!(
            sst.train,
            vec![Example::new("Sentiment {negative, positive}? great film".into(), "positive".into())]
        );
        assert_eq!(sst.eval[0].input, "Sentiment {negative, positive}? fine");
        assert_eq!(sst.settings, TaskSettings { epochs: Some(2), lr: Some(0.001), batch_size: Some(4) });
        let tc = &tasks[1];
        assert_eq!(tc.labels, Some(vec!["Sports".to_string(), "Business".to_string()]));
        assert_eq!(
            tc.train[1],
            Example::new("Topic?\nOption: Sports, Business\nstocks\nAnswer:".into(), "Business".into())
        );
        assert_eq!(tc.settings, TaskSettings::default());
    }

    #[test]
    fn malformed_streams_name_the_file_task_and_field() {
        let dir = scratch("bad");
        write(&dir, "train.jsonl", JSONL);
        write(&dir, "empty.jsonl", "\n");
        write(&dir, "chat.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n");
        let task = |extra: &str| {
            format!(r#"{{"tasks": [{{"name": "t", "train": "train.jsonl", "eval": "train.jsonl"{extra}}}]}}"#)
        };
        let cases = [
            ("{\"tasks\": []}".to_string(), "\"tasks\" is empty"),
            ("[1]".to_string(), "expected an object {\"tasks\": [...]}"),
            ("{\"tasks\": [{\"name\": \"t\"}], \"x\": 1}".to_string(), "unknown top-level field \"x\""),
            ("{\"tasks\": [{\"name\": \"t\", \"eval\": \"e\"}]}".to_string(), "task 1 \"t\": fields are name, train, eval"),
            (task(", \"epoch\": 3"), "unknown field `epoch`"),
            (task(", \"format\": \"csv\""), "unknown variant `csv`"),
            (task(", \"instruction\": \"{text}\""), "field \"instruction\": unknown placeholder {text}"),
            (task(", \"instruction\": \"no placeholder\""), "has no {input}"),
            (task(", \"instruction\": \"{labels}: {input}\""), "uses {labels} but the task has no label set"),
            (task(", \"labels\": [\"positive\"]"), "target \"negative\" is not in the label set [positive]"),
            (task(", \"labels\": []"), "field \"labels\" is empty"),
            (task(", \"batch_size\": 0"), "field \"batch_size\" is 0"),
            (task(", \"lr\": -1"), "field \"lr\" is -1"),
            (task("").replace("\"eval\": \"train.jsonl\"", "\"eval\": \"missing.jsonl\""), "field \"eval\":"),
            (task("").replace("\"eval\": \"train.jsonl\"", "\"eval\": \"empty.jsonl\""), "empty.jsonl: no examples"),
            (
                r#"{"tasks": [{"name": "t", "train": "train.jsonl", "eval": "train.jsonl"}, {"name": "t", "train": "train.jsonl", "eval": "train.jsonl"}]}"#.to_string(),
                "task 2 \"t\": the name is used twice",
            ),
            (task(", \"format\": \"cl_benchmark\""), "not valid JSON"),
            (
                task(", \"instruction\": \"Q: {input}\"").replace("\"eval\": \"train.jsonl\"", "\"eval\": \"chat.jsonl\""),
                "chat.jsonl:1 is a chat conversation (rendered by the model's chat template); put the instruction in a system message",
            ),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let path = write(&dir, &format!("stream{i}.json"), text);
            let err = format!("{:#}", Stream::load(&path).unwrap_err());
            assert!(err.contains(want), "case {i}: {err}");
            assert!(err.contains(&path.display().to_string()), "case {i} does not name the file: {err}");
        }
        let missing = dir.join("nope.json");
        assert!(format!("{:#}", Stream::load(&missing).unwrap_err()).contains("cannot read the stream file"));
    }

    #[test]
    fn templates_escape_braces() {
        let parts = parse_template("{{x}} {input}").unwrap();
        assert_eq!(render(&parts, "a", ""), "{x} a");
        assert!(parse_template("a } b").unwrap_err().to_string().contains("lone }"));
        assert!(parse_template("a {input").unwrap_err().to_string().contains("unclosed {input"));
    }
}
