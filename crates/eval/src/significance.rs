//! Tests for comparing arms scored on the same rows: the exact McNemar test on the rows two
//! arms disagree on, Holm's correction when one arm is compared with several, the smallest
//! difference this many rows could detect, and when a one-off training cost pays for itself.

use serde::Serialize;

/// ln C(n, k), by summing logs (exact enough for the n of a test set).
fn ln_choose(n: u64, k: u64) -> f64 {
    let k = k.min(n - k);
    (0..k)
        .map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln())
        .sum()
}

/// The exact two-sided McNemar test: of the `b + c` rows where exactly one of two arms is
/// right (b: only the first, c: only the second), how surprising the split is if either is as
/// likely: p = min(1, 2 · P(X ≤ min(b, c))) with X ~ Binomial(b + c, 1/2). 1 when they never
/// disagree.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let low = b.min(c);
    let tail: f64 = (0..=low)
        .map(|k| (ln_choose(n, k) - n as f64 * std::f64::consts::LN_2).exp())
        .sum();
    (2.0 * tail).min(1.0)
}

/// Holm's step-down adjustment of `p` values for a family of comparisons: sorted ascending,
/// the i-th (0-based) of m is multiplied by m − i, then made non-decreasing and capped at 1.
/// Returned in the input's order.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

/// The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The smallest accuracy difference between two arms that `n` paired rows detect with
/// probability `power` at two-sided level `alpha`, when the arms disagree on a share
/// `discordant` of the rows (Connor's normal approximation for McNemar's test:
/// δ = (z₁₋α/₂ · √ψ + z_power · √(ψ − δ²)) / √n, solved by iteration; ψ the discordant
/// share). NaN when nothing can be detected (no rows or no disagreement).
pub fn minimum_detectable_difference(n: usize, discordant: f64, alpha: f64, power: f64) -> f64 {
    if n == 0 || discordant <= 0.0 {
        return f64::NAN;
    }
    let psi = discordant.min(1.0);
    let (za, zb) = (normal_quantile(1.0 - alpha / 2.0), normal_quantile(power));
    let mut delta = (za + zb) * psi.sqrt() / (n as f64).sqrt();
    for _ in 0..50 {
        let next =
            (za * psi.sqrt() + zb * (psi - delta * delta).max(0.0).sqrt()) / (n as f64).sqrt();
        if (next - delta).abs() < 1e-12 {
            break;
        }
        delta = next;
    }
    delta.min(psi)
}

/// When tuning pays for itself against a prompting arm: its one-off training time is repaid
/// by the seconds it saves on each query.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BreakEven {
    /// Seconds per query of the tuned arm and of the prompting arm, on this machine.
    pub tuned_s_per_query: f64,
    pub prompt_s_per_query: f64,
    pub training_s: f64,
    /// Queries after which tuning costs less in all (None: it never does — the tuned arm
    /// is no faster per query).
    pub queries: Option<f64>,
}

pub fn break_even(training_s: f64, tuned_s_per_query: f64, prompt_s_per_query: f64) -> BreakEven {
    let saved = prompt_s_per_query - tuned_s_per_query;
    BreakEven {
        tuned_s_per_query,
        prompt_s_per_query,
        training_s,
        queries: (saved > 0.0).then(|| (training_s / saved).ceil()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_hand_computed_binomial_tails() {
        // b = 0, c = 5: 2 · (1/2)^5 = 0.0625.
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-12);
        // b = 1, c = 9: 2 · (1 + 10) / 1024 = 0.021484375.
        assert!((mcnemar_exact(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        // Symmetric, and an even split is no evidence at all.
        assert_eq!(mcnemar_exact(9, 1), mcnemar_exact(1, 9));
        assert_eq!(mcnemar_exact(4, 4), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // b = 3, c = 12: 2 · (1 + 15 + 105 + 455) / 32768 = 0.03515625.
        assert!((mcnemar_exact(3, 12) - 1152.0 / 32768.0).abs() < 1e-12);
    }

    #[test]
    fn holm_follows_the_textbook_example() {
        // Holm (1979)-style example: p = 0.01, 0.04, 0.03, 0.005 (m = 4): sorted 0.005, 0.01,
        // 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03,
        // 0.06, 0.06.
        let adjusted = holm(&[0.01, 0.04, 0.03, 0.005]);
        let want = [0.03, 0.06, 0.06, 0.02];
        for (a, w) in adjusted.iter().zip(want) {
            assert!((a - w).abs() < 1e-12, "{adjusted:?}");
        }
        assert_eq!(holm(&[0.6, 0.9]), vec![1.0, 1.0]);
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn the_normal_quantile_and_the_detectable_difference() {
        assert!((normal_quantile(0.975) - 1.959964).abs() < 1e-6);
        assert!((normal_quantile(0.8) - 0.841621).abs() < 1e-6);
        assert!((normal_quantile(0.5)).abs() < 1e-12);
        // n = 200 rows, arms disagreeing on 30% of them: δ solves
        // δ = (1.95996 · √0.3 + 0.84162 · √(0.3 − δ²)) / √200: from the first guess
        // 2.80158 · √0.3 / √200 = 0.108505, two iterations by hand give 0.107859, 0.107866.
        let d = minimum_detectable_difference(200, 0.3, 0.05, 0.8);
        assert!((d - 0.107866).abs() < 1e-5, "{d}");
        // Four times the rows halve it (roughly: the δ² term shrinks too).
        let d4 = minimum_detectable_difference(800, 0.3, 0.05, 0.8);
        assert!((d4 / d - 0.5).abs() < 0.01, "{d4} vs {d}");
        assert!(minimum_detectable_difference(0, 0.3, 0.05, 0.8).is_nan());
    }

    #[test]
    fn break_even_counts_the_queries_that_repay_training() {
        // 80 s of training, 0.30 s a query tuned against 0.45 s prompted: 80 / 0.15 = 533.3.
        let b = break_even(80.0, 0.30, 0.45);
        assert_eq!(b.queries, Some(534.0));
        // A tuned arm no faster per query never repays its training.
        assert_eq!(break_even(80.0, 0.45, 0.30).queries, None);
    }
}
