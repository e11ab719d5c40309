//! The one small interface data-parallel training needs from a distributed engine: this
//! process's rank, the world size, and a summing all-reduce that leaves the same result on
//! every rank. `Single` is one process (every call a no-op); `Mpi` (cargo feature `mpi`)
//! runs over an MPI library (OpenMPI, MPICH) for CPU processes on one or several machines,
//! launched by `mpirun -n N tuna train ...` or SLURM's `srun`; `Nccl` (cargo feature
//! `nccl`, with `cuda`) over NCCL for one GPU per process, launched by `torchrun
//! --no-python` (rank 0 hands the other ranks NCCL's id over TCP at MASTER_ADDR:MASTER_PORT).
//!
//! The trainer never talks to an engine directly: it shards each micro-batch by rank,
//! reduces the step's target-token count and then the flat LoRA gradient buffer through
//! this trait, and lets rank 0 write the run directory.

use crate::error::TrainError;

pub trait Collective {
    /// This process's rank, 0-based.
    fn rank(&self) -> usize;
    /// How many processes train together.
    fn world_size(&self) -> usize;
    /// The engine's name, for progress and errors ("single", "mpi").
    fn engine(&self) -> &'static str;
    /// Sums `buffer` element-wise over every rank, in place, identically on every rank.
    fn all_reduce_f32(&self, buffer: &mut [f32]) -> Result<(), TrainError>;
    fn all_reduce_f64(&self, buffer: &mut [f64]) -> Result<(), TrainError>;
    /// Ends every rank of the job at once (after one rank failed: the others would wait for
    /// it in the next all-reduce forever). Returns only for a single process.
    fn abort(&self, code: i32);

    /// Whether this rank writes the run directory (checkpoints, metrics, chart).
    fn writes(&self) -> bool {
        self.rank() == 0
    }
}

/// Fails on every rank unless all ranks hold the same `fingerprint` of their starting
/// state (trainer.rs: settings, encoded data, adapter weights, position). A rank that
/// started from a stale copy of the data or of the run directory, or from another build,
/// would otherwise mix its gradients into the others' or wait forever in a collective the
/// others never enter.
pub fn check_same_start(comm: &dyn Collective, fingerprint: u64) -> Result<(), TrainError> {
    let world = comm.world_size();
    // Three 22-bit parts, and their squares: exact in f64 even summed over many ranks.
    // Σx = w·p and Σx² = w·p² hold together only if every rank's x is p (Σ(x − p)² = 0),
    // so each rank sees the same verdict.
    const BITS: u32 = 22;
    let part = |j: u32| ((fingerprint >> (BITS * j)) & ((1 << BITS) - 1)) as f64;
    let parts = [part(0), part(1), part(2)];
    let mut sums = [0f64; 6];
    for (j, p) in parts.iter().enumerate() {
        sums[j] = *p;
        sums[3 + j] = p * p;
    }
    comm.all_reduce_f64(&mut sums)?;
    let w = world as f64;
    let same = parts
        .iter()
        .enumerate()
        .all(|(j, p)| sums[j] == w * p && sums[3 + j] == w * p * p);
    if same {
        return Ok(());
    }
    Err(TrainError::Distributed {
        reason: format!(
            "the {world} ranks do not start from the same state (rank {} differs from at least one other in its settings, its encoded train/valid data, its adapter weights or the checkpoint it resumes from); give every rank the same files and the same tuna build",
            comm.rank()
        ),
    })
}

/// One process: the whole batch here, nothing to reduce.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn engine(&self) -> &'static str {
        "single"
    }
    fn all_reduce_f32(&self, _: &mut [f32]) -> Result<(), TrainError> {
        Ok(())
    }
    fn all_reduce_f64(&self, _: &mut [f64]) -> Result<(), TrainError> {
        Ok(())
    }
    fn abort(&self, _: i32) {}
}

/// The launcher's view of this process: the rank and world size that mpirun, srun or
/// torchrun put in the environment, and which launcher it was. None: launched alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub launcher: &'static str,
    pub rank: usize,
    pub world_size: usize,
    /// Ranks on this machine (for splitting its cores between them).
    pub local_size: Option<usize>,
    /// This process's rank on its machine (its GPU under torchrun).
    pub local_rank: Option<usize>,
    /// Where rank 0 serves NCCL's id (torchrun's MASTER_ADDR:MASTER_PORT).
    pub master: Option<String>,
}

impl Launch {
    /// Reads the launcher's variables from `var` (the process environment in `from_env`).
    pub fn detect(var: &dyn Fn(&str) -> Option<String>) -> Option<Launch> {
        let num = |name: &str| var(name).and_then(|v| v.trim().parse::<usize>().ok());
        let master = match (var("MASTER_ADDR"), var("MASTER_PORT")) {
            (Some(addr), Some(port)) => Some(format!("{addr}:{port}")),
            _ => None,
        };
        // A launcher of one process is no launch, and must not hide another launcher's
        // variables (torchrun inside a one-task SLURM allocation).
        let found = |launcher, rank: &str, size: &str, local: &str, local_rank: &str| {
            Some(Launch {
                launcher,
                rank: num(rank)?,
                world_size: num(size)?,
                local_size: num(local),
                local_rank: num(local_rank),
                master: master.clone(),
            })
            .filter(|l| l.world_size > 1 || l.rank > 0)
        };
        let torchrun = || {
            found(
                "torchrun",
                "RANK",
                "WORLD_SIZE",
                "LOCAL_WORLD_SIZE",
                "LOCAL_RANK",
            )
        };
        // torchrun's own agent marks its workers: they are torchrun's whatever else is set.
        if var("TORCHELASTIC_RUN_ID").is_some() {
            if let Some(l) = torchrun() {
                return Some(l);
            }
        }
        // The MPI launchers first: under srun --mpi=pmix both sets may be there.
        found(
            "mpirun (OpenMPI)",
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
        )
        .or_else(|| {
            found(
                "MPI (PMI)",
                "PMI_RANK",
                "PMI_SIZE",
                "MPI_LOCALNRANKS",
                "MPI_LOCALRANKID",
            )
        })
        .or_else(|| {
            found(
                "srun (SLURM)",
                "SLURM_PROCID",
                "SLURM_NTASKS",
                "SLURM_NTASKS_PER_NODE",
                "SLURM_LOCALID",
            )
        })
        .or_else(torchrun)
    }

    pub fn from_env() -> Option<Launch> {
        Self::detect(&|name| std::env::var(name).ok())
    }

    /// Whether an MPI library runs this process (its ranks then reduce over MPI).
    pub fn is_mpi(&self) -> bool {
        self.launcher != "torchrun"
    }
}

#[cfg(feature = "mpi")]
pub use self::mpi_engine::Mpi;

#[cfg(feature = "mpi")]
mod mpi_engine {
    use mpi::collective::SystemOperation;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::*;

    use super::Collective;
    use crate::error::TrainError;

    /// MPI's world communicator. MPI is initialized with `Threading::Funneled`: every call
    /// comes from the thread that initialized it (the trainer's; the compute threads never
    /// call MPI). Dropping it finalizes MPI.
    pub struct Mpi {
        // Declared first, dropped first: the communicator before MPI_Finalize.
        world: SimpleCommunicator,
        _universe: mpi::environment::Universe,
    }

    impl Mpi {
        /// Initializes MPI; None when it already was (one Mpi per process).
        pub fn init() -> Result<Mpi, TrainError> {
            let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
                .ok_or_else(|| TrainError::Distributed {
                    reason: "MPI was initialized already in this process".into(),
                })?;
            Ok(Mpi {
                world: universe.world(),
                _universe: universe,
            })
        }
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn world_size(&self) -> usize {
            self.world.size() as usize
        }
        fn engine(&self) -> &'static str {
            "mpi"
        }
        fn all_reduce_f32(&self, buffer: &mut [f32]) -> Result<(), TrainError> {
            let send = buffer.to_vec();
            self.world
                .all_reduce_into(&send[..], buffer, SystemOperation::sum());
            Ok(())
        }
        fn all_reduce_f64(&self, buffer: &mut [f64]) -> Result<(), TrainError> {
            let send = buffer.to_vec();
            self.world
                .all_reduce_into(&send[..], buffer, SystemOperation::sum());
            Ok(())
        }
        fn abort(&self, code: i32) {
            self.world.abort(code)
        }
    }
}

#[cfg(feature = "nccl")]
pub use self::nccl_engine::Nccl;

#[cfg(feature = "nccl")]
mod nccl_engine {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use cudarc::driver::CudaStream;
    use cudarc::nccl::safe::{Comm, Id, ReduceOp};

    use super::Collective;
    use crate::error::TrainError;

    /// How long a rank waits for rank 0 to serve NCCL's id.
    const ID_WAIT: Duration = Duration::from_secs(120);

    /// Where the id is served: MASTER_PORT + 1 on MASTER_ADDR (torchrun's agent holds
    /// MASTER_PORT itself for its store).
    fn id_address(master: &str) -> Result<String, TrainError> {
        let bad = || TrainError::Distributed {
            reason: format!("MASTER_ADDR:MASTER_PORT {master:?} is not host:port"),
        };
        let (host, port) = master.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        Ok(format!("{host}:{}", port.checked_add(1).ok_or_else(bad)?))
    }

    /// One GPU per process, reduced over NCCL on the device's own stream (the one candle
    /// computes on, so a reduction follows the backward that produced its gradients).
    pub struct Nccl {
        comm: Comm,
        stream: Arc<CudaStream>,
        rank: usize,
        world: usize,
    }

    fn nccl_error(what: &str, e: impl std::fmt::Debug) -> TrainError {
        TrainError::Distributed {
            reason: format!("NCCL {what}: {e:?}"),
        }
    }

    impl Nccl {
        /// Joins the NCCL job: rank 0 makes the id and serves it at `master` (host:port) to
        /// the `world - 1` other ranks, which fetch it; then every rank joins on `device`.
        pub fn init(
            device: &candle_core::Device,
            rank: usize,
            world: usize,
            master: &str,
        ) -> Result<Nccl, TrainError> {
            let stream = device.as_cuda_device()?.cuda_stream();
            let at = id_address(master)?;
            let id = if rank == 0 {
                let id = Id::new().map_err(|e| nccl_error("id", e))?;
                serve_id(&at, world - 1, id.internal())?;
                id
            } else {
                Id::uninit(fetch_id(&at)?)
            };
            let comm = Comm::from_rank(stream.clone(), rank, world, id)
                .map_err(|e| nccl_error("init", e))?;
            Ok(Nccl {
                comm,
                stream,
                rank,
                world,
            })
        }

        fn reduce<T>(&self, buffer: &mut [T]) -> Result<(), TrainError>
        where
            T: cudarc::driver::DeviceRepr + cudarc::nccl::NcclType + Copy,
        {
            let mut on_device = self
                .stream
                .clone_htod(&*buffer)
                .map_err(|e| nccl_error("copy to the GPU", e))?;
            self.comm
                .all_reduce_in_place(&mut on_device, &ReduceOp::Sum)
                .map_err(|e| nccl_error("all-reduce", e))?;
            self.stream
                .memcpy_dtoh(&on_device, buffer)
                .map_err(|e| nccl_error("copy from the GPU", e))?;
            self.stream
                .synchronize()
                .map_err(|e| nccl_error("synchronize", e))
        }
    }

    /// Serves the id's 128 bytes to `peers` connections, on a thread of its own (rank 0
    /// goes on to join while the others connect).
    fn serve_id(
        master: &str,
        peers: usize,
        id: &[core::ffi::c_char; 128],
    ) -> Result<(), TrainError> {
        let listener = TcpListener::bind(master).map_err(|e| TrainError::Distributed {
            reason: format!(
                "rank 0 cannot listen on {master} (MASTER_PORT + 1) for NCCL's id: {e}"
            ),
        })?;
        let bytes: Vec<u8> = id.iter().map(|&c| c as u8).collect();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(peers) {
                if let Ok(mut s) = stream {
                    let _ = s.write_all(&bytes);
                }
            }
        });
        Ok(())
    }

    /// The id from rank 0, retrying until it listens.
    fn fetch_id(master: &str) -> Result<[core::ffi::c_char; 128], TrainError> {
        let started = Instant::now();
        loop {
            match TcpStream::connect(master) {
                Ok(mut s) => {
                    let _ = s.set_read_timeout(Some(ID_WAIT));
                    let mut bytes = [0u8; 128];
                    s.read_exact(&mut bytes)
                        .map_err(|e| TrainError::Distributed {
                            reason: format!("reading NCCL's id from rank 0 at {master}: {e}"),
                        })?;
                    return Ok(bytes.map(|b| b as core::ffi::c_char));
                }
                Err(_) if started.elapsed() < ID_WAIT => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => {
                    return Err(TrainError::Distributed {
                        reason: format!(
                            "rank 0 did not serve NCCL's id at {master} within {} s: {e}",
                            ID_WAIT.as_secs()
                        ),
                    })
                }
            }
        }
    }

    impl Collective for Nccl {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world_size(&self) -> usize {
            self.world
        }
        fn engine(&self) -> &'static str {
            "nccl"
        }
        fn all_reduce_f32(&self, buffer: &mut [f32]) -> Result<(), TrainError> {
            self.reduce(buffer)
        }
        fn all_reduce_f64(&self, buffer: &mut [f64]) -> Result<(), TrainError> {
            self.reduce(buffer)
        }
        fn abort(&self, code: i32) {
            // NCCL cannot end the other processes; the launcher (torchrun, tuna --nproc)
            // stops them when this one exits.
            std::process::exit(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_launchers_variables_give_rank_and_world() {
        assert_eq!(Launch::detect(&env(&[])), None);
        let ompi = env(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ]);
        let l = Launch::detect(&ompi).unwrap();
        assert_eq!((l.rank, l.world_size, l.local_size), (1, 2, Some(2)));
        assert!(l.is_mpi());
        let slurm = env(&[("SLURM_PROCID", "3"), ("SLURM_NTASKS", "8")]);
        assert_eq!(Launch::detect(&slurm).unwrap().launcher, "srun (SLURM)");
        let torch = env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_WORLD_SIZE", "4"),
        ]);
        let l = Launch::detect(&torch).unwrap();
        assert_eq!((l.launcher, l.world_size), ("torchrun", 4));
        assert!(!l.is_mpi());
        // One process of one is no distributed launch (srun -n 1, mpirun -n 1).
        assert_eq!(
            Launch::detect(&env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")])),
            None
        );
        // A one-task SLURM allocation does not hide torchrun's ranks inside it.
        let nested = env(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("RANK", "2"),
            ("WORLD_SIZE", "4"),
        ]);
        assert_eq!(Launch::detect(&nested).unwrap().launcher, "torchrun");
        // A variable that is not a number is no launch.
        assert_eq!(
            Launch::detect(&env(&[("RANK", "zero"), ("WORLD_SIZE", "2")])),
            None
        );
    }
}
