//! Integration tests of the embedded store: real SQLite files in temporary directories, driven
//! through the `Store` trait as the engine drives it.

mod audit;
mod batches;
mod common;
mod crash;
mod durability;
mod group_commit;
mod migrations;
mod ordering;
mod prune;
mod records;
mod sick_disk;
mod throughput;
