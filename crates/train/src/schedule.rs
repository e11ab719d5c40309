//! Learning-rate schedules with linear warmup, as transformers' get_*_schedule_with_warmup.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// The rate for optimizer step `step` (1-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step <= self.warmup_steps && self.warmup_steps > 0 {
            return self.peak * step as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps.min(step)) as f64 / decay_steps).clamp(0.0, 1.0);
        match self.kind {
            ScheduleKind::Constant => self.peak,
            ScheduleKind::Linear => self.peak * (1.0 - progress),
            ScheduleKind::Cosine => {
                self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = |kind| Schedule {
            kind,
            peak: 1.0,
            warmup_steps: 2,
            total_steps: 10,
        };
        assert_eq!(s(ScheduleKind::Linear).lr(1), 0.5);
        assert_eq!(s(ScheduleKind::Linear).lr(2), 1.0);
        assert!((s(ScheduleKind::Linear).lr(6) - 0.5).abs() < 1e-12);
        assert_eq!(s(ScheduleKind::Linear).lr(10), 0.0);
        assert!((s(ScheduleKind::Cosine).lr(6) - 0.5).abs() < 1e-12);
        assert_eq!(s(ScheduleKind::Constant).lr(9), 1.0);
    }
}
