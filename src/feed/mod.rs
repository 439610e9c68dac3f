//! The feed store: every change of the tracked tables, with its transaction's context, persisted
//! in the feed database in commit order, together with the checkpoint that says how far the slot's
//! stream is stored (see `migrations/feed/`).
//!
//! Guarantees: a transaction is stored whole or not at all (readers never see part of one); the
//! checkpoint is written in the same database transaction as the changes it covers; the slot is
//! confirmed only up to the checkpoint, and the stream restarts from it, so every change is stored
//! exactly once, in commit order, whatever stops the process.

pub mod stats;
mod write;

pub use write::{FeedWriter, WriteError};
