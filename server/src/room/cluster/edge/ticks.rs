//! The edge's handling of a `tick`: each recipient's `update` frame laid
//! out around the tick's entries, byte for byte what a local member gets.
//!
//! - A tick with `moved` listed: one frame per view, the same bytes pushed
//!   to each of its recipients.
//! - An `implied` tick (this shard announced `cluster.implied_moved`):
//!   each recipient's [`KnownView`] gives its `moved`
//!   ([`protocol::peer::implied`]); recipients of one view whose `moved`
//!   came out equal share one frame. A view that does not fit what the
//!   edge tracked asks the owner for a full view (`resync`), so the
//!   tracking cannot drift.
//!
//! Where each member stands is not decoded here: the member keeps its
//! entity's latest entry (a cheap `Bytes` clone) and reads a position
//! from it only when it must re-join elsewhere.

use bytes::Bytes;
use protocol::peer::{entry_seq, EdgeMsg, Member, Tick, TickIds};

use super::late::Outcome;
use super::Inner;
use crate::metrics as m;

/// What the tick handler reuses from one tick to the next.
#[derive(Default)]
pub(super) struct TickScratch {
    frame: Vec<u8>,
    moved: Vec<u32>,
    /// One view's frames by their `moved` (implied ticks).
    frames: Vec<(Vec<u32>, Bytes)>,
    /// Members whose view did not fit: owed a full view.
    drift: Vec<u64>,
    /// The tick's entity ids, read into the same buffers each tick.
    ids: TickIds,
}

/// Lay out and push every recipient's frame of `tick`.
pub(super) fn on_tick(inner: &mut Inner, tick: &Tick, scratch: &mut TickScratch) {
    let mut ids = std::mem::take(&mut scratch.ids);
    ids.reread(tick);
    let mut bad = 0u64;
    scratch.drift.clear();
    for view in &tick.views {
        if !tick.implied {
            scratch.frame.clear();
            if tick.write_update(view, &mut scratch.frame).is_err() {
                bad += 1;
                continue;
            }
            let frame = Bytes::copy_from_slice(&scratch.frame);
            for session in &view.sessions {
                if let Some(member) = inner.members.get(session) {
                    member.link.out.push_state(member.link.epoch, &frame);
                }
            }
            continue;
        }
        scratch.frames.clear();
        for &session in &view.sessions {
            let Some(member) = inner.members.get_mut(&session) else {
                continue;
            };
            match member.view.advance(tick, &ids, view, &mut scratch.moved) {
                Ok(true) => {}
                Ok(false) => scratch.drift.push(session),
                Err(_) => {
                    bad += 1;
                    scratch.drift.push(session);
                    continue;
                }
            }
            let moved = &scratch.moved;
            if moved.is_empty() && view.entered.is_empty() && view.left.is_empty() && !view.full {
                // Nothing for this member (its tracked view was off: a
                // full view is asked for above); a local member would get
                // no frame either.
                continue;
            }
            // Borrowed from the tick's frames: a frame is cloned only for
            // a member whose socket does not take it at once.
            let at = match scratch.frames.iter().position(|(m, _)| m == moved) {
                Some(at) => at,
                None => {
                    // Laid out in its own buffer, which becomes the frame
                    // without a copy (`write_view` sizes it once).
                    let mut out = Vec::new();
                    if tick.write_view(view, moved, &mut out).is_err() {
                        bad += 1;
                        continue;
                    }
                    scratch.frames.push((moved.clone(), Bytes::from(out)));
                    scratch.frames.len() - 1
                }
            };
            member
                .link
                .out
                .push_state(member.link.epoch, &scratch.frames[at].1);
        }
    }
    if bad > 0 {
        metrics::counter!(m::REMOTE_BAD_VIEWS).increment(bad);
    }
    resync(inner, &scratch.drift);
    judge_late_batch(inner, tick, &ids);
    // Each member's latest entry, for a re-join where it stands.
    for member in inner.members.values_mut() {
        if let Some(index) = member.entity.and_then(|e| ids.entry_of(e)) {
            member.seen = tick.entries.get(index as usize).cloned();
        }
    }
    scratch.ids = ids;
}

/// The second input batch that aimed at this tick: made it if every
/// member it carried inputs for shows its last `seq` in the tick's entries
/// (a member's own entity is among them whenever an input was applied).
fn judge_late_batch(inner: &mut Inner, tick: &Tick, ids: &TickIds) {
    let Inner { late, members, .. } = inner;
    let outcome = late.on_tick(tick.tick, |session| {
        let entity = members.get(&session)?.entity?;
        let index = ids.entry_of(entity)?;
        entry_seq(tick.entries.get(index as usize)?)
    });
    let outcome = match outcome {
        Some(Outcome::Made) => "made",
        Some(Outcome::Missed) => "missed",
        None => return,
    };
    metrics::counter!(m::REMOTE_LATE_BATCHES, "outcome" => outcome).increment(1);
}

/// A reliable frame for `session`: its view follows `joined` and
/// reliable updates; one that does not fit asks for a full view.
pub(super) fn observe(inner: &mut Inner, session: u64, frame: &[u8]) {
    let fits = match inner.members.get_mut(&session) {
        Some(member) => member.view.observe_frame(frame),
        None => true,
    };
    if !fits {
        resync(inner, &[session]);
    }
}

/// Ask the owner for full views of `sessions` at its next tick.
fn resync(inner: &Inner, sessions: &[u64]) {
    if sessions.is_empty() {
        return;
    }
    metrics::counter!(m::REMOTE_VIEW_RESYNCS).increment(sessions.len() as u64);
    if let Some(tx) = &inner.tx {
        for &session in sessions {
            let _ = tx.send_msg(&EdgeMsg::Resync(Member { session }));
        }
    }
}
