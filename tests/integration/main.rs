//! tuna's integration tests: one binary (ripgrep's layout), one module per concern.

mod big_model;
mod chat;
mod cli;
mod compare;
mod data;
mod export;
#[cfg(any(feature = "cuda", feature = "metal"))]
mod gpu;
mod hub;
#[cfg(feature = "mpi")]
mod mpi;
mod real_model;
mod study;
mod train;
mod util;
