//! The run's chart: training loss, eval loss and learning rate against the step, as a
//! self-contained SVG (no dependency; any browser shows it). Redrawn at each evaluation.

use std::fmt::Write;
use std::path::Path;

use crate::error::TrainError;

/// The run's curves so far. Kept in each checkpoint's trainer state, so a resumed run's
/// chart shows the whole run, not only the part since the resume.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct History {
    /// (step, loss, lr)
    pub steps: Vec<(usize, f64, f64)>,
    /// (step, eval loss)
    pub evals: Vec<(usize, f64)>,
}

impl History {
    /// Takes in a step or an evaluation; other events do not draw.
    pub fn observe(&mut self, event: &crate::events::TrainEvent) {
        use crate::events::TrainEvent;
        match event {
            TrainEvent::Step { step, loss, lr, .. } => self.steps.push((*step, *loss, *lr)),
            TrainEvent::Eval { step, loss, .. } => self.evals.push((*step, *loss)),
            _ => {}
        }
    }
}

const W: f64 = 720.0;
const H: f64 = 360.0;
const PAD: f64 = 48.0;

fn polyline(points: &[(f64, f64)], color: &str, width: f64) -> String {
    let pts: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    format!(
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"{width}\" points=\"{}\"/>\n",
        pts.join(" ")
    )
}

impl History {
    pub fn svg(&self, total_steps: usize) -> String {
        let max_step = total_steps.max(1) as f64;
        let losses = self
            .steps
            .iter()
            .map(|s| s.1)
            .chain(self.evals.iter().map(|e| e.1))
            .filter(|v| v.is_finite());
        let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let (lo, hi) = if lo.is_finite() && hi > lo {
            (lo.min(0.0), hi)
        } else {
            (0.0, 1.0)
        };
        let max_lr = self
            .steps
            .iter()
            .map(|s| s.2)
            .fold(0.0, f64::max)
            .max(1e-12);
        let x = |step: usize| PAD + (W - 2.0 * PAD) * step as f64 / max_step;
        let y = |v: f64| H - PAD - (H - 2.0 * PAD) * (v - lo) / (hi - lo);
        let y_lr = |v: f64| H - PAD - (H - 2.0 * PAD) * v / max_lr;
        let mut s = String::new();
        let _ = write!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#888\"/>\n\
             <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{b}\" stroke=\"#888\"/>\n\
             <text x=\"{PAD}\" y=\"{t}\">loss {hi:.3}</text>\n<text x=\"4\" y=\"{b}\">{lo:.2}</text>\n\
             <text x=\"{r}\" y=\"{l}\" text-anchor=\"end\">step {total_steps}</text>\n",
            b = H - PAD,
            r = W - PAD,
            t = PAD - 8.0,
            l = H - PAD + 16.0,
        );
        let train: Vec<(f64, f64)> = self
            .steps
            .iter()
            .map(|(st, l, _)| (x(*st), y(*l)))
            .collect();
        let lr: Vec<(f64, f64)> = self
            .steps
            .iter()
            .map(|(st, _, r)| (x(*st), y_lr(*r)))
            .collect();
        let eval: Vec<(f64, f64)> = self.evals.iter().map(|(st, l)| (x(*st), y(*l))).collect();
        s.push_str(&polyline(&lr, "#bbbbbb", 1.0));
        s.push_str(&polyline(&train, "#1f77b4", 1.5));
        s.push_str(&polyline(&eval, "#d62728", 2.0));
        for (ex, ey) in &eval {
            let _ = writeln!(
                s,
                "<circle cx=\"{ex:.1}\" cy=\"{ey:.1}\" r=\"3\" fill=\"#d62728\"/>"
            );
        }
        let _ = write!(
            s,
            "<text x=\"{a}\" y=\"20\" fill=\"#1f77b4\">train loss</text>\
             <text x=\"{b}\" y=\"20\" fill=\"#d62728\">eval loss</text>\
             <text x=\"{c}\" y=\"20\" fill=\"#999\">learning rate (peak {max_lr:.1e})</text>\n</svg>\n",
            a = PAD,
            b = PAD + 90.0,
            c = PAD + 180.0
        );
        s
    }

    pub fn write(&self, path: &Path, total_steps: usize) -> Result<(), TrainError> {
        tuna_lora::peft::write_atomic(path, self.svg(total_steps).as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_series() {
        let h = History {
            steps: vec![(1, 2.0, 1e-3), (2, 1.5, 5e-4)],
            evals: vec![(2, 1.7)],
        };
        let svg = h.svg(2);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert_eq!(svg.matches("<circle").count(), 1);
        // Step 1 of 2 sits mid-axis; the highest loss (2.0) at the top.
        assert!(svg.contains("points=\"360.0,48.0 672.0,"), "{svg}");
    }
}
