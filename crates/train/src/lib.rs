//! tuna-train: LoRA fine-tuning. `train()` in `trainer.rs` reads top to bottom; the optimizer,
//! schedule, loss, checkpoints, events and the run's chart each have their own file.

pub mod chart;
pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod error;
pub mod events;
pub mod loss;
pub mod optim;
pub mod run_dir;
pub mod schedule;
pub mod task_metric;
pub mod trainer;

pub use config::TrainConfig;
pub use error::TrainError;
pub use events::TrainEvent;
pub use trainer::{train, train_on, TrainOutcome};
