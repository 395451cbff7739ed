//! Charts of a [`SimReport`], written with plotters as SVG and PNG:
//!
//! - `fleet.svg` / `fleet.png`: live instances over time, one line per policy;
//! - `queue.svg` / `queue.png`: waiting jobs over time, one line per policy;
//! - `wait-vs-cost.svg` / `wait-vs-cost.png`: mean wait against paid runner-hours, one point
//!   per policy; Pareto-front policies filled, the clairvoyant bound as a cross; runscale's
//!   `--sweep` rows joined by a line through those no other row of runscale beats (its
//!   frontier); labels placed apart so they do not overlap (`labels`).
//!
//! Text is rendered with DejaVu Sans (Bitstream Vera licence), embedded from the `dejavu`
//! crate, so no system font or fontconfig is needed.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

mod labels;

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
            .legend(legend_mark(c));
    }
    draw_legend(&mut chart)
}

/// The series' labels in a box at the upper right.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())
}

/// A series' mark in the legend: a short line in its colour.
fn legend_mark(c: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3))
}

fn scatter<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &SimReport,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let x_max = report.results.iter().map(mean_wait).fold(1.0f64, f64::max) * 1.15;
    let y_max = report.results.iter().map(paid_h).fold(0.1f64, f64::max) * 1.15;
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
    let frontier = frontier(report);
    if frontier.len() > 1 {
        let c = color(0);
        let line = frontier.iter().map(|&i| point(&report.results[i]));
        chart
            .draw_series(LineSeries::new(line, c.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("runscale --sweep frontier")
            .legend(legend_mark(c));
        draw_legend(&mut chart)?;
    }
    for (i, r) in report.results.iter().enumerate() {
        draw_point(&mut chart, r, color(i))?;
    }
    let anchors: Vec<(i32, i32)> = report
        .results
        .iter()
        .map(|r| chart.backend_coord(&point(r)))
        .collect();
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let bounds = labels::Rect {
        x: xs.start,
        y: ys.start,
        w: xs.end - xs.start,
        h: ys.end - ys.start,
    };
    let line: Vec<(i32, i32)> = frontier.iter().map(|&i| anchors[i]).collect();
    draw_labels(root, report, &anchors, &[line], bounds)
}

fn mean_wait(r: &PolicyReport) -> f64 {
    r.wait.mean_s
}

fn paid_h(r: &PolicyReport) -> f64 {
    r.paid_runner_s / 3600.0
}

fn point(r: &PolicyReport) -> (f64, f64) {
    (mean_wait(r), paid_h(r))
}

/// runscale's rows of one family (its own and the `--sweep` rows) that no other row of the
/// family beats on both mean wait and paid cost, by mean wait: the line drawn through them.
fn frontier(report: &SimReport) -> Vec<usize> {
    if report.sweep_rows.is_empty() {
        return Vec::new();
    }
    let family: Vec<usize> = report
        .results
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            report.sweep_rows.contains(i) || r.policy == crate::PolicyName::Runscale.as_str()
        })
        .map(|(i, _)| i)
        .collect();
    let beats = |a: (f64, f64), b: (f64, f64)| a.0 <= b.0 && a.1 <= b.1 && a != b;
    let mut front: Vec<usize> = family
        .iter()
        .copied()
        .filter(|&i| {
            let p = point(&report.results[i]);
            !family.iter().any(|&k| beats(point(&report.results[k]), p))
        })
        .collect();
    front.sort_by(|&a, &b| mean_wait(&report.results[a]).total_cmp(&mean_wait(&report.results[b])));
    front
}

fn draw_point<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    r: &PolicyReport,
    c: RGBColor,
) -> Result<(), String> {
    let at = point(r);
    let drawn = if r.lower_bound {
        chart.draw_series(std::iter::once(Cross::new(at, 8, c.stroke_width(3))))
    } else if r.pareto {
        chart.draw_series(std::iter::once(Circle::new(at, 7, c.filled())))
    } else {
        chart.draw_series(std::iter::once(Circle::new(at, 7, c.stroke_width(2))))
    };
    drawn.map(|_| ()).map_err(|e| e.to_string())
}

/// Each policy's name beside its point, placed so no two labels overlap and none covers a
/// point or the frontier line ([`labels::place`]).
fn draw_labels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &SimReport,
    anchors: &[(i32, i32)],
    lines: &[Vec<(i32, i32)>],
    bounds: labels::Rect,
) -> Result<(), String> {
    let texts: Vec<String> = report
        .results
        .iter()
        .map(|r| {
            if r.pareto {
                format!("{} (Pareto)", r.policy)
            } else {
                r.policy.clone()
            }
        })
        .collect();
    let font = (FONT, 14).into_font();
    let sizes: Vec<(i32, i32)> = texts
        .iter()
        .map(|t| {
            let (w, h) = root
                .estimate_text_size(t, &TextStyle::from(font.clone()))
                .unwrap_or((0, 14));
            (
                i32::try_from(w).unwrap_or(i32::MAX / 4),
                i32::try_from(h).unwrap_or(14),
            )
        })
        .collect();
    let rects = labels::place(anchors, &sizes, lines, bounds);
    for (i, (text, rect)) in texts.into_iter().zip(rects).enumerate() {
        root.draw(&Text::new(text, (rect.x, rect.y), font.color(&color(i))))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GeneratorKind, SimulateArgs, SweepArg, TraceSource};

    #[test]
    fn the_frontier_is_runscale_rows_no_other_beats_ordered_by_wait() {
        let args = SimulateArgs {
            trace: TraceSource::Generate {
                kind: GeneratorKind::Burst,
                seed: 4,
            },
            policies: "runscale,arc".parse().expect("policies"),
            sweep: Some(SweepArg::parse("warm=off,0s@0.95,10s@0.6,30s@0.6", None).expect("sweep")),
            ..SimulateArgs::default()
        };
        let report = crate::run(&args).expect("runs");
        let front = frontier(&report);
        assert!(front.len() >= 2, "{front:?}");
        assert!(!front.contains(&1), "arc is not runscale");
        let waits: Vec<f64> = front
            .iter()
            .map(|&i| mean_wait(&report.results[i]))
            .collect();
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        // Along the line, a shorter wait costs more.
        let costs: Vec<f64> = front.iter().map(|&i| paid_h(&report.results[i])).collect();
        assert!(costs.windows(2).all(|w| w[0] >= w[1]), "{costs:?}");
        let mut no_sweep = report.clone();
        no_sweep.sweep_rows.clear();
        assert!(frontier(&no_sweep).is_empty(), "no line without --sweep");
    }
}
