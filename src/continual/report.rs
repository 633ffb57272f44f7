//! Results of a stream: `results.json`, a markdown table and a PNG heatmap of the
//! accuracy matrix.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::metrics::{metrics, Metrics};
use crate::io::write_atomic;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub method: String,
    pub tasks: Vec<String>,
    /// accuracy[i][j]: accuracy on task j after training task i.
    pub accuracy: Vec<Vec<f64>>,
    /// Accuracies before any training, when measured.
    pub before: Option<Vec<f64>>,
    pub aa: f64,
    pub bwt: f64,
    pub fwt: Option<f64>,
    pub forgetting: Vec<f64>,
}

impl Results {
    pub fn new(method: &str, tasks: Vec<String>, accuracy: Vec<Vec<f64>>, before: Option<Vec<f64>>) -> Results {
        let Metrics { aa, bwt, fwt, forgetting } = metrics(&accuracy, before.as_deref());
        Results { method: method.to_string(), tasks, accuracy, before, aa, bwt, fwt, forgetting }
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
        s + "\n"
    }

    /// Writes results.json, results.md and accuracy.png into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_atomic(&dir.join("results.json"), serde_json::to_string_pretty(self)?.as_bytes())?;
        write_atomic(&dir.join("results.md"), self.markdown().as_bytes())?;
        write_atomic(&dir.join("accuracy.png"), &heatmap_png(&self.accuracy)?)
    }
}

/// Colour of an accuracy in [0, 1]: dark blue through teal to yellow.
fn colour(v: f64) -> [u8; 3] {
    let stops = [[68.0, 1.0, 84.0], [33.0, 145.0, 140.0], [253.0, 231.0, 37.0]];
    let x = v.clamp(0.0, 1.0) * 2.0;
    let (i, t) = if x >= 2.0 { (1, 1.0) } else { (x.floor() as usize, x.fract()) };
    std::array::from_fn(|c| (stops[i][c] + t * (stops[i + 1][c] - stops[i][c])).round() as u8)
}

/// A heatmap of the matrix, one 32-pixel square per cell.
pub fn heatmap_png(matrix: &[Vec<f64>]) -> Result<Vec<u8>> {
    const CELL: usize = 32;
    let rows = matrix.len().max(1);
    let cols = matrix.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let (w, h) = (cols * CELL, rows * CELL);
    let mut pixels = vec![255u8; w * h * 3];
    for (i, row) in matrix.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let c = colour(v);
            for y in i * CELL + 1..(i + 1) * CELL - 1 {
                for x in j * CELL + 1..(j + 1) * CELL - 1 {
                    pixels[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w as u32, h as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (64, 64));
    }

    #[test]
    fn colours_run_from_dark_to_bright() {
        assert_eq!(colour(0.0), [68, 1, 84]);
        assert_eq!(colour(1.0), [253, 231, 37]);
        let mid = colour(0.5);
        assert_eq!(mid, [33, 145, 140]);
    }
}
