//! The bench's plots, as SVG: throughput and round trips per case, loss
//! against offered load.

use std::path::Path;

use plotters::prelude::*;

use super::report::Results;
use super::CaseOutcome;

type PlotResult = Result<(), Box<dyn std::error::Error>>;

const SIZE: (u32, u32) = (1200, 700);

/// Writes `throughput.svg`, `latency.svg` and `loss.svg` into `dir`.
pub fn write_all(results: &Results, dir: &Path) -> anyhow::Result<()> {
    let ran: Vec<&CaseOutcome> = results.cases.iter().filter(|c| c.error.is_none()).collect();
    let wrap =
        |what: &str, r: PlotResult| r.map_err(|e| anyhow::anyhow!("cannot draw {what}: {e}"));
    wrap(
        "throughput.svg",
        bars(
            &dir.join("throughput.svg"),
            "TCP throughput (iperf3), Mbit/s",
            &ran,
            &[
                ("one pair alone", &|c: &CaseOutcome| c.tcp_pair_mbit),
                ("all pairs at once (sum)", &|c: &CaseOutcome| {
                    c.tcp_all.as_ref().map(|a| a.sum_mbit)
                }),
            ],
        ),
    )?;
    wrap(
        "latency.svg",
        bars(
            &dir.join("latency.svg"),
            "Round trip node0 -> node1, ms (median; p99 in lighter bars)",
            &ran,
            &[
                ("echo p50", &|c: &CaseOutcome| {
                    c.echo.as_ref().map(|r| r.p50_us / 1e3)
                }),
                ("echo p99", &|c: &CaseOutcome| {
                    c.echo.as_ref().map(|r| r.p99_us / 1e3)
                }),
                ("ping p50", &|c: &CaseOutcome| {
                    c.ping.as_ref().map(|r| r.p50_us / 1e3)
                }),
                ("ping p99", &|c: &CaseOutcome| {
                    c.ping.as_ref().map(|r| r.p99_us / 1e3)
                }),
            ],
        ),
    )?;
    wrap("loss.svg", loss(&dir.join("loss.svg"), &ran))
}

type Series<'a> = (&'a str, &'a dyn Fn(&CaseOutcome) -> Option<f64>);

/// Grouped bars: one group per case, one bar per series.
fn bars(path: &Path, title: &str, cases: &[&CaseOutcome], series: &[Series<'_>]) -> PlotResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let top = cases
        .iter()
        .flat_map(|c| series.iter().filter_map(|(_, f)| f(c)))
        .fold(0.0_f64, f64::max)
        .max(1e-3)
        * 1.1;
    let n = cases.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(190)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5_f64..(n as f64 - 0.5), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                cases
                    .get(i as usize)
                    .map(|c| c.id.clone())
                    .unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_label_style(
            ("sans-serif", 12)
                .into_text_style(&root)
                .transform(FontTransform::Rotate90),
        )
        .draw()?;
    let width = 0.8 / series.len() as f64;
    for (k, (name, value)) in series.iter().enumerate() {
        let color = Palette99::pick(k).mix(0.9);
        let rects = cases.iter().enumerate().filter_map(|(i, c)| {
            let v = value(c)?;
            let x0 = i as f64 - 0.4 + k as f64 * width;
            Some(Rectangle::new(
                [(x0, 0.0), (x0 + width * 0.9, v)],
                color.filled(),
            ))
        });
        chart
            .draw_series(rects)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// UDP loss against offered load, one line per case.
fn loss(path: &Path, cases: &[&CaseOutcome]) -> PlotResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let points = cases.iter().flat_map(|c| c.udp.iter());
    let (lo, hi) = points.fold((f64::MAX, 0.0_f64), |(lo, hi), p| {
        (lo.min(p.offered_mbit), hi.max(p.offered_mbit))
    });
    let (lo, hi) = if hi <= 0.0 {
        (1.0, 10.0)
    } else {
        (lo * 0.8, hi * 1.25)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "UDP loss against offered load (iperf3 node0 -> node1)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0_f64..100.0)?;
    chart
        .configure_mesh()
        .x_desc("offered, Mbit/s")
        .y_desc("lost, %")
        .draw()?;
    for (k, c) in cases.iter().enumerate().filter(|(_, c)| !c.udp.is_empty()) {
        let color = Palette99::pick(k).to_rgba();
        let line: Vec<(f64, f64)> = c
            .udp
            .iter()
            .map(|p| (p.offered_mbit, p.lost_percent.clamp(0.0, 100.0)))
            .collect();
        let style = if c.spec.is_baseline() {
            color.stroke_width(3)
        } else {
            color.stroke_width(1)
        };
        chart
            .draw_series(LineSeries::new(line.clone(), style))?
            .label(c.id.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color));
        chart.draw_series(line.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_svg_with_every_case() {
        let results = crate::bench::report::tests::sample();
        let dir = std::env::temp_dir().join(format!("vni-lab-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_all(&results, &dir).unwrap();
        for name in ["throughput.svg", "latency.svg", "loss.svg"] {
            let svg = std::fs::read_to_string(dir.join(name)).unwrap();
            assert!(svg.starts_with("<svg"), "{name}");
            assert!(svg.contains("n2-mtu1500-c2-interrupt"), "{name}");
        }
        let throughput = std::fs::read_to_string(dir.join("throughput.svg")).unwrap();
        assert!(throughput.contains("n2-mtu1500-virtio-net"));
        // The case that did not run has no bar.
        assert!(!throughput.contains("n8-mtu1500"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
