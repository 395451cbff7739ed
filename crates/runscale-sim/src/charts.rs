//! Charts of a [`SimReport`], written with plotters as SVG and PNG:
//!
//! - `fleet.svg` / `fleet.png`: live instances over time, one line per policy;
//! - `queue.svg` / `queue.png`: waiting jobs over time, one line per policy;
//! - `wait-vs-cost.svg` / `wait-vs-cost.png`: mean wait against paid runner-hours, one point
//!   per policy; Pareto-front policies filled, the clairvoyant bound as a cross.
//!
//! Text is rendered with DejaVu Sans (Bitstream Vera licence), embedded from the `dejavu`
//! crate, so no system font or fontconfig is needed.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::SimError;
use crate::report::{PolicyReport, SeriesPoint, SimReport};

const SIZE: (u32, u32) = (1280, 720);
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registration only fails for an invalid font file; the embedded one is valid.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 12] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
        RGBColor(0, 0, 0),
        RGBColor(255, 187, 120),
    ];
    COLORS[i % COLORS.len()]
}

#[derive(Clone, Copy)]
enum Chart {
    Timeline(&'static str, fn(&SeriesPoint) -> u32),
    Scatter,
}

fn render<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &SimReport,
    chart: Chart,
) -> Result<(), String> {
    match chart {
        Chart::Timeline(title, pick) => timeline(root, report, title, pick),
        Chart::Scatter => scatter(root, report),
    }
}

/// Writes every chart into `dir` (created if missing). Returns the files written.
pub fn write(report: &SimReport, dir: &Path) -> Result<Vec<PathBuf>, SimError> {
    register_font();
    std::fs::create_dir_all(dir).map_err(|source| SimError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let charts = [
        ("fleet", Chart::Timeline("Live instances", |p| p.fleet)),
        ("queue", Chart::Timeline("Waiting jobs", |p| p.queue)),
        ("wait-vs-cost", Chart::Scatter),
    ];
    let mut written = Vec::new();
    for (stem, chart) in charts {
        let svg = dir.join(format!("{stem}.svg"));
        let err = |path: &Path, message: String| SimError::Chart {
            path: path.to_path_buf(),
            message,
        };
        {
            let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
            render(&root, report, chart).map_err(|m| err(&svg, m))?;
            root.present().map_err(|e| err(&svg, e.to_string()))?;
        }
        let png = dir.join(format!("{stem}.png"));
        {
            let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
            render(&root, report, chart).map_err(|m| err(&png, m))?;
            root.present().map_err(|e| err(&png, e.to_string()))?;
        }
        written.extend([svg, png]);
    }
    Ok(written)
}

fn timeline<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &SimReport,
    title: &str,
    pick: fn(&SeriesPoint) -> u32,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let x_max = report
        .results
        .iter()
        .flat_map(|r| r.series.points.last())
        .map(|p| p.t_s / 3600.0)
        .fold(1.0f64, f64::max);
    let y_max = report
        .results
        .iter()
        .flat_map(|r| r.series.points.iter().map(pick))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("{title} over time — {}", report.trace.source),
            (FONT, 24),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0u32..(y_max + y_max / 10 + 1))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("hours since the first job")
        .y_desc(title)
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, r) in report.results.iter().enumerate() {
        let c = color(i);
        let pts = r.series.points.iter().map(|p| (p.t_s / 3600.0, pick(p)));
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(r.policy.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())
}

fn scatter<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &SimReport,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let x = |r: &PolicyReport| r.wait.mean_s;
    let y = |r: &PolicyReport| r.paid_runner_s / 3600.0;
    let x_max = report.results.iter().map(x).fold(1.0f64, f64::max) * 1.15;
    let y_max = report.results.iter().map(y).fold(0.1f64, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("Mean wait vs paid runner-hours — {}", report.trace.source),
            (FONT, 24),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("mean wait (s)")
        .y_desc("paid runner-hours")
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, r) in report.results.iter().enumerate() {
        let c = color(i);
        let at = (x(r), y(r));
        let label = if r.pareto {
            format!("{} (Pareto)", r.policy)
        } else {
            r.policy.clone()
        };
        if r.lower_bound {
            chart
                .draw_series(std::iter::once(Cross::new(at, 8, c.stroke_width(3))))
                .map_err(|e| e.to_string())?;
        } else {
            let style = if r.pareto {
                c.filled()
            } else {
                c.stroke_width(2)
            };
            chart
                .draw_series(std::iter::once(Circle::new(at, 7, style)))
                .map_err(|e| e.to_string())?;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (at.0 + x_max * 0.01, at.1 + y_max * 0.012),
                (FONT, 14).into_font().color(&c),
            )))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
