//! The `tuna` binary: parse the command line, run one subcommand, print errors with hints.

mod args;
mod commands;
mod errors;
mod model_args;

use clap::Parser;

fn main() {
    let cli = args::Cli::parse();
    let result = match cli.command {
        args::Command::Generate(a) => commands::generate::run(a),
        args::Command::Eval(a) => commands::eval::run(a),
        args::Command::Bench(a) => commands::bench::run(a),
    };
    if let Err(err) = result {
        std::process::exit(errors::report(&err));
    }
}
