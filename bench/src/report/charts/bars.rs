//! Horizontal grouped bar charts: one group (row) per category, one bar per series.

use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{colour, ChartResult};

/// Chart width in pixels: room for the category labels, bars and legend.
const WIDTH: u32 = 1100;
/// Height of one category row: four bars at a readable thickness.
const ROW_HEIGHT: u32 = 44;
/// Room above and below the bars: caption and x axis.
const FRAME_HEIGHT: u32 = 140;
/// Left label area, wide enough for "realloc-growth / 8 thr".
const LABEL_WIDTH: u32 = 170;
/// Share of a row its bars fill (the rest separates rows).
const GROUP_FILL: f64 = 0.8;
/// Headroom past the largest value, so the longest bar does not touch the frame.
const HEADROOM: f64 = 1.15;
/// Log axes start here: a tenth of a MiB, below any process's footprint.
const LOG_FLOOR: f64 = 0.1;
const CAPTION_FONT: (&str, u32) = ("sans-serif", 20);

pub enum Scale {
    /// Linear from 0, with a vertical line at `reference` (1.0 for ratios).
    Linear {
        reference: f64,
    },
    Log,
}

pub struct BarGroup {
    pub label: String,
    /// One value per series; `None` leaves a gap.
    pub values: Vec<Option<f64>>,
}

pub struct BarChart {
    pub title: String,
    pub x_desc: String,
    pub scale: Scale,
    pub series: Vec<String>,
    pub groups: Vec<BarGroup>,
}

pub fn draw(chart: &BarChart, path: &Path) -> ChartResult {
    let n = chart.groups.len();
    let root =
        SVGBackend::new(path, (WIDTH, FRAME_HEIGHT + ROW_HEIGHT * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = chart
        .groups
        .iter()
        .flat_map(|g| g.values.iter().flatten())
        .fold(0.0, |m: f64, &v| m.max(v));
    match chart.scale {
        Scale::Linear { reference } => {
            let top = (max.max(reference) * HEADROOM).max(f64::MIN_POSITIVE);
            render(&root, chart, 0.0..top, 0.0, Some(reference))?
        }
        // Twice the headroom on a log axis, where it otherwise looks cramped.
        Scale::Log => render(
            &root,
            chart,
            (LOG_FLOOR..(max * HEADROOM * HEADROOM).max(1.0)).log_scale(),
            LOG_FLOOR,
            None,
        )?,
    }
    root.present()?;
    Ok(())
}

/// Draws on any f64 x axis (linear or log); bars start at `floor`.
fn render<X>(
    root: &DrawingArea<SVGBackend, Shift>,
    chart: &BarChart,
    x: X,
    floor: f64,
    reference: Option<f64>,
) -> ChartResult
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let n = chart.groups.len();
    // Group i is drawn at y = n-1-i so the first group is at the top.
    let label = |y: &f64| -> String {
        let i = y.round();
        if (y - i).abs() > f64::EPSILON || i < 0.0 || i as usize >= n {
            return String::new();
        }
        chart.groups[n - 1 - i as usize].label.clone()
    };
    let mut ctx = ChartBuilder::on(root)
        .caption(&chart.title, CAPTION_FONT)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(LABEL_WIDTH)
        .build_cartesian_2d(x, -0.5..(n as f64 - 0.5))?;
    ctx.configure_mesh()
        .disable_y_mesh()
        .y_labels(n + 1)
        .y_label_formatter(&label)
        .x_desc(&chart.x_desc)
        .draw()?;
    if let Some(r) = reference {
        ctx.draw_series(LineSeries::new(
            [(r, -0.5), (r, n as f64 - 0.5)],
            BLACK.stroke_width(1),
        ))?;
    }
    let bar = GROUP_FILL / chart.series.len().max(1) as f64;
    for (k, name) in chart.series.iter().enumerate() {
        let c = colour(name);
        let rects = chart.groups.iter().enumerate().filter_map(|(i, g)| {
            let v = (*g.values.get(k)?)?;
            let top = (n - 1 - i) as f64 + GROUP_FILL / 2.0 - k as f64 * bar;
            Some(Rectangle::new(
                [(floor, top), (v.max(floor), top - bar)],
                c.filled(),
            ))
        });
        ctx.draw_series(rects)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
    }
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    Ok(())
}
