//! tuna-lora: LoRA with PEFT's semantics and names (`r`, `lora_alpha`, `target_modules`,
//! `use_rslora`, A Kaiming-uniform and B zero at init), and PEFT's on-disk layout.
//! https://github.com/huggingface/peft/blob/v0.13.0/src/peft/tuners/lora/layer.py

pub mod adapter;
pub mod config;
pub mod error;
pub mod peft;

pub use adapter::LoraAdapter;
pub use config::{LoraConfig, TargetModules, PROJECTIONS};
pub use error::LoraError;
