//! The one table, the JSON results and the latency chart.

use std::path::Path;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    pub throughput_per_s: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub baseline: String,
    pub baseline_value: Option<f64>,
    /// Workload throughput ÷ baseline throughput (or the stated comparison).
    pub ratio: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
    pub note: String,
    /// Latency distribution (µs) at fixed quantiles, for the chart.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub latency_quantiles_us: Vec<(f64, u64)>,
}

impl Row {
    /// A row with a throughput and a note only: a baseline or a figure shown for information.
    pub fn info(
        workload: impl Into<String>,
        throughput_per_s: f64,
        note: impl Into<String>,
    ) -> Self {
        Self {
            workload: workload.into(),
            throughput_per_s: Some(throughput_per_s),
            p50_ms: None,
            p99_ms: None,
            baseline: "-".into(),
            baseline_value: None,
            ratio: None,
            peak_rss_mib: None,
            target: "-".into(),
            met: None,
            note: note.into(),
            latency_quantiles_us: Vec::new(),
        }
    }
}

fn fmt(value: Option<f64>, digits: usize) -> String {
    value
        .map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

pub fn print_table(rows: &[Row]) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header([
        "workload",
        "throughput/s",
        "p50 ms",
        "p99 ms",
        "baseline",
        "ratio",
        "peak RSS MiB",
        "target",
        "met",
    ]);
    for r in rows {
        table.add_row([
            r.workload.clone(),
            fmt(r.throughput_per_s, 0),
            fmt(r.p50_ms, 2),
            fmt(r.p99_ms, 2),
            format!("{} {}", r.baseline, fmt(r.baseline_value, 0)),
            fmt(r.ratio, 2),
            fmt(r.peak_rss_mib, 1),
            r.target.clone(),
            match r.met {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "-".into(),
            },
        ]);
    }
    println!("{table}");
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        println!("  {}: {}", r.workload, r.note);
    }
}

pub fn write_json(dir: &Path, rows: &[Row]) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("results.json");
    let doc = serde_json::json!({
        "generated_at": chrono::Utc::now().to_rfc3339(),
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "rows": rows,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
    Ok(path)
}

/// Latency by quantile for every workload that has a distribution, on a log scale.
pub fn write_chart(dir: &Path, rows: &[Row]) -> anyhow::Result<Option<std::path::PathBuf>> {
    use plotters::prelude::*;
    let series: Vec<&Row> = rows
        .iter()
        .filter(|r| !r.latency_quantiles_us.is_empty())
        .collect();
    if series.is_empty() {
        return Ok(None);
    }
    // Text needs a font; without one the chart is still drawn, unlabelled.
    let font = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/System/Library/Fonts/Helvetica.ttc",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok());
    let labelled = match font {
        Some(bytes) => plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(bytes.into_boxed_slice()),
        )
        .is_ok(),
        None => false,
    };
    let path = dir.join("latency.png");
    let root = BitMapBackend::new(&path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_us = series
        .iter()
        .flat_map(|r| r.latency_quantiles_us.iter().map(|(_, v)| *v))
        .max()
        .unwrap_or(1) as f64;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70);
    if labelled {
        builder.caption("Latency by quantile (log scale)", ("sans-serif", 24));
    }
    let mut chart =
        builder.build_cartesian_2d(0.0_f64..100.0_f64, (1.0_f64..max_us * 1.5).log_scale())?;
    if labelled {
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (µs)")
            .draw()?;
    } else {
        chart.configure_mesh().disable_mesh().draw()?;
    }
    for (i, row) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = row
            .latency_quantiles_us
            .iter()
            .map(|(q, v)| (q * 100.0, (*v).max(1) as f64))
            .collect();
        let drawn = chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?;
        if labelled {
            drawn
                .label(row.workload.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    if labelled {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    drop(chart);
    drop(root);
    Ok(Some(path))
}

pub fn quantiles(h: &hdrhistogram::Histogram<u64>) -> Vec<(f64, u64)> {
    [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]
        .iter()
        .map(|q| (*q, h.value_at_quantile(*q)))
        .collect()
}
