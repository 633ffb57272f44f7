//! Results of a stream: `results.json`, a markdown table, a PNG heatmap of the accuracy
//! matrix and the training loss of every task from the run's log.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::metrics::{metrics, Metrics};
use super::retention::RetentionPoint;
use crate::io::write_atomic;
use crate::plot::{heatmap_png, line_chart_png, line_charts_png, LineChart};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub method: String,
    pub tasks: Vec<String>,
    /// `accuracy[i][j]`: accuracy on task j after training task i.
    pub accuracy: Vec<Vec<f64>>,
    /// Accuracies before any training, when measured.
    pub before: Option<Vec<f64>>,
    pub aa: f64,
    pub bwt: f64,
    pub fwt: Option<f64>,
    pub forgetting: Vec<f64>,
    /// Retention of the base model's answers: before the first task, then after each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Vec<RetentionPoint>>,
}

impl Results {
    pub fn new(method: &str, tasks: Vec<String>, accuracy: Vec<Vec<f64>>, before: Option<Vec<f64>>) -> Results {
        let Metrics { aa, bwt, fwt, forgetting } = metrics(&accuracy, before.as_deref());
        Results { method: method.to_string(), tasks, accuracy, before, aa, bwt, fwt, forgetting, retention: None }
    }

    /// The accuracy matrix as a markdown table (percent), with AA and BWT.
    pub fn markdown(&self) -> String {
        let mut s = format!("### {}\n\n| after \\ on |", self.method);
        for t in &self.tasks {
            s += &format!(" {t} |");
        }
        s += &format!("\n|---|{}\n", "---|".repeat(self.tasks.len()));
        if let Some(b) = &self.before {
            s += "| (before) |";
            b.iter().for_each(|v| s += &format!(" {:.1} |", 100.0 * v));
            s += "\n";
        }
        for (name, row) in self.tasks.iter().zip(&self.accuracy) {
            s += &format!("| {name} |");
            row.iter().for_each(|v| s += &format!(" {:.1} |", 100.0 * v));
            s += "\n";
        }
        s += &format!("\nAA {:.1}  BWT {:+.1}", 100.0 * self.aa, 100.0 * self.bwt);
        if let Some(f) = self.fwt {
            s += &format!("  FWT {:+.1}", 100.0 * f);
        }
        s += "\n";
        if let Some(points) = &self.retention {
            s += "\n| retention after | base answers' loss | identical answers |\n|---|---|---|\n";
            for p in points {
                s += &format!("| {} | {:.4} | {:.1}% |\n", p.after, p.loss, 100.0 * p.identical);
            }
        }
        s
    }

    /// Writes results.json, results.md and accuracy.png into `dir`, and loss.png when `dir`
    /// holds the run's log.jsonl with training steps.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_atomic(&dir.join("results.json"), serde_json::to_string_pretty(self)?.as_bytes())?;
        write_atomic(&dir.join("results.md"), self.markdown().as_bytes())?;
        let trained = &self.tasks[..self.accuracy.len().min(self.tasks.len())];
        let title = format!("{}: accuracy (%)", self.method);
        let heatmap = heatmap_png(&title, "evaluated on", "after training", &self.tasks, trained, &self.accuracy)?;
        write_atomic(&dir.join("accuracy.png"), &heatmap)?;
        if let Some(png) = loss_curves_png(&dir.join("log.jsonl"))? {
            write_atomic(&dir.join("loss.png"), &png)?;
        }
        if let Some(png) = retention_png(std::slice::from_ref(self))? {
            write_atomic(&dir.join("retention.png"), &png)?;
        }
        Ok(())
    }
}

/// Retention over the stream, one series per run (labelled by its method): the loss of the
/// starting model's answers above, the share of answers still identical below. None when no
/// run measured retention.
pub fn retention_png(runs: &[Results]) -> Result<Option<Vec<u8>>> {
    let measured: Vec<(&Results, &Vec<RetentionPoint>)> =
        runs.iter().filter_map(|r| r.retention.as_ref().map(|points| (r, points))).collect();
    let Some((_, first)) = measured.first() else { return Ok(None) };
    let ticks: Vec<String> = first.iter().map(|p| p.after.clone()).collect();
    let series = |value: fn(&RetentionPoint) -> f64| -> Vec<(String, Vec<f64>)> {
        measured.iter().map(|(r, points)| (r.method.clone(), points.iter().map(value).collect())).collect()
    };
    let (loss, identical) = (series(|p| p.loss), series(|p| 100.0 * p.identical));
    let panels = [
        LineChart {
            title: "loss of the starting model's answers",
            x_label: "after task",
            y_label: "mean loss per token",
            x_ticks: &ticks,
            series: &loss,
        },
        LineChart {
            title: "answers still identical",
            x_label: "after task",
            y_label: "% of prompts",
            x_ticks: &ticks,
            series: &identical,
        },
    ];
    line_charts_png(&panels).map(Some)
}

/// A chart of the training loss of every task over the global step, from the step records
/// of a run's log.jsonl; None when there is no log or it holds no step.
pub fn loss_curves_png(log: &Path) -> Result<Option<Vec<u8>>> {
    let Ok(text) = std::fs::read_to_string(log) else { return Ok(None) };
    // (global step, task, loss) of each step record; evaluations and accuracy rows have no "step".
    let mut steps = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        let record: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{} line {}: not JSON", log.display(), n + 1))?;
        if let (Some(global_step), Some(task), Some(loss), Some(_)) =
            (record["global_step"].as_u64(), record["task"].as_str(), record["loss"].as_f64(), record["step"].as_u64())
        {
            steps.push((global_step, task.to_string(), loss));
        }
    }
    if steps.is_empty() {
        return Ok(None);
    }
    let mut global_steps: Vec<u64> = steps.iter().map(|s| s.0).collect();
    global_steps.sort_unstable();
    global_steps.dedup();
    let mut series: Vec<(String, Vec<f64>)> = Vec::new();
    for (global_step, task, loss) in steps {
        let at = match series.iter().position(|(name, _)| *name == task) {
            Some(at) => at,
            None => {
                series.push((task, vec![f64::NAN; global_steps.len()]));
                series.len() - 1
            }
        };
        series[at].1[global_steps.binary_search(&global_step).expect("listed above")] = loss;
    }
    let ticks: Vec<String> = global_steps.iter().map(u64::to_string).collect();
    line_chart_png("training loss per task", "global step", "loss", &ticks, &series).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::testing::decoded_size;

    #[test]
    fn results_are_written_with_required_keys_and_a_valid_png() {
        let r = Results::new("osft", vec!["copy".into(), "sort".into()], vec![vec![1.0, 0.0], vec![0.75, 0.5]], None);
        let dir = std::env::temp_dir().join(format!("sculpt-report-{}", std::process::id()));
        r.write(&dir).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
        for key in ["method", "tasks", "accuracy", "aa", "bwt"] {
            assert!(json.get(key).is_some(), "results.json lacks {key}");
        }
        assert_eq!(json["bwt"], serde_json::json!(-0.25));
        let md = std::fs::read_to_string(dir.join("results.md")).unwrap();
        assert!(md.contains("| sort | 75.0 | 50.0 |") && md.contains("AA 62.5  BWT -25.0"), "{md}");
        let png = std::fs::read(dir.join("accuracy.png")).unwrap();
        assert_eq!(decoded_size(&png), crate::plot::heatmap_size(&r.tasks, &r.tasks));
        assert!(!dir.join("loss.png").exists(), "no log, no loss chart");
    }

    #[test]
    fn the_loss_of_every_task_is_drawn_from_the_log_steps() {
        let dir = std::env::temp_dir().join(format!("sculpt-report-loss-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut log = String::new();
        for (global_step, task) in (1..=6).zip(["copy", "copy", "copy", "sort", "sort", "sort"]) {
            let loss = 3.0 / global_step as f64;
            log +=
                &format!("{{\"global_step\": {global_step}, \"task\": \"{task}\", \"step\": 1, \"loss\": {loss}}}\n");
            log += &format!("{{\"global_step\": {global_step}, \"task\": \"{task}\", \"eval\": {{\"loss\": 1.0}}}}\n");
        }
        log += "{\"global_step\": 6, \"task\": \"sort\", \"accuracy\": [0.5, 1.0]}\n";
        std::fs::write(dir.join("log.jsonl"), log).unwrap();
        let r = Results::new("osft", vec!["copy".into(), "sort".into()], vec![vec![1.0, 0.0], vec![0.75, 0.5]], None);
        r.write(&dir).unwrap();
        let png = std::fs::read(dir.join("loss.png")).unwrap();
        assert_eq!(decoded_size(&png), crate::plot::LINE_CHART_SIZE);

        std::fs::write(dir.join("log.jsonl"), "{\"global_step\": 1, \"task\": \"copy\", \"eval\": {}}\n").unwrap();
        assert!(loss_curves_png(&dir.join("log.jsonl")).unwrap().is_none(), "no step, no chart");
        std::fs::write(dir.join("log.jsonl"), "not json\n").unwrap();
        let err = loss_curves_png(&dir.join("log.jsonl")).unwrap_err().to_string();
        assert!(err.contains("log.jsonl line 1"), "{err}");
    }
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// The figures of a run that the per-seed tables hold: AA, BWT (points) and, when measured,
/// the rise of the starting answers' loss over the stream and the share (%) still identical.
fn run_figures(r: &Results) -> Vec<f64> {
    let mut figures = vec![100.0 * r.aa, 100.0 * r.bwt];
    if let Some((first, last)) = r.retention.as_ref().and_then(|p| Some((p.first()?, p.last()?))) {
        figures.extend([last.loss - first.loss, 100.0 * last.identical]);
    }
    figures
}

/// Markdown tables of several runs `(seed, results)`: one row per run, then, with several
/// seeds, the mean ± sd of each method.
pub fn runs_markdown(runs: &[(u64, Results)]) -> String {
    let mut columns = vec!["AA", "BWT"];
    if runs.iter().all(|(_, r)| r.retention.is_some()) {
        columns.extend(["retention loss rise", "identical answers (%)"]);
    }
    let table = |first: &[&str]| {
        let names: Vec<&str> = first.iter().chain(&columns).copied().collect();
        format!("| {} |\n|{}\n", names.join(" | "), "---|".repeat(names.len()))
    };
    let mut s = table(&["seed", "method"]);
    for (seed, r) in runs {
        let figures: Vec<String> = run_figures(r).iter().take(columns.len()).map(|v| format!("{v:.2}")).collect();
        s += &format!("| {seed} | {} | {} |\n", r.method, figures.join(" | "));
    }
    let seeds: std::collections::BTreeSet<u64> = runs.iter().map(|(seed, _)| *seed).collect();
    if seeds.len() > 1 {
        s += "\n";
        s += &table(&["method (mean ± sd)"]);
        let methods: std::collections::BTreeSet<&str> = runs.iter().map(|(_, r)| r.method.as_str()).collect();
        for method in methods {
            let of: Vec<Vec<f64>> =
                runs.iter().filter(|(_, r)| r.method == method).map(|(_, r)| run_figures(r)).collect();
            let figures: Vec<String> = (0..columns.len())
                .map(|i| {
                    let (mean, sd) = mean_sd(&of.iter().map(|f| f[i]).collect::<Vec<_>>());
                    format!("{mean:.2} ± {sd:.2}")
                })
                .collect();
            s += &format!("| {method} | {} |\n", figures.join(" | "));
        }
    }
    s
}

#[cfg(test)]
mod runs_tests {
    use super::*;

    #[test]
    fn runs_table_has_a_row_per_run_and_the_mean_of_each_method() {
        let run = |method: &str, last: f64| {
            let mut r = Results::new(method, vec!["a".into(), "b".into()], vec![vec![1.0, 0.0], vec![0.5, last]], None);
            r.retention = Some(vec![
                RetentionPoint { after: "base".into(), loss: 0.5, identical: 1.0 },
                RetentionPoint { after: "b".into(), loss: 0.5 + last, identical: last },
            ]);
            r
        };
        let table = runs_markdown(&[(0, run("osft", 1.0)), (1, run("osft", 0.5)), (0, run("seqft", 0.0))]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "| seed | method | AA | BWT | retention loss rise | identical answers (%) |");
        assert_eq!(lines[2], "| 0 | osft | 75.00 | -50.00 | 1.00 | 100.00 |");
        assert_eq!(lines[8], "| osft | 62.50 ± 17.68 | -50.00 ± 0.00 | 0.75 ± 0.35 | 75.00 ± 35.36 |");
        assert_eq!(lines[9], "| seqft | 25.00 ± 0.00 | -50.00 ± 0.00 | 0.00 ± 0.00 | 0.00 ± 0.00 |");
    }
}
