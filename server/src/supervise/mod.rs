//! The task supervisor: restarts the shard's long-lived async tasks after a
//! panic, with backoff, within a restart intensity, until shutdown.
//!
//! # The supervision tree
//!
//! ```text
//! tessera-server (one process; past every supervisor: systemd or Kubernetes)
//! ├─ thread "tessera-system" (actix System)
//! │  ├─ RoomSupervisor          one_for_one per map; MaxR supervision.max_restarts
//! │  │  │                       in MaxT supervision.restart_window_ms
//! │  │  └─ Room × M             restarted from its snapshot (panic or stall),
//! │  │                          on room Arbiters, or on extra ones (at most
//! │  │                          supervision.max_extra_arbiters) while every
//! │  │                          room thread is blocked
//! │  ├─ task Supervisor         this module; per child: backoff, MaxR
//! │  │  │                       supervision.child_max_restarts in MaxT
//! │  │  │                       supervision.child_restart_window_ms
//! │  │  ├─ "gateway"  permanent accept loop; same listener (Arc) on restart
//! │  │  ├─ "http"     permanent axum server; same listener on restart
//! │  │  ├─ "sampler"  permanent dispatcher queue depths, seat pruning
//! │  │  └─ "watchdog" permanent room heartbeats and stalls
//! │  └─ Session × N             never restarted: the client resumes its seat
//! └─ thread "tessera-store" (the persister's own tokio runtime)
//!    ├─ task Supervisor
//!    │  └─ "persister" permanent the flusher loop; its state (dirty map,
//!    │                           store handle, health) lives in the
//!    │                           persister, so a restart loses nothing
//!    └─ final flush              once, after the supervisor stopped
//! ```
//!
//! In cluster mode a second task supervisor, the cluster's, runs
//! "directory" (the shard's Redis record and leases), "peers" (the
//! tunnels to the shards the directory lists), "swim" (their probes),
//! "relay", "seats" and "inbox" (`cluster::peering`, `peer_inbox`); it is
//! stopped after the final flush. The dispatcher is a plain struct
//! (publishing runs in the caller), so it has no task of its own; its
//! queue-depth sampler is the "sampler" child.
//!
//! # Restart types (as OTP defines them)
//!
//! - [`Restart::Permanent`]: always restarted, whether it panicked or
//!   returned (a long-lived task that returns before shutdown is a bug).
//! - [`Restart::Transient`]: restarted only after a panic; returning is a
//!   normal end.
//! - [`Restart::Temporary`]: never restarted.
//!
//! A child is a name, a restart type and a factory that builds a fresh
//! future from shared handles each time, so that a restart rebuilds its
//! state from what outlives it (an `Arc` of shared state, a listener).
//! Panics are caught at the child's boundary (`catch_unwind`), logged with
//! the child's name and message, and counted. Restarts wait an exponential
//! backoff with jitter (`child_backoff_min_ms` doubling up to
//! `child_backoff_max_ms`), which starts over once a child has run for
//! `child_backoff_reset_ms`. A child restarted more than
//! `child_max_restarts` times within `child_restart_window_ms` is given up:
//! logged at error level, counted, shown as `failed` in `/healthz` (whose
//! `status` is then `degraded`, so the process manager can replace the
//! shard: the escalation to the supervisor's parent).
//!
//! Shutdown: children watch the same stop signal and return on their own
//! (the HTTP server finishes its requests); a child that has not returned
//! `shutdown` after the signal is dropped. Nothing is restarted once the
//! signal is set.
//!
//! Fault injection (`POST /admin/faults/task?name=`) makes a running child
//! panic at its next poll, inside its own boundary, like a real panic would.
//!
//! Actors have boundaries of their own ([`catch`]): every handler and
//! continuation of a room or session runs behind one, under a name that is
//! also a [`FaultPoints`] point a drill can arm.
//!
//! # Layout
//!
//! - `children.rs`: a [`Child`] (name, [`Restart`] type, factory), its
//!   [`ChildState`], the supervisor's [`Settings`], an [`Outcome`].
//! - `tasks.rs`: the [`Tasks`] registry (`/healthz`, `/admin/tasks`,
//!   task fault injection).
//! - `supervisor.rs`: the [`Supervisor`] and its restart loop.
//! - `faults.rs`: [`FaultPoints`] inside actor handlers.
//! - `backoff.rs`, `intensity.rs`, `panic.rs`: the parts below.
//!
//! # One of each
//!
//! Every supervisor in the shard (this one, the room supervisor, the
//! persister's retry loops, the room's ground) uses the same three parts:
//! [`Backoff`] (exponential with jitter, min/max/reset), [`Intensity`]
//! (MaxR restarts in MaxT) and the panic boundary ([`catch`] for closures,
//! [`catch_future`] for futures, [`panic_text`] for a payload).

mod backoff;
mod children;
mod faults;
mod intensity;
mod panic;
mod supervisor;
mod tasks;

pub use backoff::Backoff;
pub use children::{Child, ChildState, Outcome, Restart, Settings};
pub use faults::{ArmError, FaultActor, FaultPoints};
pub use intensity::{Intensity, TooManyRestarts};
pub use panic::{catch, catch_future, panic_text};
pub use supervisor::Supervisor;
pub use tasks::{ChildReport, Tasks, UnknownTask};
