//! What drives a lake table from its capture to ClickHouse, whatever the capture
//! mode: the shared commit and load steps ([`table`]), the per-table report
//! ([`report`]) and the signal the models wait on ([`commits`]).

pub mod commits;
pub mod report;
pub mod table;

pub use commits::LakeCommits;
pub use report::{StageSeconds, TableReport};
