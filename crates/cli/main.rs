//! The `tuna` binary: parse the command line, run one subcommand, print errors with hints.

mod args;
mod commands;
mod data_args;
mod errors;
mod model_args;

use clap::Parser;

// A pooling allocator: encoding and training allocate and free many short-lived buffers
// (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = args::Cli::parse();
    // Run on a rayon worker: the parallel ops inside then split work by stealing instead of
    // waking the pool from outside and blocking on a latch for every op (measured: f16
    // decode 55.6 -> 74.2 tok/s on 2 cores).
    let result = rayon::scope(|_| match cli.command {
        args::Command::Generate(a) => commands::generate::run(a),
        args::Command::Eval(a) => commands::eval::run(a),
        args::Command::Train(a) => commands::train::run(*a),
        args::Command::Data(a) => commands::data::run(a),
        args::Command::Bench(a) => commands::bench::run(a),
    });
    if let Err(err) = result {
        std::process::exit(errors::report(&err));
    }
}
