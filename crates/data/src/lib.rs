//! tuna-data: reading JSONL datasets with errors that name the file, line and field.

pub mod error;
pub mod jsonl;
pub mod record;

pub use error::DataError;
pub use jsonl::{read_jsonl, JsonlLine};
pub use record::TextRecord;
