//! One world over many shards.
//!
//! - [`tunnel`]: the authenticated QUIC connection between each pair of
//!   shards, its streams by protocol name, registries and heartbeats.

pub mod tunnel;
