//! The process's CPU time, for the cost columns that count CPU-seconds beside wall time
//! (training and scoring alike).

/// User + system CPU time of this process so far, all threads (Linux: /proc/self/stat, in
/// USER_HZ = 100 ticks); None where that file is not there.
pub fn process_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// A stopwatch of this process's CPU-seconds.
#[derive(Debug, Clone, Copy)]
pub struct CpuTimer(Option<f64>);

impl CpuTimer {
    pub fn start() -> Self {
        Self(process_seconds())
    }

    /// CPU-seconds since `start` (0 where the process's CPU time cannot be read).
    pub fn seconds(&self) -> f64 {
        match (self.0, process_seconds()) {
            (Some(a), Some(b)) => (b - a).max(0.0),
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let Some(before) = process_seconds() else {
            return; // not Linux
        };
        let timer = CpuTimer::start();
        let mut x = 0u64;
        let until = std::time::Instant::now() + std::time::Duration::from_millis(150);
        while std::time::Instant::now() < until {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(process_seconds().unwrap() >= before);
        // 150 ms of spinning: at least a few ticks, and not more than wall time allows.
        let spent = timer.seconds();
        assert!((0.05..5.0).contains(&spent), "{spent}");
    }
}
