//! Change capture: which source rows a run reads, and how the lake's partitions
//! absorb them.

pub mod backfill;
pub mod change_stream;
pub mod merge;
pub mod snapshot;
pub mod watermark;
