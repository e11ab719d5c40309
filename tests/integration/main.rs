//! tuna's integration tests: one binary (ripgrep's layout), one module per concern.

mod cli;
mod compare;
mod data;
mod export;
mod hub;
mod real_model;
mod train;
mod util;
