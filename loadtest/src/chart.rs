//! The PNG chart of a load test: two panels over time, acknowledged per
//! second (one line per run) above, round-trip latency p50 and p99 (one
//! colour per run, log scale) below. Any mix draws one from labelled
//! [`Series`], e.g. [`Series::from_timeline`] of each run's
//! [`crate::timeline::TimeLine`].
//!
//! Drawn with plotters' bitmap backend; text with ab_glyph from a TrueType
//! font read at run time ([`DEFAULT_FONT`], or `--chart-font`), so no system
//! C library (fontconfig, freetype) is needed. Everything here is pure but
//! [`load_font`] and [`render`], which read the font and write the file.

use crate::error::{LoadtestError, Result};
use crate::timeline::{Point, TimeLine};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The font of the chart's text when `--chart-font` is not given: DejaVu
/// Sans, from Debian's fonts-dejavu-core ([`FONT_PACKAGE`]).
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The Debian package that installs [`DEFAULT_FONT`].
pub const FONT_PACKAGE: &str = "fonts-dejavu-core";

/// Pixel size of the PNG: wide enough for a few dozen one-second points
/// per run and a legend of a dozen runs, readable in a Markdown page.
pub const WIDTH: u32 = 1400;
pub const HEIGHT: u32 = 1000;

/// The family name the font is registered under, the one every text style
/// here asks for.
const FAMILY: &str = "sans-serif";

/// Which font is registered with plotters (a process-wide table), so that
/// a second chart does not read and leak the same file again.
static REGISTERED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// One point of a [`Series`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeriesPoint {
    /// Seconds since the run started.
    pub t_s: f64,
    /// What the upper panel shows (acknowledged per second).
    pub acked_per_s: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One run's line in both panels.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The legend: which configuration (engine, config, rate).
    pub label: String,
    pub points: Vec<SeriesPoint>,
}

impl Series {
    /// A run's time line, `acked` choosing what the upper panel shows
    /// (e.g. `|p| p.acked_heartbeats_per_s`).
    pub fn from_timeline(
        label: impl Into<String>,
        timeline: &TimeLine,
        acked: impl Fn(&Point) -> f64,
    ) -> Series {
        Series {
            label: label.into(),
            points: timeline
                .points
                .iter()
                .map(|p| SeriesPoint {
                    t_s: p.t_s,
                    acked_per_s: acked(p),
                    p50_ms: p.latency_p50_ms,
                    p99_ms: p.latency_p99_ms,
                })
                .collect(),
        }
    }
}

/// A whole chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// Above both panels: the command's settings.
    pub title: String,
    /// Y axis of the upper panel, e.g. "acknowledged heartbeats/s".
    pub acked_axis: String,
    /// Y axis of the lower panel, e.g. "heartbeat round trip, ms".
    pub latency_axis: String,
    pub series: Vec<Series>,
}

impl Chart {
    /// The x range: from 0 to the last point of any series (at least 1 s).
    fn time_range(&self) -> std::ops::Range<f64> {
        let end = self.points().map(|p| p.t_s).fold(1.0, f64::max);
        0.0..end
    }

    /// The upper panel's range: from 0 to a tenth above the highest rate.
    fn acked_range(&self) -> std::ops::Range<f64> {
        let top = self.points().map(|p| p.acked_per_s).fold(0.0, f64::max);
        0.0..(top * 1.1).max(1.0)
    }

    /// The lower panel's (logarithmic) range: from the power of ten below
    /// the lowest latency to the one above the highest (so the axis has
    /// labelled decades), or 0.1 to 10 ms when there is none.
    fn latency_range(&self) -> std::ops::Range<f64> {
        let values = self
            .points()
            .flat_map(|p| [p.p50_ms, p.p99_ms])
            .flatten()
            .filter(|v| v.is_finite() && *v > 0.0);
        let (lo, hi) = values.fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if hi == 0.0 {
            return 0.1..10.0;
        }
        let decade_below = 10f64.powf(lo.log10().floor()).max(0.001);
        let decade_above = 10f64.powf(hi.log10().ceil());
        decade_below..decade_above.max(decade_below * 10.0)
    }

    fn points(&self) -> impl Iterator<Item = &SeriesPoint> {
        self.series.iter().flat_map(|s| &s.points)
    }
}

/// Reads the TrueType font at `path` and registers it for the chart's
/// text. Done once per process and path: plotters keeps the bytes for
/// the rest of the process.
pub fn load_font(path: &Path) -> Result<()> {
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if registered.as_deref() == Some(path) {
        return Ok(());
    }
    let font_error = |detail: String| LoadtestError::ChartFont {
        path: path.to_path_buf(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|e| font_error(e.to_string()))?;
    // plotters' table wants 'static bytes; one font per process (see above).
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| font_error("not a TrueType or OpenType font".into()))?;
    *registered = Some(path.to_path_buf());
    Ok(())
}

/// Draws `chart` into a PNG at `path` ([`WIDTH`] x [`HEIGHT`]), with the
/// font at `font` ([`load_font`]).
pub fn render(chart: &Chart, path: &Path, font: &Path) -> Result<()> {
    load_font(font)?;
    draw(chart, path).map_err(|e| LoadtestError::Chart {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw(chart: &Chart, path: &Path) -> DrawResult {
    let area = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    area.fill(&WHITE)?;
    let body = area
        .margin(10, 0, 0, 10)
        .titled(&chart.title, (FAMILY, 22))?;
    let panels = body.split_evenly((2, 1));
    let time = chart.time_range();

    let mut upper = ChartBuilder::on(&panels[0])
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(time.clone(), chart.acked_range())?;
    upper
        .configure_mesh()
        .x_desc("seconds since the run started")
        .y_desc(chart.acked_axis.as_str())
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .light_line_style(LIGHT_LINE)
        .bold_line_style(BOLD_LINE)
        .x_label_formatter(&|v| format_number(*v))
        .y_label_formatter(&|v| format_number(*v))
        .draw()?;
    for (i, s) in chart.series.iter().enumerate() {
        let style = colour(i).stroke_width(2);
        upper
            .draw_series(LineSeries::new(
                s.points.iter().map(|p| (p.t_s, p.acked_per_s)),
                style,
            ))?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    }
    upper
        .configure_series_labels()
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;

    let mut lower = ChartBuilder::on(&panels[1])
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .caption("p50 solid, p99 dashed", (FAMILY, 16))
        .build_cartesian_2d(time, chart.latency_range().log_scale())?;
    lower
        .configure_mesh()
        .x_desc("seconds since the run started")
        .y_desc(chart.latency_axis.as_str())
        // Enough for the 2s and 5s between the decades.
        .y_labels(LATENCY_LABELS)
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .light_line_style(LIGHT_LINE)
        .bold_line_style(BOLD_LINE)
        .x_label_formatter(&|v| format_number(*v))
        .y_label_formatter(&|v| log_tick_label(*v))
        .draw()?;
    for (i, s) in chart.series.iter().enumerate() {
        let style = colour(i).stroke_width(2);
        for run in segments(&s.points, |p| p.p50_ms) {
            lower.draw_series(LineSeries::new(run, style))?;
        }
        for run in segments(&s.points, |p| p.p99_ms) {
            lower.draw_series(DashedLineSeries::new(run, 8, 5, style))?;
        }
    }
    area.present()?;
    Ok(())
}

fn colour(i: usize) -> RGBAColor {
    Palette99::pick(i).to_rgba()
}

/// Labels asked for on the latency axis: plotters then marks every step
/// within each decade of the logarithmic scale, not just the decades
/// ([`log_tick_label`] writes 1, 2 and 5 of them).
const LATENCY_LABELS: usize = 20;

/// The grid: faint, the fine one barely there, so the lines stand out.
const LIGHT_LINE: RGBAColor = RGBAColor(0, 0, 0, 0.03);
const BOLD_LINE: RGBAColor = RGBAColor(0, 0, 0, 0.15);

/// A tick label: whole numbers from 10 up, a few digits below.
fn format_number(v: f64) -> String {
    let text = if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// A tick of the logarithmic axis: 1, 2 and 5 times a power of ten are
/// written, the steps between them left as grid lines only (written, they
/// crowd the top of each decade).
fn log_tick_label(v: f64) -> String {
    if !(v.is_finite() && v > 0.0) {
        return String::new();
    }
    let mantissa = v / 10f64.powf(v.log10().floor());
    let written = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .any(|m| (mantissa - m).abs() < 1e-6 * m);
    if written {
        format_number(v)
    } else {
        String::new()
    }
}

/// The runs of consecutive points where `value` has a (positive) value:
/// a second without an answered exchange breaks the line instead of
/// bridging it.
fn segments(
    points: &[SeriesPoint],
    value: impl Fn(&SeriesPoint) -> Option<f64>,
) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for p in points {
        match value(p).filter(|v| v.is_finite() && *v > 0.0) {
            Some(v) => out.last_mut().map_or((), |run| run.push((p.t_s, v))),
            None if out.last().is_some_and(|run| !run.is_empty()) => out.push(Vec::new()),
            None => {}
        }
    }
    out.retain(|run| !run.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t_s: f64, acked: f64, p50: Option<f64>) -> SeriesPoint {
        SeriesPoint {
            t_s,
            acked_per_s: acked,
            p50_ms: p50,
            p99_ms: p50.map(|v| v * 4.0),
        }
    }

    fn synthetic() -> Chart {
        let series = (0..3)
            .map(|run| Series {
                label: format!("#{} sqlite · group commit (defaults)", run + 1),
                points: (1..=20)
                    .map(|t| {
                        let t = f64::from(t);
                        let p50 = (t != 7.0).then(|| 0.5 + t * f64::from(run));
                        point(t, 1000.0 * f64::from(run + 1), p50)
                    })
                    .collect(),
            })
            .collect();
        Chart {
            title: "loadtest ingest · sqlite · 50 locks · 100 heartbeats/s offered".into(),
            acked_axis: "acknowledged heartbeats/s".into(),
            latency_axis: "heartbeat round trip, ms".into(),
            series,
        }
    }

    /// Width and height from a PNG's signature and IHDR chunk.
    fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
        const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
        let be = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        (bytes.starts_with(SIGNATURE) && bytes.get(12..16)? == b"IHDR")
            .then(|| Some((be(16)?, be(20)?)))
            .flatten()
    }

    #[test]
    fn a_synthetic_time_line_renders_to_a_png_of_the_chart_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        let mut chart = synthetic();
        // A time line as a run makes it, through Series::from_timeline.
        let timeline = TimeLine {
            points: vec![Point {
                t_s: 1.0,
                acked_heartbeats_per_s: 90.0,
                latency_p50_ms: Some(3.0),
                ..Point::default()
            }],
        };
        chart
            .series
            .push(Series::from_timeline("#4 postgres", &timeline, |p| {
                p.acked_heartbeats_per_s
            }));
        render(&chart, &path, Path::new(DEFAULT_FONT)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(png_size(&bytes), Some((WIDTH, HEIGHT)));
        // Drawn, not blank: a blank white PNG of this size compresses to a
        // few kilobytes.
        assert!(bytes.len() > 20_000, "{} bytes", bytes.len());
    }

    #[test]
    fn a_chart_without_any_latency_still_renders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        let chart = Chart {
            series: vec![Series {
                label: "mqtt".into(),
                points: vec![point(1.0, 5.0, None), point(2.0, 6.0, None)],
            }],
            ..synthetic()
        };
        assert_eq!(chart.latency_range(), 0.1..10.0);
        render(&chart, &path, Path::new(DEFAULT_FONT)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(png_size(&bytes), Some((WIDTH, HEIGHT)));
    }

    #[test]
    fn a_missing_or_bad_font_says_what_to_install() {
        let err = load_font(Path::new("/nonexistent/DejaVuSans.ttf")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(FONT_PACKAGE) && text.contains("--chart-font"),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("bogus.ttf");
        std::fs::write(&bogus, b"not a font").unwrap();
        let text = load_font(&bogus).unwrap_err().to_string();
        assert!(text.contains("not a TrueType"), "{text}");
    }

    #[test]
    fn ranges_cover_every_point_and_gaps_break_the_latency_lines() {
        let chart = synthetic();
        assert_eq!(chart.time_range(), 0.0..20.0);
        let acked = chart.acked_range();
        assert_eq!(acked.start, 0.0);
        assert!((acked.end - 3300.0).abs() < 1e-9, "{acked:?}");
        // p50 from 0.5 ms (run 1), p99 up to 4 x 40.5 ms (run 3 at 20 s):
        // the decades around them.
        assert_eq!(chart.latency_range(), 0.1..1000.0);
        let runs = segments(&chart.series[1].points, |p| p.p50_ms);
        // The point at 7 s has no latency: two lines, 6 and 13 points.
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), vec![6, 13]);
        assert_eq!(segments(&[point(1.0, 1.0, None)], |p| p.p50_ms).len(), 0);
    }

    #[test]
    fn tick_labels_have_no_needless_digits() {
        assert_eq!(format_number(250.0), "250");
        assert_eq!(format_number(1200.4), "1200");
        assert_eq!(format_number(2.5), "2.5");
        assert_eq!(format_number(0.25), "0.25");
        assert_eq!(format_number(0.001), "0.001");
        assert_eq!(format_number(0.0), "0");
        assert_eq!(log_tick_label(20.0), "20");
        assert_eq!(log_tick_label(0.5), "0.5");
        assert_eq!(log_tick_label(100.0), "100");
        assert_eq!(log_tick_label(30.0), "");
        assert_eq!(log_tick_label(0.0), "");
    }
}
