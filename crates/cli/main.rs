//! The `tuna` binary: parse the command line, run one subcommand, print errors with hints.

mod args;
mod commands;
mod data_args;
mod errors;
mod model_args;
mod task_args;
mod value_parsers;

use clap::{CommandFactory, FromArgMatches};

// A pooling allocator: encoding and training allocate and free many short-lived buffers
// (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v2's option numbers (c_src/mimalloc/v2/include/mimalloc.h, enum mi_option_e).
const MI_OPTION_ARENA_EAGER_COMMIT: i32 = 4;
const MI_OPTION_PURGE_DELAY: i32 = 15;

/// Keep freed memory mapped: training frees and reallocates the same large activation
/// buffers every step, and returning them to the OS made the kernel zero fresh pages for a
/// third of the run (measured: train 4x256 from 109 to 160 tok/s, BENCHMARKS.md).
fn keep_freed_memory() {
    // Safety: plain option setters of the allocator, called before any thread starts.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 1);
    }
}

/// candle's matmul asks for its thread count on every call, and without RAYON_NUM_THREADS
/// that means reading /proc/cpuinfo (num_cpus::get_physical, uncached in candle-core 0.11):
/// 7% of the main thread's time in batch-1 generation (perf, BENCHMARKS.md). Pin the count
/// it would pick in the variable, and build rayon's pool with the count rayon would pick, so
/// both stay what they were.
fn pin_thread_counts() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return; // both read it already
    }
    let mut candle_threads = candle_core::utils::get_num_threads();
    let mut rayon_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Ranks of a data-parallel job on one machine share its cores.
    if let Some(share) = commands::distributed::rank_threads(rayon_threads) {
        candle_threads = candle_threads.min(share);
        rayon_threads = share;
    }
    // Safety: no other thread exists yet (this runs first in main), so nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", candle_threads.to_string()) };
    // An error means a pool exists already, which cannot happen this early; either way
    // rayon then keeps the pool it has.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon_threads)
        .build_global();
}

fn main() {
    keep_freed_memory();
    pin_thread_counts();
    let command = commands::train::help_with_defaults(args::Cli::command());
    let cli = args::Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    // Run on a rayon worker: the parallel ops inside then split work by stealing instead of
    // waking the pool from outside and blocking on a latch for every op (measured: f16
    // decode 55.6 -> 74.2 tok/s on 2 cores).
    let result = rayon::scope(|_| match cli.command {
        args::Command::Generate(a) => commands::generate::run(a),
        args::Command::Chat(a) => commands::chat::run(a),
        args::Command::Eval(a) => commands::eval::run(*a),
        args::Command::Compare(a) => commands::compare::run(*a),
        args::Command::Export(a) => commands::export::run(a),
        args::Command::Train(a) => commands::train::run(*a),
        args::Command::Study(a) => commands::study::run(*a),
        args::Command::Data(a) => commands::data::run(a),
        args::Command::Bench(a) => commands::bench::run(a),
    });
    if let Err(err) = result {
        std::process::exit(errors::report(&err));
    }
}
