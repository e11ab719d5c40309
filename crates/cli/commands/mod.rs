pub mod bench;
pub mod chat;
pub mod compare;
pub mod data;
pub mod eval;
pub mod export;
pub mod generate;
pub mod train;
