//! tuna-data: JSONL datasets to training examples. Reading with file:line errors, record
//! kinds, encoding through the model's chat template with loss masks, truncation, batching,
//! packing and splits. Nothing else in tuna decides which tokens are trained on.

pub mod batch;
pub mod dataset;
pub mod encode;
pub mod error;
pub mod jsonl;
pub mod record;

pub use batch::{epoch_plan, make_batch, Batch, BatchOptions};
pub use dataset::{Dataset, ShotPool};
pub use encode::{EncodeOptions, Encoded, Encoder, Example, PromptFormat, Truncation};
pub use error::DataError;
pub use jsonl::{read_jsonl, JsonlLine};
pub use record::{parse_records, FieldNames, LineRecord, Record, RecordKind};
