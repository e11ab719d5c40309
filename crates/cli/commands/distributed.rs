//! Data-parallel launch for `tuna train`: which engine this process trains over (one
//! process, or a rank of an MPI job started by `mpirun`/`srun`), how a failed rank takes the
//! job down, and `--nproc N`, which starts the ranks itself under `mpirun`.

use anyhow::bail;
use tuna_train::collective::{Collective, Launch, Single};

/// The engine for this process: `Single` when no launcher started it, else the MPI world
/// the launcher set up. A launch this build cannot serve is refused, naming what to build.
pub fn world() -> anyhow::Result<Box<dyn Collective>> {
    let Some(launch) = Launch::from_env() else {
        return Ok(Box::new(Single));
    };
    if !launch.is_mpi() {
        bail!(
            "{} started this process as rank {} of {}, but tuna reduces across processes over MPI only: launch CPU ranks with `mpirun -n {}` or `srun` (tuna train --nproc {} does it for you); NCCL for GPU ranks is not in this build",
            launch.launcher,
            launch.rank,
            launch.world_size,
            launch.world_size,
            launch.world_size
        );
    }
    mpi_world(&launch)
}

#[cfg(feature = "mpi")]
fn mpi_world(launch: &Launch) -> anyhow::Result<Box<dyn Collective>> {
    let world = tuna_train::collective::Mpi::init()?;
    if world.world_size() != launch.world_size || world.rank() != launch.rank {
        bail!(
            "{} says rank {} of {}, MPI says rank {} of {}: this tuna is linked against another MPI than the launcher's",
            launch.launcher,
            launch.rank,
            launch.world_size,
            world.rank(),
            world.world_size()
        );
    }
    Ok(Box::new(world))
}

#[cfg(not(feature = "mpi"))]
fn mpi_world(launch: &Launch) -> anyhow::Result<Box<dyn Collective>> {
    bail!(
        "{} started this process as rank {} of {}, but this tuna was built without MPI: build it with `cargo build --release --features mpi` (needs an MPI library, e.g. Debian's libopenmpi-dev and openmpi-bin)",
        launch.launcher,
        launch.rank,
        launch.world_size
    )
}

/// Ends the whole job after this rank failed with `err` (the other ranks would wait for it
/// in their next all-reduce), saying which rank it was. Returns for one process.
pub fn fail_rank(comm: &dyn Collective, err: &anyhow::Error) {
    if comm.world_size() == 1 {
        return;
    }
    eprintln!(
        "error: rank {} of {} ({}): {err:#}\nthe other ranks are stopped; the run's last checkpoint is kept (tuna train --resume RUN continues from it)",
        comm.rank(),
        comm.world_size(),
        comm.engine()
    );
    comm.abort(1);
}

/// `tuna train --nproc N ...`: the same command line as N ranks under `mpirun` on this
/// machine, each with its share of the cores. Returns the job's exit code.
pub fn spawn_ranks(n: u32) -> anyhow::Result<i32> {
    if !cfg!(feature = "mpi") {
        bail!("--nproc {n}: this tuna was built without MPI: build it with `cargo build --release --features mpi` (needs an MPI library, e.g. Debian's libopenmpi-dev and openmpi-bin)");
    }
    if Launch::from_env().is_some() {
        bail!("--nproc {n}: this process is already a rank of a launched job; pass --nproc only to a tuna started by hand");
    }
    let exe = std::env::current_exe()?;
    let args: Vec<String> = without_nproc(std::env::args().skip(1));
    let mut command = std::process::Command::new("mpirun");
    command.args(["-n", &n.to_string()]).arg(&exe).args(&args);
    eprintln!(
        "--nproc {n}: mpirun -n {n} {} {}",
        exe.display(),
        args.join(" ")
    );
    let status = match command.status() {
        Ok(status) => status,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("--nproc {n}: mpirun is not on PATH (Debian: apt install openmpi-bin)")
        }
        Err(e) => bail!("--nproc {n}: cannot start mpirun: {e}"),
    };
    if !status.success() {
        eprintln!(
            "tuna train --nproc {n}: the job ended with {status} (mpirun names the rank that failed above)"
        );
    }
    Ok(status.code().unwrap_or(1))
}

/// The command line without `--nproc N` / `--nproc=N`.
fn without_nproc(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
        } else if a == "--nproc" {
            skip_value = true;
        } else if !a.starts_with("--nproc=") {
            out.push(a);
        }
    }
    out
}

/// Compute threads for this process: under a launcher, the machine's cores split between
/// the ranks on it (None: no launcher, or it did not say how many ranks share the machine).
pub fn rank_threads(available: usize) -> Option<usize> {
    let local = Launch::from_env()?.local_size?;
    Some((available / local.max(1)).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nproc_is_taken_out_of_the_command_line() {
        let args = [
            "train",
            "--nproc",
            "2",
            "--data",
            "x.jsonl",
            "--nproc=3",
            "--quiet",
        ]
        .map(String::from);
        assert_eq!(
            without_nproc(args.into_iter()),
            ["train", "--data", "x.jsonl", "--quiet"]
        );
    }
}
