//! `tuna compare`'s report as Markdown, as one self-contained HTML page (inline CSS and SVG,
//! nothing fetched), and as JSON (the `CompareReport` itself).

use std::fmt::Write;

use crate::compare::{CompareReport, StrategyRow};

fn modification(r: &StrategyRow) -> String {
    match (&r.adapter, r.uses_adapter) {
        (Some(a), true) => format!(
            "LoRA adapter: {:.2} M params, {:.1} MB",
            a.parameters as f64 / 1e6,
            a.bytes as f64 / 1e6
        ),
        _ if r.key == "majority" => "none (always the most frequent label)".into(),
        _ => "none (prompt only)".into(),
    }
}

fn data_required(r: &StrategyRow) -> String {
    match (&r.adapter, r.uses_adapter) {
        (Some(a), true) => {
            let shots = r.examples_used.saturating_sub(a.train_examples);
            if shots > 0 {
                format!("{} train + {shots} shots", a.train_examples)
            } else {
                format!("{} train examples", a.train_examples)
            }
        }
        _ if r.key == "majority" => format!("{} labels counted", r.examples_used),
        _ => match r.examples_used {
            1 => "1 example".into(),
            n => format!("{n} examples"),
        },
    }
}

fn implementation_time(r: &StrategyRow) -> String {
    match (&r.adapter, r.uses_adapter) {
        (Some(a), true) => {
            let cpu = a
                .cpu_seconds
                .map_or(String::new(), |c| format!(", {c:.0} CPU-s"));
            format!("{:.0} s training, {} steps{cpu}", a.train_seconds, a.steps)
        }
        _ => "0 (no training)".into(),
    }
}

fn cost(r: &StrategyRow) -> String {
    if r.key == "majority" {
        return "—".into();
    }
    let mut s = format!(
        "{:.0}k prompt tokens, {:.0} s",
        r.prompt_tokens_per_example, r.seconds_per_1k
    );
    if let Some(cpu) = r.cpu_seconds_per_1k {
        let _ = write!(s, " ({cpu:.0} CPU-s)");
    }
    if r.generated_tokens_per_example > 0.0 {
        let _ = write!(s, ", {:.0}k generated", r.generated_tokens_per_example);
    }
    s
}

fn metric_cell(r: &StrategyRow, i: usize) -> String {
    let m = &r.metrics[i];
    format!(
        "{:.3} [{:.3}, {:.3}]",
        m.estimate.value, m.estimate.low, m.estimate.high
    )
}

fn predictions_cell(r: &StrategyRow) -> String {
    let n: usize = r.distribution.iter().map(|d| d.1).sum();
    let mut parts: Vec<String> = r
        .distribution
        .iter()
        .take(4)
        .map(|(p, c)| {
            format!(
                "{} {:.0}%",
                short(p, 16),
                *c as f64 * 100.0 / n.max(1) as f64
            )
        })
        .collect();
    if r.distribution.len() > 4 {
        parts.push(format!("… {} distinct", r.distribution.len()));
    }
    let mut s = parts.join(", ");
    if r.collapsed {
        s.push_str(" ⚠ one answer on most rows");
    }
    s
}

/// One sentence on how much the draw of shots moved each strategy that shows shots, or
/// nothing when there was one draw.
fn shot_draws_text(report: &CompareReport) -> Option<String> {
    let parts: Vec<String> = report
        .rows
        .iter()
        .filter_map(|r| {
            let (lo, hi) = r.draw_range()?;
            let values: Vec<String> = r
                .shot_draws
                .iter()
                .map(|d| format!("{:.3}", d.value))
                .collect();
            Some(format!(
                "{} {} (range {:.3})",
                r.title,
                values.join(" / "),
                hi - lo
            ))
        })
        .collect();
    let draws = report.rows.iter().map(|r| r.shot_draws.len()).max()?;
    (!parts.is_empty()).then(|| {
        format!(
            "Shots are noisy: each strategy that shows shots ran with {draws} seeded draws of them, and the table shows the first. By draw ({}): {}.",
            report.rows[0].metrics[0].name,
            parts.join("; ")
        )
    })
}

/// One sentence on how much the training seed moved the tuned and hybrid arms, beside the
/// shot draws' spread; nothing with one seed.
fn seed_spread_text(report: &CompareReport) -> Option<String> {
    let parts: Vec<String> = report
        .seed_spreads
        .iter()
        .map(|s| {
            format!(
                "{} mean {:.3} (range {:.3} to {:.3}, spread {:.3})",
                s.title,
                s.mean,
                s.min,
                s.max,
                s.max - s.min
            )
        })
        .collect();
    let seeds = report.seed_spreads.first()?.seeds.len();
    Some(format!(
        "Training seeds: the adapter was trained {seeds} times with seeds {}, and the table shows the first; over the seeds ({}): {}.",
        report.seed_spreads[0]
            .seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        report.rows[0].metrics[0].name,
        parts.join("; ")
    ))
}

/// One line of at most `n` characters (newlines and table bars as spaces).
pub(crate) fn short(s: &str, n: usize) -> String {
    let s = s.replace(['\n', '|'], " ");
    if s.chars().count() <= n {
        s
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// The strategies the side-by-side table has columns for (those scored on its rows).
fn sample_keys(report: &CompareReport) -> Vec<&str> {
    report.samples.first().map_or(vec![], |x| {
        x.predictions.iter().map(|(k, _)| k.as_str()).collect()
    })
}

fn p_value(p: f64) -> String {
    if p < 0.001 {
        "< 0.001".into()
    } else {
        format!("{p:.3}")
    }
}

fn detectable(d: f64) -> String {
    if d.is_finite() {
        format!("{:.1} points", d * 100.0)
    } else {
        "—".into()
    }
}

fn all_rows(report: &CompareReport) -> Vec<&StrategyRow> {
    report.rows.iter().chain(report.baseline.as_ref()).collect()
}

/// The best prompting row, by the recommendation's own rule.
fn best_prompting(report: &CompareReport) -> Option<&StrategyRow> {
    crate::compare::best_prompting(&report.rows, report.examples)
}

/// The metric against training examples (log scale), with the best prompting strategy as a
/// horizontal line: where tuning starts to pay.
fn curve_chart(report: &CompareReport) -> String {
    let points = &report.learning_curve;
    let (w, h, left, bottom) = (720.0, 300.0, 60.0, 40.0);
    let lo = points
        .iter()
        .map(|p| p.train_examples.max(1) as f64)
        .fold(f64::MAX, f64::min)
        .log10()
        .floor();
    let hi = points
        .iter()
        .map(|p| p.train_examples.max(1) as f64)
        .fold(1.0, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let x = |n: f64| left + (n.max(1.0).log10() - lo) / (hi - lo) * (w - left - 30.0);
    let y = |v: f64| (h - bottom) - v.clamp(0.0, 1.0) * (h - bottom - 15.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="learning curve">"#
    );
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#000"/><line x1="{left}" y1="10" x2="{left}" y2="{0}" stroke="#000"/>"##,
        h - bottom,
        w - 20.0
    );
    for p in lo as i32..=hi as i32 {
        let n = 10f64.powi(p);
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" font-size="10" text-anchor="middle">{n}</text>"##,
            x(n),
            h - bottom + 14.0
        );
    }
    for t in 0..=5 {
        let v = t as f64 / 5.0;
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" font-size="10" text-anchor="end">{v:.1}</text>"##,
            left - 4.0,
            y(v) + 3.0
        );
    }
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="middle">training examples (log scale)</text>"##,
        (w + left) / 2.0,
        h - 5.0
    );
    if let Some(best) = best_prompting(report) {
        let v = best.headline().estimate.value;
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#e08a2c" stroke-dasharray="5,4"/><text x="{2}" y="{3}" font-size="11" fill="#e08a2c">{4}</text>"##,
            y(v),
            w - 20.0,
            left + 6.0,
            y(v) - 4.0,
            esc(&best.title)
        );
    }
    let path: Vec<String> = points
        .iter()
        .map(|p| {
            format!(
                "{:.1},{:.1}",
                x(p.train_examples as f64),
                y(p.metric.estimate.value)
            )
        })
        .collect();
    let _ = write!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#2a7ab9" stroke-width="2"/>"##,
        path.join(" ")
    );
    for p in points {
        let (px, e) = (x(p.train_examples as f64), &p.metric.estimate);
        let _ = write!(
            s,
            r##"<line x1="{px}" y1="{0}" x2="{px}" y2="{1}" stroke="#2a7ab9"/><circle cx="{px}" cy="{2}" r="4" fill="#2a7ab9"/><text x="{3}" y="{4}" font-size="10">{5:.3}</text>"##,
            y(e.low),
            y(e.high),
            y(e.value),
            px + 6.0,
            y(e.value) + 12.0,
            e.value
        );
    }
    s.push_str("</svg>");
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar per strategy with its 95% interval, on a 0–1 axis.
fn bar_chart(report: &CompareReport) -> String {
    let rows = all_rows(report);
    let (w, row_h, left) = (760.0, 28.0, 270.0);
    let h = rows.len() as f64 * row_h + 40.0;
    let x = |v: f64| left + v.clamp(0.0, 1.0) * (w - left - 20.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="metric per strategy">"#
    );
    for t in 0..=10 {
        let v = t as f64 / 10.0;
        let _ = write!(
            s,
            r##"<line x1="{0}" y1="10" x2="{0}" y2="{1}" stroke="#ddd"/><text x="{0}" y="{2}" font-size="10" text-anchor="middle">{v:.1}</text>"##,
            x(v),
            h - 25.0,
            h - 10.0
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let m = &r.metrics[0].estimate;
        let y = 15.0 + i as f64 * row_h;
        let color = if r.uses_adapter {
            "#2a7ab9"
        } else if r.key == "majority" {
            "#999"
        } else {
            "#e08a2c"
        };
        let _ = write!(
            s,
            r##"<text x="{tx}" y="{ty}" font-size="12" text-anchor="end">{name}</text><rect x="{left}" y="{y}" width="{bw}" height="16" fill="{color}"/><line x1="{lo}" y1="{cy}" x2="{hi}" y2="{cy}" stroke="#000" stroke-width="1.5"/><line x1="{lo}" y1="{y1}" x2="{lo}" y2="{y2}" stroke="#000"/><line x1="{hi}" y1="{y1}" x2="{hi}" y2="{y2}" stroke="#000"/><text x="{vx}" y="{ty}" font-size="11">{val:.3}</text>"##,
            tx = left - 8.0,
            ty = y + 12.0,
            name = esc(&short(&r.title, 40)),
            bw = x(m.value) - left,
            lo = x(m.low),
            hi = x(m.high),
            cy = y + 8.0,
            y1 = y + 3.0,
            y2 = y + 13.0,
            vx = x(m.high) + 4.0,
            val = m.value,
        );
        // The other draws of shots, as open dots on the bar.
        for d in r.shot_draws.iter().skip(1) {
            let _ = write!(
                s,
                r##"<circle cx="{}" cy="{}" r="3.5" fill="#fff" stroke="#000"><title>shot draw (seed {}): {:.3}</title></circle>"##,
                x(d.value),
                y + 8.0,
                d.seed,
                d.value
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// Metric against cost (seconds per 1k test examples plus training time, log scale).
fn cost_chart(report: &CompareReport) -> String {
    let points: Vec<(&StrategyRow, f64)> = report
        .rows
        .iter()
        .map(|r| {
            let train = r.adapter.as_ref().map_or(0.0, |a| a.train_seconds);
            (r, r.seconds_per_1k + train)
        })
        .collect();
    let (w, h, left, bottom) = (720.0, 300.0, 60.0, 40.0);
    let max = points
        .iter()
        .map(|p| p.1)
        .fold(1.0f64, f64::max)
        .log10()
        .ceil()
        .max(1.0);
    let x = |c: f64| left + c.max(1.0).log10() / max * (w - left - 30.0);
    let y = |v: f64| (h - bottom) - v.clamp(0.0, 1.0) * (h - bottom - 15.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="metric vs cost">"#
    );
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#000"/><line x1="{left}" y1="10" x2="{left}" y2="{0}" stroke="#000"/>"##,
        h - bottom,
        w - 20.0
    );
    for p in 0..=max as i32 {
        let c = 10f64.powi(p);
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" font-size="10" text-anchor="middle">{c}</text>"##,
            x(c),
            h - bottom + 14.0
        );
    }
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="middle">seconds per 1k test examples (+ training time for adapters), log scale</text>"##,
        (w + left) / 2.0,
        h - 5.0
    );
    for t in 0..=5 {
        let v = t as f64 / 5.0;
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" font-size="10" text-anchor="end">{v:.1}</text>"##,
            left - 4.0,
            y(v) + 3.0
        );
    }
    for (i, (r, c)) in points.into_iter().enumerate() {
        let v = r.metrics[0].estimate.value;
        let color = if r.uses_adapter { "#2a7ab9" } else { "#e08a2c" };
        // Labels step down by row so that strategies at the same spot stay readable.
        let _ = write!(
            s,
            r##"<circle cx="{0}" cy="{1}" r="5" fill="{color}"/><text x="{2}" y="{3}" font-size="11">{name}</text>"##,
            x(c),
            y(v),
            x(c) + 7.0,
            y(v) - 6.0 + (i % 3) as f64 * 11.0,
            name = esc(&r.key)
        );
    }
    s.push_str("</svg>");
    s
}

/// One block of a report section, rendered the same way into Markdown and HTML (charts
/// are HTML only: SVG has no Markdown form).
enum Block {
    /// A paragraph; `backticks` mark code.
    Text(String),
    Table {
        header: Vec<String>,
        /// Cells, each with whether it is a wrong answer or a warning (HTML colors it).
        rows: Vec<Vec<(String, bool)>>,
    },
    /// Items, each with sub-items.
    List(Vec<(String, Vec<String>)>),
    Chart(String),
}

struct Section {
    title: String,
    blocks: Vec<Block>,
}

fn cells(values: Vec<String>) -> Vec<(String, bool)> {
    values.into_iter().map(|v| (v, false)).collect()
}

/// The report as a list of sections: the one description both renderers draw.
fn sections(report: &CompareReport) -> Vec<Section> {
    let mut out = Vec::new();
    let task = match report.task.labels() {
        [] => "sequence answers".to_string(),
        labels => format!("labels: {}", labels.join(", ")),
    };
    let mut intro = vec![
        Block::Text(format!(
            "Model `{}`; {} test examples ({task}); shots drawn from {} train examples with seed {}.",
            report.model, report.examples, report.train_examples, report.seed
        )),
        Block::Text(report.leakage.summary()),
    ];
    if !report.provenance.files.is_empty() {
        intro.push(Block::Text(report.provenance.summary()));
    }
    out.push(Section {
        title: String::new(),
        blocks: intro,
    });
    out.push(Section {
        title: "Recommendation".into(),
        blocks: vec![Block::Text(report.recommendation.clone())],
    });

    let metric = report.rows.first().map_or("metric", |r| r.metrics[0].name);
    let metric_names: Vec<&str> = report
        .rows
        .first()
        .map_or(vec![], |r| r.metrics.iter().map(|m| m.name).collect());
    let mut header: Vec<String> = [
        "strategy",
        "modification",
        "data required",
        "implementation time",
        "cost per 1k test examples",
    ]
    .map(String::from)
    .to_vec();
    header.extend(metric_names.iter().map(|m| format!("{m} [95% CI]")));
    header.push("predictions".into());
    let rows = all_rows(report)
        .into_iter()
        .map(|r| {
            let mut row = cells(vec![
                r.title.clone(),
                modification(r),
                data_required(r),
                implementation_time(r),
                cost(r),
            ]);
            row.extend((0..r.metrics.len()).map(|i| (metric_cell(r, i), false)));
            row.push((predictions_cell(r), r.collapsed));
            row
        })
        .collect();
    let mut table = vec![Block::Table { header, rows }];
    let methods: Vec<String> = report
        .rows
        .iter()
        .map(|r| format!("{}: {}", r.title, r.method))
        .collect();
    table.push(Block::Text(format!(
        "Scoring: {}. Answers compared with references after `{:?}` normalization.",
        methods.join("; "),
        report.normalization
    )));
    if let Some(text) = shot_draws_text(report) {
        table.push(Block::Text(text));
    }
    if let Some(text) = seed_spread_text(report) {
        table.push(Block::Text(text));
    }
    if let Some(floor) = report.prior_floor_nll {
        table.push(Block::Text(format!(
            "Label loss (−log p of the reference, labels normalized) against the prior-only floor {floor:.3} nats: {}.",
            report
                .rows
                .iter()
                .filter_map(|r| r.label_nll.map(|l| format!("{} {l:.3}", r.title)))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if !report.comparisons.is_empty() {
        table.push(Block::List(
            report
                .comparisons
                .iter()
                .map(|c| {
                    (
                        format!(
                            "{} − {}: {} {:+.3} [95% CI {:+.3}, {:+.3}] (paired bootstrap over the same examples)",
                            c.a, c.b, c.metric, c.difference.value, c.difference.low, c.difference.high
                        ),
                        Vec::new(),
                    )
                })
                .collect(),
        ));
    }
    if let Some(payback) = &report.payback {
        table.push(Block::Text(format!("Break-even: {}", payback.sentence())));
    }
    table.push(Block::Chart(format!(
        "<h3>{} per strategy (95% CI)</h3>{}",
        esc(metric),
        bar_chart(report)
    )));
    table.push(Block::Chart(format!(
        "<h3>{} against cost</h3>{}",
        esc(metric),
        cost_chart(report)
    )));
    out.push(Section {
        title: "The table".into(),
        blocks: table,
    });

    if let Some(first) = report.seed_spreads.first() {
        let mut header = vec!["training seed".to_string()];
        header.extend(
            report
                .seed_spreads
                .iter()
                .map(|s| format!("{} ({metric})", s.title)),
        );
        let rows = first
            .seeds
            .iter()
            .enumerate()
            .map(|(i, seed)| {
                let mut row = vec![seed.to_string()];
                row.extend(
                    report
                        .seed_spreads
                        .iter()
                        .map(|s| format!("{:.3}", s.values[i])),
                );
                cells(row)
            })
            .collect();
        let mut blocks: Vec<Block> = report
            .seed_spreads
            .iter()
            .map(|s| Block::Text(s.sentence.clone()))
            .collect();
        blocks.push(Block::Table { header, rows });
        out.push(Section {
            title: "Training seeds".into(),
            blocks,
        });
    }
    if !report.tests.is_empty() {
        out.push(Section {
            title: "Significance".into(),
            blocks: vec![
                Block::Text("Each arm against the best prompting strategy on the same rows: the exact McNemar test on the rows only one of the two gets right, Holm-adjusted across the arms, and the smallest difference these rows detect (80% power, α 0.05).".into()),
                Block::Table {
                    header: ["arm", "against", "only the arm right", "only the other right", "p", "p (Holm)", "detectable difference"].map(String::from).to_vec(),
                    rows: report
                        .tests
                        .iter()
                        .map(|t| {
                            cells(vec![
                                t.arm.clone(),
                                t.against.clone(),
                                t.only_arm.to_string(),
                                t.only_against.to_string(),
                                p_value(t.p),
                                p_value(t.p_holm),
                                detectable(t.detectable),
                            ])
                        })
                        .collect(),
                },
            ],
        });
    }
    if !report.flips.is_empty() {
        let items = report
            .flips
            .iter()
            .map(|f| {
                let mut examples = Vec::new();
                for (who, rows) in [(&f.a, &f.a_only_rows), (&f.b, &f.b_only_rows)] {
                    for r in rows {
                        examples.push(format!(
                            "line {} (only {who} right): {} → reference {:?}, {} {:?}, {} {:?}",
                            r.line,
                            short(&r.input, 80),
                            r.reference,
                            f.a,
                            r.a.trim(),
                            f.b,
                            r.b.trim()
                        ));
                    }
                }
                (
                    format!(
                        "{} right, {} wrong: {} rows; {} right, {} wrong: {} rows.",
                        f.a, f.b, f.a_only, f.b, f.a, f.b_only
                    ),
                    examples,
                )
            })
            .collect();
        out.push(Section {
            title: "Flips".into(),
            blocks: vec![Block::List(items)],
        });
    }
    if !report.learning_curve.is_empty() {
        let mut blocks = vec![
            Block::Text("The adapter trained on nested subsets of the train split (`tuna train --train-sizes`), each scored on the same test rows.".into()),
            Block::Chart(curve_chart(report)),
            Block::Table {
                header: vec![
                    "train examples".into(),
                    "steps".into(),
                    "training time".into(),
                    format!("{} [95% CI]", report.learning_curve[0].metric.name),
                ],
                rows: report
                    .learning_curve
                    .iter()
                    .map(|p| {
                        let e = &p.metric.estimate;
                        cells(vec![
                            p.train_examples.to_string(),
                            p.steps.to_string(),
                            format!("{:.0} s", p.train_seconds),
                            format!("{:.3} [{:.3}, {:.3}]", e.value, e.low, e.high),
                        ])
                    })
                    .collect(),
            },
        ];
        if let Some(best) = best_prompting(report) {
            blocks.push(Block::Text(format!(
                "Best prompting strategy for comparison: {} at {:.3}.",
                best.title,
                best.headline().estimate.value
            )));
        }
        out.push(Section {
            title: "Learning curve".into(),
            blocks,
        });
    }
    if !report.instruction_sweep.is_empty() {
        out.push(Section {
            title: format!(
                "Instruction sweep (zero-shot on `{}`)",
                report.sweep_path.as_deref().unwrap_or("valid")
            ),
            blocks: vec![
                Block::Text("Each wording tried zero-shot on the valid split; the best words every prompting strategy.".into()),
                Block::Table {
                    header: vec![
                        "instruction".into(),
                        format!("{} [95% CI]", report.instruction_sweep[0].metric.name),
                        "chosen".into(),
                    ],
                    rows: report
                        .instruction_sweep
                        .iter()
                        .map(|t| {
                            let e = &t.metric.estimate;
                            cells(vec![
                                short(&t.template, 90),
                                format!("{:.3} [{:.3}, {:.3}]", e.value, e.low, e.high),
                                if t.chosen { "✓" } else { "" }.into(),
                            ])
                        })
                        .collect(),
                },
            ],
        });
    }
    let shown = |t: &Option<String>| match t {
        Some(t) => format!("`{}`", t.replace('\n', "⏎")),
        None => "(none)".to_string(),
    };
    out.push(Section {
        title: "Wording".into(),
        blocks: vec![Block::List(vec![
            (
                format!(
                    "prompting: template {}, system {}",
                    shown(&report.prompt_shape.template),
                    shown(&report.prompt_shape.system)
                ),
                Vec::new(),
            ),
            (
                format!(
                    "adapter (as trained): template {}, system {}",
                    shown(&report.tuned_shape.template),
                    shown(&report.tuned_shape.system)
                ),
                Vec::new(),
            ),
        ])],
    });
    if !report.samples.is_empty() {
        let mut header: Vec<String> = ["line", "input", "reference"].map(String::from).to_vec();
        header.extend(sample_keys(report).iter().map(|k| k.to_string()));
        let rows = report
            .samples
            .iter()
            .map(|x| {
                let mut row = cells(vec![
                    x.line.to_string(),
                    short(&x.input, 80),
                    short(&x.reference, 40),
                ]);
                for (_, p) in &x.predictions {
                    let wrong =
                        crate::metrics::normalize(p) != crate::metrics::normalize(&x.reference);
                    row.push((short(p, 40), wrong));
                }
                row
            })
            .collect();
        out.push(Section {
            title: format!("Side by side (first {})", report.samples.len()),
            blocks: vec![Block::Table { header, rows }],
        });
    }
    if !report.notes.is_empty() {
        out.push(Section {
            title: "Notes".into(),
            blocks: report
                .notes
                .iter()
                .map(|n| Block::Text(format!("Note: {n}")))
                .collect(),
        });
    }
    out
}

pub fn markdown(report: &CompareReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Prompting vs fine-tuning on `{}`\n", report.test_path);
    for section in sections(report) {
        if !section.title.is_empty() {
            let _ = writeln!(s, "## {}\n", section.title);
        }
        for block in &section.blocks {
            match block {
                Block::Text(text) => {
                    let _ = writeln!(s, "{text}\n");
                }
                Block::Table { header, rows } => {
                    let _ = writeln!(s, "| {} |", header.join(" | "));
                    let _ = writeln!(s, "|{}", "---|".repeat(header.len()));
                    for row in rows {
                        let texts: Vec<&str> = row.iter().map(|(t, _)| t.as_str()).collect();
                        let _ = writeln!(s, "| {} |", texts.join(" | "));
                    }
                    let _ = writeln!(s);
                }
                Block::List(items) => {
                    for (item, subs) in items {
                        let _ = writeln!(s, "- {item}");
                        for sub in subs {
                            let _ = writeln!(s, "  - {sub}");
                        }
                    }
                    let _ = writeln!(s);
                }
                Block::Chart(_) => {}
            }
        }
    }
    s
}

/// Text for HTML: escaped, with `backticks` as code.
fn html_text(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in esc(text).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

pub fn html(report: &CompareReport) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>tuna compare: {title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}
th{{background:#f3f3f3}}.rec{{background:#eef6ee;border-left:4px solid #3a3;padding:.6em 1em}}.warn{{color:#b00}}code{{background:#f5f5f5}}</style></head><body>
<h1>Prompting vs fine-tuning on <code>{title}</code></h1>"#,
        title = esc(&report.test_path),
    );
    for section in sections(report) {
        let recommendation = section.title == "Recommendation";
        if !section.title.is_empty() {
            let _ = write!(s, "<h2>{}</h2>", html_text(&section.title));
        }
        for block in &section.blocks {
            match block {
                Block::Text(text) if recommendation => {
                    let _ = write!(s, "<div class=\"rec\">{}</div>", html_text(text));
                }
                Block::Text(text) => {
                    let _ = write!(s, "<p>{}</p>", html_text(text));
                }
                Block::Table { header, rows } => {
                    s.push_str("<table><tr>");
                    for h in header {
                        let _ = write!(s, "<th>{}</th>", html_text(h));
                    }
                    s.push_str("</tr>");
                    for row in rows {
                        s.push_str("<tr>");
                        for (text, warn) in row {
                            let class = if *warn { " class=\"warn\"" } else { "" };
                            let _ = write!(s, "<td{class}>{}</td>", html_text(text));
                        }
                        s.push_str("</tr>");
                    }
                    s.push_str("</table>");
                }
                Block::List(items) => {
                    s.push_str("<ul>");
                    for (item, subs) in items {
                        let _ = write!(s, "<li>{}", html_text(item));
                        if !subs.is_empty() {
                            s.push_str("<ul>");
                            for sub in subs {
                                let _ = write!(s, "<li>{}</li>", html_text(sub));
                            }
                            s.push_str("</ul>");
                        }
                        s.push_str("</li>");
                    }
                    s.push_str("</ul>");
                }
                Block::Chart(svg) => s.push_str(svg),
            }
        }
    }
    s.push_str("</body></html>\n");
    s
}
