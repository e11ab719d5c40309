//! Data-parallel launch for `tuna train`: which engine this process trains over (one
//! process, a rank of an MPI job started by `mpirun`/`srun`, or a GPU rank of an NCCL job
//! started by `torchrun --no-python`), how a failed rank takes the job down, and
//! `--nproc N`, which starts the ranks itself (under `mpirun` for CPU ranks; as N local
//! processes with torchrun's variables for NCCL ranks).

use anyhow::bail;
use tuna_train::collective::{Collective, Launch, Single};

/// Under torchrun, the GPU of this rank (`cuda:LOCAL_RANK`) for a `--device auto`.
pub fn rank_device(device: &str) -> String {
    match Launch::from_env() {
        Some(l) if !l.is_mpi() && (device == "auto" || device == "cuda") => {
            format!("cuda:{}", l.local_rank.unwrap_or(0))
        }
        _ => device.to_string(),
    }
}

/// The engine for this process: `Single` when no launcher started it, else the MPI world
/// or NCCL group the launcher set up (`device`: the model's, NCCL's GPU). A launch this
/// build cannot serve is refused, naming what to build.
pub fn world(device: &candle_core::Device) -> anyhow::Result<Box<dyn Collective>> {
    let Some(launch) = Launch::from_env() else {
        return Ok(Box::new(Single));
    };
    if launch.is_mpi() {
        mpi_world(&launch)
    } else {
        nccl_world(&launch, device)
    }
}

#[cfg(feature = "nccl")]
fn nccl_world(
    launch: &Launch,
    device: &candle_core::Device,
) -> anyhow::Result<Box<dyn Collective>> {
    if !device.is_cuda() {
        bail!(
            "{} started this process as rank {} of {}: NCCL ranks train on a GPU each (--device auto or cuda:N), not on {device:?}; launch CPU ranks with mpirun",
            launch.launcher, launch.rank, launch.world_size
        );
    }
    let Some(master) = &launch.master else {
        bail!(
            "{}: MASTER_ADDR and MASTER_PORT are needed for rank 0 to hand out NCCL's id",
            launch.launcher
        );
    };
    let comm = tuna_train::collective::Nccl::init(device, launch.rank, launch.world_size, master)?;
    Ok(Box::new(comm))
}

#[cfg(not(feature = "nccl"))]
fn nccl_world(launch: &Launch, _: &candle_core::Device) -> anyhow::Result<Box<dyn Collective>> {
    bail!(
        "{} started this process as rank {} of {}, but this tuna was built without NCCL: build it with `--features nccl` (scripts/build-cuda.sh does) for GPU ranks, or launch CPU ranks with `mpirun -n {}` or `srun` (tuna train --nproc {} does it for you)",
        launch.launcher,
        launch.rank,
        launch.world_size,
        launch.world_size,
        launch.world_size
    )
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

/// `tuna train --nproc N ...`: the same command line as N ranks on this machine: under
/// `mpirun` for CPU ranks (`gpu` false), or, in an NCCL build on a GPU, as N processes
/// with torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), one GPU
/// each. Returns the job's exit code.
pub fn spawn_ranks(n: u32, gpu: bool) -> anyhow::Result<i32> {
    if Launch::from_env().is_some() {
        bail!("--nproc {n}: this process is already a rank of a launched job; pass --nproc only to a tuna started by hand");
    }
    let exe = std::env::current_exe()?;
    let args: Vec<String> = without_nproc(std::env::args().skip(1));
    if gpu && cfg!(feature = "nccl") {
        return spawn_gpu_ranks(n, &exe, &args);
    }
    if !cfg!(feature = "mpi") {
        bail!("--nproc {n}: this tuna was built without MPI: build it with `cargo build --release --features mpi` (needs an MPI library, e.g. Debian's libopenmpi-dev and openmpi-bin)");
    }
    let mut command = std::process::Command::new("mpirun");
    // --bind-to none: mpirun would pin each rank to one core, and the ranks split the
    // machine's cores between them themselves.
    command
        .args(["-n", &n.to_string(), "--bind-to", "none"])
        .arg(&exe)
        .args(&args);
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

/// N local GPU ranks, as torchrun starts them; the first to fail ends the others.
fn spawn_gpu_ranks(n: u32, exe: &std::path::Path, args: &[String]) -> anyhow::Result<i32> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    eprintln!("--nproc {n}: {n} GPU ranks over NCCL (rank 0 at 127.0.0.1:{port})");
    let mut ranks = Vec::new();
    for rank in 0..n {
        let child = std::process::Command::new(exe)
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn()?;
        ranks.push(child);
    }
    let mut code = 0;
    let mut running: Vec<(u32, std::process::Child)> = (0..n).zip(ranks).collect();
    while !running.is_empty() {
        let mut i = 0;
        while i < running.len() {
            match running[i].1.try_wait()? {
                Some(status) => {
                    let (rank, _) = running.remove(i);
                    if !status.success() && code == 0 {
                        code = status.code().unwrap_or(1);
                        eprintln!("tuna train --nproc {n}: rank {rank} ended with {status}; stopping the other ranks (the last checkpoint is kept)");
                        for (_, other) in running.iter_mut() {
                            let _ = other.kill();
                        }
                    }
                }
                None => i += 1,
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(code)
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
