//! Small SVG line plots (plotters' SVG backend: no system fonts or libraries needed).

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

/// One named line of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// matplotlib's tab10, so that the eight difficulties of the main job's plot stay apart.
const COLORS: [RGBColor; 10] = [
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
];

/// Writes a line plot of `series` to `path` (SVG), atomically. `log_x` plots x on a log2 axis
/// (for recurrences 1, 2, 4, ...).
pub fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
) -> Result<()> {
    let Some(axes) = Axes::fit(series, log_x) else {
        anyhow::bail!("{}: nothing to plot", path.display());
    };
    let mut svg = String::new();
    draw(&mut svg, [title, x_label, y_label], series, &axes)?;
    rr_util::fs::write_atomic(path, svg.as_bytes())
}

/// The plotted ranges: x (log2 when `log_x`) and y, padded by 5 % of the y span.
struct Axes {
    log_x: bool,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
}

impl Axes {
    /// Ranges that hold every finite point; `None` when there is none.
    fn fit(series: &[Series], log_x: bool) -> Option<Self> {
        let finite: Vec<(f64, f64)> = series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if finite.is_empty() {
            return None;
        }
        let mut axes = Self {
            log_x,
            x: f64::MAX..f64::MIN,
            y: f64::MAX..f64::MIN,
        };
        for &(x, y) in &finite {
            let x = axes.tx(x);
            axes.x = axes.x.start.min(x)..axes.x.end.max(x);
            axes.y = axes.y.start.min(y)..axes.y.end.max(y);
        }
        if axes.x.end <= axes.x.start {
            axes.x.end = axes.x.start + 1.0;
        }
        let pad = ((axes.y.end - axes.y.start) * 0.05).max(1e-6);
        axes.y = axes.y.start - pad..axes.y.end + pad;
        Some(axes)
    }

    /// x as plotted.
    fn tx(&self, x: f64) -> f64 {
        if self.log_x {
            x.max(1e-12).log2()
        } else {
            x
        }
    }

    /// The label of the x tick at plotted position `x`: on a log2 axis only the powers of two
    /// (the recurrences we test), else plain or, from 1e5, scientific.
    fn x_tick(&self, x: f64) -> String {
        if self.log_x {
            if (x - x.round()).abs() < 1e-9 {
                format!("{}", 2f64.powf(x.round()))
            } else {
                String::new()
            }
        } else if x.abs() >= 1e5 {
            format!("{x:.1e}")
        } else {
            format!("{x:.0}")
        }
    }

    fn x_ticks(&self) -> usize {
        if self.log_x {
            ((self.x.end - self.x.start).round() as usize + 1).max(2)
        } else {
            8
        }
    }
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Draws the chart into `svg`: `[title, x label, y label]`, one coloured line per series
/// (with dots when it has at most 64 points) and a legend.
fn draw(
    svg: &mut String,
    [title, x_label, y_label]: [&str; 3],
    series: &[Series],
    axes: &Axes,
) -> Result<()> {
    let root = SVGBackend::with_string(svg, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(axes.x.clone(), axes.y.clone())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| axes.x_tick(*x))
        .x_labels(axes.x_ticks())
        .draw()
        .map_err(plot_error)?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| (axes.tx(x), y))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        if pts.len() <= 64 {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(plot_error)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)
}
