//! The system tests, built into one binary: one link instead of one per file, and one place
//! to see what is covered. Each module is one area, over real sockets, against real Redis,
//! PostgreSQL and a Kafka-protocol broker.
//!
//! Two areas have binaries of their own because they read process-wide metrics that the
//! tests here would move: `single_flight` (counts backend lookups) and `kafka_down` (counts
//! codes drawn on demand). `embedded`'s on-demand test reads that counter too, and is
//! the only test here that draws codes on demand.

mod analytics;
mod api_keys;
mod backup;
mod batch;
mod binding_store;
mod changes;
mod console;
mod crash;
mod degradation;
mod distributed;
mod embedded;
mod idempotency;
mod issuers;
mod listener;
mod pages;
mod redirect;
mod startup;
