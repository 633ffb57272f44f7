//! PNG charts drawn with plotters into a pixel buffer and encoded with png: an accuracy
//! heatmap, line charts of named series, singular spectra. Text uses a font embedded in the
//! binary (epaint_default_fonts' Hack), so nothing depends on the machine's fonts. A ground
//! floor utility: it knows numbers and names, nothing of the rest of the crate.

use std::sync::Once;

use anyhow::{bail, ensure, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

/// The font family every chart's text uses.
const FONT: &str = "sans-serif";
/// Pixels of one heatmap cell at least (wider for long column names).
const CELL: u32 = 64;
/// Width and height of one line-chart panel.
pub const LINE_CHART_SIZE: (u32, u32) = (900, 420);

/// Registers the embedded font with plotters (once per process).
fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        if plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::HACK_REGULAR).is_err() {
            panic!("the embedded chart font parses");
        }
    });
}

/// Draws into an RGB buffer of `size` with `draw` and encodes it as PNG.
fn render(
    size: (u32, u32),
    draw: impl FnOnce(DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>,
) -> Result<Vec<u8>> {
    register_font();
    let mut pixels = vec![255u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(root.clone())?;
        root.present()?;
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, size.0, size.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(out)
}

/// Colour of a value in [0, 1]: dark blue through teal to yellow (viridis' ends and middle).
fn colour(v: f64) -> RGBColor {
    let stops = [[68.0, 1.0, 84.0], [33.0, 145.0, 140.0], [253.0, 231.0, 37.0]];
    let x = v.clamp(0.0, 1.0) * 2.0;
    let (i, t) = if x >= 2.0 { (1, 1.0) } else { (x.floor() as usize, x.fract()) };
    let [r, g, b]: [u8; 3] = std::array::from_fn(|c| (stops[i][c] + t * (stops[i + 1][c] - stops[i][c])).round() as u8);
    RGBColor(r, g, b)
}

/// Pixels a label of `names` needs beside an axis.
fn label_width(names: &[String]) -> u32 {
    20 + 9 * names.iter().map(|n| n.chars().count()).max().unwrap_or(0) as u32
}

/// A heatmap of `values[row][col]` in [0, 1], each cell coloured and labelled with its value
/// in percent; `rows` names the rows (top to bottom), `cols` the columns. A row shorter than
/// `cols` leaves its last cells blank. Its size is [`heatmap_size`].
pub fn heatmap_png(
    title: &str,
    x_label: &str,
    y_label: &str,
    cols: &[String],
    rows: &[String],
    values: &[Vec<f64>],
) -> Result<Vec<u8>> {
    ensure!(!rows.is_empty() && !cols.is_empty(), "a heatmap needs at least one row and one column");
    ensure!(values.len() == rows.len(), "{} rows of values for {} row names", values.len(), rows.len());
    if let Some(row) = values.iter().find(|row| row.len() > cols.len()) {
        bail!("a row of {} values for {} column names", row.len(), cols.len());
    }
    let (n_rows, n_cols) = (rows.len() as f64, cols.len() as f64);
    render(heatmap_size(cols, rows), |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 22))
            .margin(10)
            .x_label_area_size(50)
            .y_label_area_size(label_width(rows) + 20)
            .build_cartesian_2d(0.0..n_cols, 0.0..n_rows)?;
        // The names are drawn below at the cells' centres; the mesh gives the axis titles.
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(0)
            .x_desc(x_label)
            .y_desc(y_label)
            .axis_desc_style((FONT, 16))
            .draw()?;
        // Row 0 is drawn at the top.
        let top = |i: usize| n_rows - i as f64;
        let centred = |ink: &RGBColor| (FONT, 15).into_font().color(ink).pos(Pos::new(HPos::Center, VPos::Center));
        for (i, row) in values.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let (x, y) = (j as f64, top(i));
                chart.draw_series(std::iter::once(Rectangle::new([(x, y), (x + 1.0, y - 1.0)], colour(v).filled())))?;
                // Dark text on the bright end of the scale, white on the dark end.
                let ink = if v > 0.6 { BLACK } else { WHITE };
                let value = format!("{:.1}", 100.0 * v);
                chart.draw_series(std::iter::once(Text::new(value, (x + 0.5, y - 0.5), centred(&ink))))?;
            }
        }
        for (j, name) in cols.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(j as f64 + 0.5, 0.0));
            root.draw(&Text::new(name.as_str(), (x, y + 14), centred(&BLACK)))?;
        }
        let right = (FONT, 15).into_font().color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center));
        for (i, name) in rows.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(0.0, top(i) - 0.5));
            root.draw(&Text::new(name.as_str(), (x - 8, y), right.clone()))?;
        }
        Ok(())
    })
}

/// The pixel size of [`heatmap_png`]'s image for these column and row names.
pub fn heatmap_size(cols: &[String], rows: &[String]) -> (u32, u32) {
    let cell_width = CELL.max(label_width(cols));
    // At least wide enough for the title and the axis titles.
    ((label_width(rows) + 60 + cell_width * cols.len() as u32).max(320), 110 + CELL * rows.len() as u32)
}

/// One panel of a line chart: named series of values over the labelled x points (a series
/// holds one value per point; NaN leaves a gap).
pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub x_ticks: &'a [String],
    pub series: &'a [(String, Vec<f64>)],
}

/// A line chart of `series` over the points `x_ticks`, with a legend; [`LINE_CHART_SIZE`] pixels.
pub fn line_chart_png(
    title: &str,
    x_label: &str,
    y_label: &str,
    x_ticks: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<Vec<u8>> {
    line_charts_png(&[LineChart { title, x_label, y_label, x_ticks, series }])
}

/// Line charts stacked top to bottom, one [`LINE_CHART_SIZE`] each.
pub fn line_charts_png(panels: &[LineChart]) -> Result<Vec<u8>> {
    ensure!(!panels.is_empty(), "no chart to draw");
    for panel in panels {
        ensure!(!panel.x_ticks.is_empty(), "{}: no x points", panel.title);
        if let Some((name, values)) = panel.series.iter().find(|(_, v)| v.len() != panel.x_ticks.len()) {
            bail!("{}: series {name} has {} values for {} x points", panel.title, values.len(), panel.x_ticks.len());
        }
    }
    render((LINE_CHART_SIZE.0, LINE_CHART_SIZE.1 * panels.len() as u32), |root| {
        for (panel, area) in panels.iter().zip(root.split_evenly((panels.len(), 1))) {
            draw_line_chart(&area, panel)?;
        }
        Ok(())
    })
}

/// The y range that holds every finite value of `series`, padded by a twentieth.
fn value_range(series: &[(String, Vec<f64>)]) -> (f64, f64) {
    let finite = series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) / 20.0).max(1e-9 * hi.abs().max(1.0));
    (lo - pad, hi + pad)
}

fn draw_line_chart(area: &DrawingArea<BitMapBackend, plotters::coord::Shift>, panel: &LineChart) -> Result<()> {
    let last = (panel.x_ticks.len() - 1).max(1) as f64;
    let (lo, hi) = value_range(panel.series);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..last, lo..hi)?;
    chart
        .configure_mesh()
        .x_labels(10.min(panel.x_ticks.len()))
        .x_label_formatter(&|x| {
            let i = x.round();
            let on_a_point = (x - i).abs() < 1e-6 && i >= 0.0;
            on_a_point.then(|| panel.x_ticks.get(i as usize).cloned()).flatten().unwrap_or_default()
        })
        .y_label_formatter(&|y| format!("{y:.3}"))
        .x_desc(panel.x_label)
        .y_desc(panel.y_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    for (n, (name, values)) in panel.series.iter().enumerate() {
        let colour = Palette99::pick(n).to_rgba();
        // One line per run of finite values, so that NaN leaves a gap.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for (i, &v) in values.iter().enumerate() {
            match (v.is_finite(), runs.last_mut()) {
                (true, Some(run)) => run.push((i as f64, v)),
                (false, Some(run)) if !run.is_empty() => runs.push(Vec::new()),
                _ => {}
            }
        }
        for (k, run) in runs.into_iter().filter(|r| !r.is_empty()).enumerate() {
            let drawn = chart.draw_series(LineSeries::new(run, colour.stroke_width(2)))?;
            if k == 0 {
                drawn.label(name).legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
            }
        }
    }
    if !panel.series.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    Ok(())
}

/// Normalised singular spectra: σ_k / σ_1 (log scale, down to 1e-6) against k / r, one grey
/// line per matrix (descending singular values; an all-zero spectrum is left out).
pub fn spectra_png(title: &str, spectra: &[&[f32]]) -> Result<Vec<u8>> {
    render((800, 480), |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..1.0f64, (1e-6..1.0f64).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("k / r (r = min(m, n))")
            .y_desc("σ_k / σ_1")
            .y_label_formatter(&|y| format!("{y:.0e}"))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()?;
        for s in spectra.iter().filter(|s| s.first().is_some_and(|&top| top > 0.0)) {
            let r = s.len() as f64;
            let points = s.iter().enumerate().map(|(k, &v)| (k as f64 / r, (v / s[0]).max(1e-6) as f64));
            chart.draw_series(LineSeries::new(points, RGBColor(90, 90, 90).mix(0.6)))?;
        }
        Ok(())
    })
}

#[cfg(test)]
pub(crate) mod testing {
    /// (width, height) of a PNG, which must decode whole.
    pub fn decoded_size(png: &[u8]) -> (u32, u32) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut pixels).unwrap();
        (reader.info().width, reader.info().height)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::decoded_size;
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn colours_run_from_dark_to_bright() {
        assert_eq!(colour(0.0), RGBColor(68, 1, 84));
        assert_eq!(colour(0.5), RGBColor(33, 145, 140));
        assert_eq!(colour(1.0), RGBColor(253, 231, 37));
    }

    #[test]
    fn a_heatmap_decodes_at_its_size_and_refuses_mismatched_names() {
        let tasks = names(&["copy", "reverse", "sort"]);
        let values = vec![vec![1.0], vec![0.75, 0.5], vec![0.25, 0.5, 0.125]];
        let png = heatmap_png("accuracy (%)", "evaluated on", "after training", &tasks, &tasks, &values).unwrap();
        assert_eq!(decoded_size(&png), heatmap_size(&tasks, &tasks));
        let err = heatmap_png("t", "x", "y", &tasks, &tasks[..2], &values).unwrap_err();
        assert!(err.to_string().contains("3 rows of values for 2 row names"), "{err}");
    }

    #[test]
    fn line_charts_decode_at_their_size_with_gaps_and_empty_series() {
        let ticks: Vec<String> = (1..=30).map(|s| s.to_string()).collect();
        let first: Vec<f64> = (0..30).map(|s| if s < 15 { 3.0 - 0.1 * s as f64 } else { f64::NAN }).collect();
        let second: Vec<f64> = (0..30).map(|s| if s >= 15 { 2.0 - 0.05 * s as f64 } else { f64::NAN }).collect();
        let series = vec![("copy".to_string(), first), ("sort".to_string(), second)];
        let png = line_chart_png("loss", "step", "loss", &ticks, &series).unwrap();
        assert_eq!(decoded_size(&png), LINE_CHART_SIZE);

        let nothing = vec![("none".to_string(), vec![f64::NAN; 30])];
        let panels = [
            LineChart { title: "a", x_label: "step", y_label: "loss", x_ticks: &ticks, series: &series },
            LineChart { title: "b", x_label: "step", y_label: "loss", x_ticks: &ticks, series: &nothing },
        ];
        assert_eq!(decoded_size(&line_charts_png(&panels).unwrap()), (LINE_CHART_SIZE.0, 2 * LINE_CHART_SIZE.1));
        let err = line_chart_png("loss", "step", "loss", &ticks[..3], &series).unwrap_err();
        assert!(err.to_string().contains("series copy has 30 values for 3 x points"), "{err}");
    }

    #[test]
    fn spectra_decode_at_their_size() {
        let spectra: [&[f32]; 3] = [&[4.0, 2.0, 1.0, 1e-3], &[0.0, 0.0], &[1.0; 64]];
        assert_eq!(decoded_size(&spectra_png("spectra", &spectra).unwrap()), (800, 480));
    }
}
