//! The throughput grid: one small line chart per workload, throughput against thread
//! count, one line per allocator, and the legend in the first free grid cell.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{colour, ChartResult};
use crate::report::Results;
use crate::workloads;

/// Panels per row.
const GRID_COLUMNS: usize = 4;
/// One panel's size in pixels.
const PANEL: (u32, u32) = (300, 240);
const CAPTION_FONT: (&str, u32) = ("sans-serif", 20);
const PANEL_FONT: (&str, u32) = ("sans-serif", 14);
const SMALL_FONT: (&str, u32) = ("sans-serif", 11);
/// Headroom above the highest point.
const HEADROOM: f64 = 1.15;
/// Margin left of the first and right of the last thread count, in index units.
const X_PAD: f64 = 0.3;

pub fn draw_throughput(results: &Results, path: &Path) -> ChartResult {
    let mut names: Vec<String> = Vec::new();
    for (w, _) in results.rows() {
        if !names.contains(&w) {
            names.push(w);
        }
    }
    let grid_rows = (names.len() + 1).div_ceil(GRID_COLUMNS);
    let size = (
        PANEL.0 * GRID_COLUMNS as u32,
        PANEL.1 * grid_rows as u32 + CAPTION_FONT.1 * 2,
    );
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "Throughput vs threads (operations per second, higher is better)",
        CAPTION_FONT,
    )?;
    let panels = root.split_evenly((grid_rows, GRID_COLUMNS));
    for (panel, name) in panels.iter().zip(&names) {
        panel_chart(results, panel, name)?;
    }
    legend(&panels[names.len()], &results.meta.allocators)?;
    root.present()?;
    Ok(())
}

fn panel_chart(
    results: &Results,
    panel: &DrawingArea<SVGBackend, Shift>,
    workload: &str,
) -> ChartResult {
    let threads = &results.meta.threads;
    let point = |a: &str, t: usize| {
        results
            .cell(workload, t, a)
            .and_then(|c| c.summary())
            .map(|s| s.throughput)
    };
    let max = results
        .meta
        .allocators
        .iter()
        .flat_map(|a| threads.iter().filter_map(move |&t| point(a, t)))
        .fold(0.0, f64::max);
    let unit = workloads::by_name(workload).map_or("ops", |w| w.unit);
    let x_max = threads.len().saturating_sub(1) as f64;
    let mut ctx = ChartBuilder::on(panel)
        .caption(format!("{workload} ({unit}/s)"), PANEL_FONT)
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(
            -X_PAD..x_max + X_PAD,
            0.0..(max * HEADROOM).max(f64::MIN_POSITIVE),
        )?;
    let thread_label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() > f64::EPSILON || i < 0.0 {
            return String::new();
        }
        threads
            .get(i as usize)
            .map_or(String::new(), |t| t.to_string())
    };
    ctx.configure_mesh()
        .x_labels(threads.len() + 1)
        .x_label_formatter(&thread_label)
        .y_label_formatter(&|y| si(*y))
        .max_light_lines(1)
        .x_desc("threads")
        .label_style(SMALL_FONT)
        .draw()?;
    for a in &results.meta.allocators {
        let c = colour(a);
        let pts: Vec<(f64, f64)> = threads
            .iter()
            .enumerate()
            .filter_map(|(i, &t)| Some((i as f64, point(a, t)?)))
            .collect();
        ctx.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
        ctx.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    }
    Ok(())
}

/// The allocators' colours, drawn in a free grid cell so no panel is covered.
fn legend(area: &DrawingArea<SVGBackend, Shift>, allocators: &[String]) -> ChartResult {
    // Layout of the legend cell, in pixels.
    const LEFT: i32 = 40;
    const TOP: i32 = 40;
    const LINE: i32 = 26;
    const SWATCH: i32 = 24;
    for (i, a) in allocators.iter().enumerate() {
        let y = TOP + LINE * i as i32;
        area.draw(&PathElement::new(
            [(LEFT, y), (LEFT + SWATCH, y)],
            colour(a).stroke_width(3),
        ))?;
        area.draw(&Text::new(
            a.clone(),
            (LEFT + SWATCH + 8, y - 7),
            PANEL_FONT,
        ))?;
    }
    Ok(())
}

/// A compact SI rendering for axis labels: 950, 12k, 3.4M, 1.2G.
fn si(v: f64) -> String {
    const STEPS: [(f64, &str); 3] = [(1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, suffix) in STEPS {
        if v.abs() >= scale {
            return format!("{}{suffix}", trim(v / scale));
        }
    }
    trim(v)
}

/// One decimal, without a trailing ".0".
fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map_or(s.clone(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::si;

    #[test]
    fn si_labels() {
        assert_eq!(si(950.0), "950");
        assert_eq!(si(12_000.0), "12k");
        assert_eq!(si(3_450_000.0), "3.5M");
        assert_eq!(si(0.5), "0.5");
    }
}
