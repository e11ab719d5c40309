//! tuna-model: the Llama-family decoder and everything needed to load a pretrained model
//! (config, weights, tokenizer, chat template) from a GGUF file, a Hugging Face directory or
//! a hub id.

pub mod amx;
pub mod backprop;
pub mod bf16_weight;
pub mod block_dot;
pub mod chat;
pub mod compact;
pub mod config;
pub mod cpu_time;
pub mod decoder;
pub mod dense;
pub mod device;
pub mod dpbf16;
pub mod error;
pub mod export;
pub mod frozen;
pub mod gguf;
pub mod int8_rows;
pub mod kv_cache;
pub mod layout;
pub mod linear;
pub mod lora;
pub mod matvec;
pub mod ops;
pub mod pretrained;
pub mod quant_weight;
pub mod rope;
pub mod source;
pub mod team;
pub mod tokenizer;
pub mod vexp;
pub mod weights;

pub use backprop::{TrainBatch, TrainPass};
pub use chat::{ChatTemplate, Message};
pub use config::LlamaConfig;
pub use decoder::{Llama, Packing};
pub use error::ModelError;
pub use kv_cache::KvCache;
pub use layout::{AttentionLayout, Branch};
pub use linear::WeightFormat;
pub use ops::Kernels;
pub use pretrained::{LoadOptions, ModelText, Pretrained};
pub use tokenizer::Tokenizer;
