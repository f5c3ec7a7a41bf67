//! The latency-by-percentile plot: x is `1/(1-p)` on a log axis (so 90 %, 99 %, 99.9 % sit
//! evenly spaced, as in HdrHistogram's plotter), y is latency in milliseconds.

use std::path::Path;

use plotters::prelude::*;

use crate::stats::Latency;

/// Draws the distribution of `h` into an SVG file at `path`.
pub fn write_svg(h: &Latency, title: &str, path: &Path) -> Result<(), String> {
    let points = curve(h);
    let x_max = points.last().map_or(10.0, |p| p.0).max(10.0);
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(0.001) * 1.1;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// `(1/(1-p), latency ms)` for each step of the distribution; the 100 % point (where
/// `1/(1-p)` is infinite) is drawn one decade past the last finite one, so the axis ends
/// where the data does.
fn curve(h: &Latency) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<(f64, f64)> = Vec::new();
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let ms = v.value_iterated_to() as f64 / 1000.0;
        let x = if q < 1.0 {
            1.0 / (1.0 - q)
        } else {
            points.last().map_or(10.0, |p| p.0 * 10.0)
        };
        points.push((x, ms));
    }
    points
}

/// `10` → `90%`, `1000` → `99.9%`.
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    let text = format!("{p:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_latency;

    #[test]
    fn labels_and_an_svg_with_a_line() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        let mut h = new_latency();
        for v in 1..=10_000 {
            h.record(v).unwrap();
        }
        let path = std::env::temp_dir().join(format!("loadtest-plot-{}.svg", std::process::id()));
        write_svg(&h, "test", &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("99%"));
        // An empty histogram still gives a (blank) plot.
        write_svg(&new_latency(), "empty", &path).unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
