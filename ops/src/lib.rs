//! Tessera operations tooling: the admin CLI's calls against a shard's HTTP
//! API (`/healthz`, `/metrics`, `/admin/*`, documented in the README), and
//! the ops console that shows every shard live and acts on them.
//!
//! # Layout
//!
//! - [`client`]: [`Shard`], one shard's typed admin API (every call with a
//!   timeout; errors keep the shard's status and message). The CLI and the
//!   console share it.
//! - [`console`]: `tessera-ops console`: the web page (embedded, no CDN,
//!   no npm), its JSON and server-sent-events API, the [`console::ShardSource`]
//!   seam (a static `--shard` list, or the directory).
//! - [`directory`]: a cluster's directory in Redis, read-only (the shards
//!   registered, alive or dead): `shards ls --redis` and the console's
//!   `--redis` source.
//! - [`drain`]: where `shards drain SHARD` sends the drain (by id through
//!   the directory or `--shard`, or by address).
//! - [`metrics`]: picking samples out of Prometheus text.
//! - [`peers`]: the peer tunnels' registries (`GET /admin/peers`) as text.
//!
//! `ops` never links the server: it meets it at the HTTP API only, whose
//! bodies are the typed documents of [`protocol::admin`] (the same types
//! the server answers with).
//!
//! The shard client is blocking (ureq, already used by the CLI): the
//! console runs its calls on tokio's blocking pool, one per shard per
//! refresh, so one client serves both and no second HTTP stack
//! (reqwest, hyper's client) is needed.

pub mod client;
pub mod console;
pub mod directory;
pub mod drain;
pub mod metrics;
pub mod peers;

pub use client::{CallError, CallResult, Shard};
pub use drain::drain_target;
