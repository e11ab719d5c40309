//! A team of threads that stays awake between the batch-1 products of generation.
//!
//! Decoding one token runs about seven weight products per layer, each a few tens of
//! microseconds on two cores, separated by small single-threaded ops (norms, rope,
//! attention over the cache). rayon's idle workers go to sleep within microseconds, so each
//! product paid a futex wake-up of the other core, and tuna's decode scaled 1.15× on two
//! cores where llama.cpp, whose threads spin between ops, scales 2× (BENCHMARKS.md). The
//! helpers here spin for a short while after each job, then sleep on a condition variable.
//!
//! A job is `f(part)` for part in 0..parts; the calling thread takes parts too, and parts are
//! claimed one at a time, so a helper that is slow to wake costs nothing but its share.
//! A job submitted from a second thread while one runs (rayon's workers scoring rows side by
//! side, say) runs on its calling thread alone, so the team never holds more threads than
//! it has.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a helper spins for the next job before it sleeps: longer than the gaps between
/// the products of one token, short enough that an idle tuna gives the core back at once.
const SPIN: Duration = Duration::from_micros(500);

type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// The state word: the job's epoch in the high half, the next unclaimed part in the low half.
/// A claim succeeds only while the epoch is the one whose job pointer the claimer read, so a
/// helper can never run a part of one job with another job's closure.
const PART_BITS: u32 = 32;
const PART_MASK: u64 = (1 << PART_BITS) - 1;

struct Team {
    helpers: usize,
    state: AtomicU64,
    /// The current job: a pointer to a `Job` on the submitting thread's stack, valid while
    /// the job has unfinished parts.
    job: AtomicPtr<()>,
    parts: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
    busy: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

fn team() -> &'static Team {
    static TEAM: OnceLock<&'static Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        let team: &'static Team = Box::leak(Box::new(Team {
            helpers,
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            parts: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for i in 0..helpers {
            let spawned = std::thread::Builder::new()
                .name(format!("tuna-team-{i}"))
                .spawn(move || team.help());
            if spawned.is_err() {
                // Without its helpers the team still runs every job on the caller.
                break;
            }
        }
        team
    })
}

/// The number of threads a job runs on: the caller and the helpers (rayon's thread count).
pub fn threads() -> usize {
    team().helpers + 1
}

/// Runs `f(part)` for every part in `0..parts`, on the team, and returns when all are done.
/// A panic in any part is raised again here.
pub fn for_each_part(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    let team = team();
    let alone = team.helpers == 0 || parts <= 1 || team.busy.swap(true, SeqCst);
    if alone {
        (0..parts).for_each(f);
        return;
    }
    struct Release<'a>(&'a AtomicBool);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.store(false, SeqCst);
        }
    }
    let _release = Release(&team.busy);
    team.run(parts, f);
}

/// Runs `f(index, chunk)` over `data` split into chunks of `chunk` items (the last may be
/// shorter), on the team, like rayon's `par_chunks_mut(chunk).enumerate()`.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    struct Base<T>(*mut T);
    // SAFETY: each part below touches only its own disjoint range of the slice.
    unsafe impl<T: Send> Sync for Base<T> {}
    let chunk = chunk.max(1);
    let len = data.len();
    let base = Base(data.as_mut_ptr());
    let base = &base;
    for_each_part(len.div_ceil(chunk), &|p| {
        let start = p * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: parts are disjoint ranges within `data`, which is borrowed mutably for the
        // duration of the call, and each part runs exactly once.
        let part = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), end - start) };
        f(p, part)
    });
}

impl Team {
    fn run(&self, parts: usize, f: Job) {
        let job: Job = f;
        self.job.store(&job as *const Job as *mut (), SeqCst);
        self.parts.store(parts, SeqCst);
        self.done.store(0, SeqCst);
        self.panicked.store(false, SeqCst);
        let epoch = (self.state.load(SeqCst) >> PART_BITS) + 1;
        self.state.store(epoch << PART_BITS, SeqCst);
        if self.sleepers.load(SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        loop {
            let part = (self.state.fetch_add(1, SeqCst) & PART_MASK) as usize;
            if part >= parts {
                break;
            }
            self.run_part(job, part);
        }
        while self.done.load(SeqCst) < parts {
            std::hint::spin_loop();
        }
        if self.panicked.load(SeqCst) {
            panic!("a part of a team job panicked");
        }
    }

    fn run_part(&self, job: Job, part: usize) {
        if catch_unwind(AssertUnwindSafe(|| job(part))).is_err() {
            self.panicked.store(true, SeqCst);
        }
        self.done.fetch_add(1, SeqCst);
    }

    /// A helper's life: claim parts of each new job, spin a while, sleep.
    fn help(&self) {
        let mut seen = 0u64;
        let mut idle_since = Instant::now();
        let mut polls = 0u32;
        loop {
            let s = self.state.load(SeqCst);
            let (epoch, part) = (s >> PART_BITS, (s & PART_MASK) as usize);
            if epoch != seen {
                if part >= self.parts.load(SeqCst) {
                    seen = epoch; // every part is claimed
                    idle_since = Instant::now();
                    continue;
                }
                let job = self.job.load(SeqCst) as *const Job;
                if self
                    .state
                    .compare_exchange(s, s + 1, SeqCst, SeqCst)
                    .is_ok()
                {
                    // SAFETY: the claim succeeded with the state still at this epoch, so the
                    // job is unfinished (part `part` was unclaimed until now) and its
                    // submitter is waiting in `run`, keeping `job` alive until `done` counts
                    // this part.
                    self.run_part(unsafe { *job }, part);
                }
                continue;
            }
            polls += 1;
            if !polls.is_multiple_of(256) || idle_since.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.sleepers.fetch_add(1, SeqCst);
            let _guard = self
                .wake
                .wait_while(guard, |_| self.state.load(SeqCst) >> PART_BITS == seen)
                .unwrap_or_else(|e| e.into_inner());
            self.sleepers.fetch_sub(1, SeqCst);
            idle_since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_across_many_jobs() {
        for parts in [0, 1, 2, 3, 7, 64] {
            for _ in 0..200 {
                let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                for_each_part(parts, &|p| {
                    hits[p].fetch_add(1, SeqCst);
                });
                assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "parts={parts}");
            }
        }
    }

    #[test]
    fn jobs_from_several_threads_and_after_sleeping_all_complete() {
        std::thread::scope(|s| {
            for t in 0..3 {
                s.spawn(move || {
                    for round in 0..50 {
                        if round % 10 == 0 {
                            // Let the helpers fall asleep, then wake them.
                            std::thread::sleep(SPIN * 3);
                        }
                        let sum = AtomicUsize::new(0);
                        for_each_part(16, &|p| {
                            sum.fetch_add(p + t, SeqCst);
                        });
                        assert_eq!(sum.load(SeqCst), 120 + 16 * t);
                    }
                });
            }
        });
    }

    #[test]
    fn chunks_cover_the_slice_once_with_a_short_last_chunk() {
        let mut v = vec![0usize; 1000];
        for_each_chunk_mut(&mut v, 64, |c, part| {
            for (j, x) in part.iter_mut().enumerate() {
                *x += c * 64 + j + 1;
            }
        });
        assert!(v.iter().enumerate().all(|(i, &x)| x == i + 1));
    }

    #[test]
    fn a_panicking_part_is_raised_in_the_caller_and_the_team_goes_on() {
        let caught = catch_unwind(|| {
            for_each_part(8, &|p| {
                if p == 5 {
                    panic!("part 5");
                }
            })
        });
        assert!(caught.is_err());
        let sum = AtomicUsize::new(0);
        for_each_part(8, &|p| {
            sum.fetch_add(p, SeqCst);
        });
        assert_eq!(sum.load(SeqCst), 28);
    }
}
