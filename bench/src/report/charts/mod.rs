//! SVG charts (plotters, SVG backend only: text is emitted as `<text>` and rendered by
//! the viewer, so no font library is needed to build): time ratio to the baseline per
//! workload, throughput against thread count, and peak RSS per workload. This module
//! turns [`Results`] into chart data; `bars` and `lines` draw.

mod bars;
mod lines;

use std::error::Error;
use std::path::{Path, PathBuf};

use plotters::style::{RGBColor, BLACK};

use super::Results;
use crate::allocators::BASELINE;
use bars::{BarChart, BarGroup, Scale};

type ChartResult = Result<(), Box<dyn Error>>;

/// A fixed colour per allocator (matplotlib's "tab10" hues), so every chart reads the
/// same way.
fn colour(allocator: &str) -> RGBColor {
    match allocator {
        "rangealloc" => RGBColor(214, 39, 40),
        "rangealloc-c" => RGBColor(255, 127, 14),
        "jemalloc" => RGBColor(31, 119, 180),
        "mimalloc" => RGBColor(44, 160, 44),
        "system" => RGBColor(127, 127, 127),
        _ => BLACK,
    }
}

/// Writes every chart into `dir`; returns the files written.
pub fn write_all(results: &Results, dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let ratio = dir.join("ratio.svg");
    let throughput = dir.join("throughput.svg");
    let rss = dir.join("rss.svg");
    bars::draw(&ratio_chart(results), &ratio)?;
    lines::draw_throughput(results, &throughput)?;
    bars::draw(&rss_chart(results), &rss)?;
    Ok(vec![ratio, throughput, rss])
}

/// Median time over the baseline's, one group per workload × threads, then the
/// geometric mean.
fn ratio_chart(results: &Results) -> BarChart {
    let allocators = &results.meta.allocators;
    let mut groups: Vec<BarGroup> = results
        .rows()
        .into_iter()
        .map(|(w, t)| BarGroup {
            label: format!("{w} / {t} thr"),
            values: allocators
                .iter()
                .map(|a| results.cell(&w, t, a).and_then(|c| results.ratio(c)))
                .collect(),
        })
        .collect();
    groups.push(BarGroup {
        label: "geometric mean".into(),
        values: allocators
            .iter()
            .map(|a| results.geomean_ratio(a).map(|(g, _)| g))
            .collect(),
    });
    BarChart {
        title: format!("Median wall time relative to {BASELINE} (lower is faster)"),
        x_desc: format!("time / {BASELINE} time"),
        scale: Scale::Linear { reference: 1.0 },
        series: allocators.clone(),
        groups,
    }
}

/// Peak RSS per workload × threads, on a log axis (region's 64 MiB buffers dwarf the
/// small-object workloads).
fn rss_chart(results: &Results) -> BarChart {
    let allocators = &results.meta.allocators;
    let groups = results
        .rows()
        .into_iter()
        .map(|(w, t)| BarGroup {
            label: format!("{w} / {t} thr"),
            values: allocators
                .iter()
                .map(|a| {
                    results
                        .cell(&w, t, a)
                        .and_then(|c| c.summary())
                        .map(|s| s.peak_rss_mib)
                })
                .collect(),
        })
        .collect();
    BarChart {
        title: "Peak RSS (VmHWM, worst of the repetitions)".into(),
        x_desc: "MiB (log scale)".into(),
        scale: Scale::Log,
        series: allocators.clone(),
        groups,
    }
}
