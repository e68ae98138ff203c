//! The `/tessera/room/1` stream: one per (edge shard, room), opened by the
//! edge (the shard holding the players' sockets) to the room's owner.
//!
//! The edge keeps each remote member's session, input queue and outbound
//! queue; the owner runs the room. Inputs go up in one batch per tick;
//! each tick the owner sends one [`Tick`] per edge with every entry it
//! needs encoded **once** and one [`View`] per distinct view of that
//! edge's members, listing its recipients, so an entity's update crosses
//! the tunnel once per shard, not once per player. The edge lays out each
//! view's `update` frame with [`Tick::write_update`] (the same bytes the
//! owner would have sent a local member, see [`crate::assemble`]) and
//! pushes it to the recipients' outbound queues.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::entry_index::EntryIndex;
use crate::assemble::write_update;
use crate::msg::EntityId;

/// A session on the edge shard (its `SessionId`).
pub type SessionId = u64;

/// A member's movement intent, as a compact array `[session, seq, dx, dy]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(
    from = "(SessionId, u32, f32, f32)",
    into = "(SessionId, u32, f32, f32)"
)]
pub struct Input {
    pub session: SessionId,
    pub seq: u32,
    pub dx: f32,
    pub dy: f32,
}

impl From<(SessionId, u32, f32, f32)> for Input {
    fn from((session, seq, dx, dy): (SessionId, u32, f32, f32)) -> Input {
        Input {
            session,
            seq,
            dx,
            dy,
        }
    }
}

impl From<Input> for (SessionId, u32, f32, f32) {
    fn from(i: Input) -> Self {
        (i.session, i.seq, i.dx, i.dy)
    }
}

/// Seat a player of the edge in the room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteJoin {
    pub session: SessionId,
    pub player: String,
    pub name: String,
    /// The room (`lobby`, `lobby#2`).
    pub room: String,
    /// A resumed seat (the player had one and comes back to it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resume: bool,
    /// Where to place a new entity (`[x, y]`): the player's saved
    /// position, or, when the edge re-joins its members after the owner
    /// went away, where the edge last saw them. Absent: the map's spawn.
    /// Added in 1.0 (optional; older peers ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<[f32; 2]>,
    /// The edge tracks each member's view and computes `moved` itself:
    /// the owner may send this stream's ticks with `implied` set (see
    /// [`crate::peer::implied`]). Absent when false; an owner that does
    /// not know the field ignores it and keeps sending `moved`. Added in
    /// 1.1 (optional).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub implied_moved: bool,
}

/// A member named by its edge session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub session: SessionId,
}

/// The inputs the edge's members sent since the last batch, one batch per
/// tick of the room at most.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Inputs {
    pub batch: Vec<Input>,
}

/// A chat line a member sent to the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteChat {
    pub session: SessionId,
    pub text: String,
}

/// What an edge says to a room's owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeMsg {
    Join(RemoteJoin),
    /// The member left the room (a `leave`).
    Leave(Member),
    /// The member's socket dropped: its seat is kept for the resume grace.
    Disconnected(Member),
    Inputs(Inputs),
    Chat(RemoteChat),
    /// The member's outbound queue dropped update frames (a slow client)
    /// and has drained: it is owed a full view at the next tick. Added in
    /// 1.0 (appended).
    Resync(Member),
    /// A `give` by the member: who is the target? Added in 1.0 (appended).
    WhoIs(super::calls::WhoIs),
    /// A `pick_up` by the member, run on the owner. Added in 1.0
    /// (appended).
    PickUp(super::calls::RemotePickUp),
}

/// The member is seated; its frames (`joined` first) follow as
/// [`Reliable`] and [`Tick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteJoined {
    pub session: SessionId,
    pub you: EntityId,
}

/// The join was refused with a client error code (`protocol::ErrorCode`),
/// which the edge answers its client with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRefused {
    pub session: SessionId,
    pub code: u16,
    #[serde(default)]
    pub message: String,
}

/// A frame for one member, to be sent in order with its other reliable
/// frames (`joined`, `left`, chat, errors, notices, `items`): a whole
/// encoded `ServerMsg`, passed through as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reliable {
    pub session: SessionId,
    pub frame: Bytes,
}

/// One reliable frame for several members (chat, announcements, map
/// broadcasts: the same bytes for everyone), so it crosses the tunnel
/// once; the edge pushes it to each, in order with their other reliable
/// frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fanout {
    pub sessions: Vec<SessionId>,
    pub frame: Bytes,
}

/// The room stream ends: the room stopped, failed or moved away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closed {
    /// A client error code the edge tells its members (e.g. 3005, room
    /// failed), or 0 for an orderly stop.
    pub code: u16,
    pub reason: String,
}

/// What one distinct view of a tick shows, and who sees it. On the wire
/// it is the array `[sessions, entered, moved, left, full]`, each index
/// list a bitmap or an array (see `tick_wire.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    /// The edge's members that get this view's frame.
    pub sessions: Vec<SessionId>,
    /// Indices into [`Tick::entries`]: each an encoded `Entity`.
    pub entered: Vec<u32>,
    /// Indices into [`Tick::entries`]: each an encoded `Moved`.
    pub moved: Vec<u32>,
    /// Entity ids gone from view.
    pub left: Vec<EntityId>,
    /// The update replaces the whole view (`update.full`).
    pub full: bool,
}

/// One tick of a room for one edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    pub room: String,
    pub tick: u64,
    /// Each entry any view of this edge needs, encoded once
    /// ([`crate::assemble::encode_entity`] or
    /// [`crate::assemble::encode_moved`]); on the wire, back to back in
    /// one `bin` (see `tick_wire.rs`).
    #[serde(with = "super::tick_wire::entries")]
    pub entries: Vec<Bytes>,
    pub views: Vec<View>,
    /// The views' `moved` are left empty: each recipient's is the tick's
    /// `Moved` entries whose entity is in the view the edge tracks for it
    /// (see [`crate::peer::implied`]). Sent only to an edge that announced
    /// it (`join.implied_moved`). Absent when false. Added in 1.1.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub implied: bool,
}

/// A view that names an entry the tick does not carry.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("view names entry {index}, the tick has {len}")]
pub struct TickError {
    pub index: u32,
    pub len: usize,
}

impl Tick {
    /// Append `view`'s `update` frame to `out`: byte for byte the frame
    /// the owner would send a local member with that view.
    pub fn write_update(&self, view: &View, out: &mut Vec<u8>) -> Result<(), TickError> {
        self.write_view(view, &view.moved, out)
    }

    /// [`Tick::write_update`] with `moved` in place of the view's own
    /// list: how an edge lays out one recipient's frame of an `implied`
    /// tick.
    pub fn write_view(
        &self,
        view: &View,
        moved: &[u32],
        out: &mut Vec<u8>,
    ) -> Result<(), TickError> {
        // Every index checked first, so the frame is laid out straight
        // from the entries: collecting them into lists first grew two
        // vectors per frame (a realloc each doubling, about 1 % of an
        // edge's CPU in the hop's profile). The same pass sums the
        // entries, so the frame's buffer is sized once: grown as it was
        // written, it was reallocated (and copied) a few times a frame.
        out.reserve(self.frame_bound(view, moved)?);
        let entry = |&index: &u32| self.entries[index as usize].as_ref();
        write_update(
            out,
            self.tick,
            view.entered.iter().map(entry),
            moved.iter().map(entry),
            &view.left,
            view.full,
        );
        Ok(())
    }

    /// At most how many bytes [`Tick::write_view`] appends for `view`
    /// with `moved`: its entries' bytes, each `left` id at its longest
    /// and the frame's fixed fields at theirs; an error for an index the
    /// tick does not carry.
    fn frame_bound(&self, view: &View, moved: &[u32]) -> Result<usize, TickError> {
        let len = self.entries.len();
        let mut bytes = 0;
        for &index in view.entered.iter().chain(moved) {
            match self.entries.get(index as usize) {
                Some(entry) => bytes += entry.len(),
                None => return Err(TickError { index, len }),
            }
        }
        // A uint is at most 9 bytes, an array header 5 (see
        // `assemble::write_update` for the fields).
        Ok(bytes + UPDATE_FIXED_MAX + 9 * view.left.len())
    }
}

/// The longest an `update` frame's fixed fields encode: its map headers
/// (1 + 1), the keys "update", "tick", "entered", "moved", "left" and
/// "full" (7 + 5 + 8 + 6 + 5 + 5), the tick (9), the three array headers
/// (3 x 5) and `full` (1).
const UPDATE_FIXED_MAX: usize = 2 + 36 + 9 + 15 + 1;

/// The entity id and position an entry (an encoded `Entity` or `Moved`)
/// carries, or `None` for bytes that are not one. An edge keeps where its
/// members stand this way, to re-join them there if the owner goes away.
pub fn entry_position(entry: &[u8]) -> Option<(EntityId, f32, f32)> {
    entry_state(entry).map(|(id, x, y, _)| (id, x, y))
}

/// The `seq` of a tick's entry: the last input applied to the entity.
/// `None` if the bytes are neither an `Entity` nor a `Moved`, or carry
/// no `seq`.
pub fn entry_seq(entry: &[u8]) -> Option<u32> {
    entry_state(entry).and_then(|(_, _, _, seq)| seq)
}

/// An entry's `(id, x, y, seq)`, whichever of its encodings it is. A map
/// without `seq` still has a position.
fn entry_state(entry: &[u8]) -> Option<(EntityId, f32, f32, Option<u32>)> {
    // An `Entity` is a map, a `Moved` the array `[id, x, y, seq]`.
    #[derive(Deserialize)]
    struct State {
        id: EntityId,
        x: f32,
        y: f32,
        #[serde(default)]
        seq: Option<u32>,
    }
    if let Ok((id, x, y, seq)) =
        crate::codec::decode::<(EntityId, f32, f32, u32)>(entry, entry.len())
    {
        return Some((id, x, y, Some(seq)));
    }
    let s: State = crate::codec::decode(entry, entry.len()).ok()?;
    Some((s.id, s.x, s.y, s.seq))
}

/// Which of an entity's two encodings an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// An `Entity` (for `update.entered`).
    Entered,
    /// A `Moved` (for `update.moved`).
    Moved,
}

/// Builds one edge's [`Tick`] at the owner: each entity's entry goes in
/// once however many of the edge's members see it, and members whose
/// views are equal share one [`View`] listing them all.
///
/// A builder can be reused tick after tick ([`TickBuilder::reset`] and
/// [`TickBuilder::take`]): its tables keep their room.
#[derive(Debug)]
pub struct TickBuilder {
    tick: Tick,
    entries: EntryIndex,
    // foldhash, not SipHash: the keys are index lists, and SipHash was a
    // third of building a tick (a profile of the hop, BENCHMARKS.md).
    views: HashMap<ViewKey, usize, RandomState>,
}

/// What makes two views the same view.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ViewKey {
    entered: Vec<u32>,
    moved: Vec<u32>,
    left: Vec<EntityId>,
    full: bool,
}

impl TickBuilder {
    pub fn new(room: impl Into<String>, tick: u64) -> TickBuilder {
        TickBuilder {
            tick: Tick {
                room: room.into(),
                tick,
                entries: Vec::new(),
                views: Vec::new(),
                implied: false,
            },
            entries: EntryIndex::default(),
            views: HashMap::default(),
        }
    }

    /// Start over for `tick` of `room` (not implied), keeping the tables
    /// of the ticks built before.
    pub fn reset(&mut self, room: &str, tick: u64) {
        self.entries.clear();
        self.views.clear();
        self.tick.room.clear();
        self.tick.room.push_str(room);
        self.tick.tick = tick;
        self.tick.entries.clear();
        self.tick.views.clear();
        self.tick.implied = false;
    }

    /// The index of `id`'s entry of `kind`; `bytes` (the entry as the room
    /// encoded it this tick, see [`crate::assemble`]) is asked for only
    /// the first time.
    pub fn entry(&mut self, id: EntityId, kind: EntryKind, bytes: impl FnOnce() -> Bytes) -> u32 {
        let entries = &mut self.tick.entries;
        self.entries.index_of(id, kind, || entries.push(bytes()))
    }

    /// The edge computes each member's `moved` itself (it announced
    /// `implied_moved`): views leave `moved` out, so members whose views
    /// differ only in what moved share one view. The `Moved` entries still
    /// go in through [`TickBuilder::entry`].
    pub fn implied(mut self) -> TickBuilder {
        self.tick.implied = true;
        self
    }

    /// Whether this tick's `moved` is implied ([`TickBuilder::implied`]).
    pub fn is_implied(&self) -> bool {
        self.tick.implied
    }

    /// `session` sees this view: added to the recipients of an equal view
    /// already in the tick, or as a new one.
    pub fn view(
        &mut self,
        session: SessionId,
        entered: Vec<u32>,
        mut moved: Vec<u32>,
        left: Vec<EntityId>,
        full: bool,
    ) {
        if self.tick.implied {
            moved.clear();
        }
        let key = ViewKey {
            entered,
            moved,
            left,
            full,
        };
        if let Some(&i) = self.views.get(&key) {
            self.tick.views[i].sessions.push(session);
            return;
        }
        self.tick.views.push(View {
            sessions: vec![session],
            entered: key.entered.clone(),
            moved: key.moved.clone(),
            left: key.left.clone(),
            full,
        });
        self.views.insert(key, self.tick.views.len() - 1);
    }

    /// Nothing to send: no view.
    pub fn is_empty(&self) -> bool {
        self.tick.views.is_empty()
    }

    /// The tick, its entries numbered in (kind, entity id) order, `Moved`
    /// entries first: a room
    /// lists each view in entity order, so every view's indices come out
    /// ascending and travel as bitmaps (see `tick_wire.rs`).
    pub fn finish(mut self) -> Tick {
        self.take()
    }

    /// [`TickBuilder::finish`], leaving the builder empty for another
    /// tick ([`TickBuilder::reset`]).
    pub fn take(&mut self) -> Tick {
        let tick = Tick {
            room: self.tick.room.clone(),
            tick: self.tick.tick,
            entries: Vec::new(),
            views: Vec::new(),
            implied: self.tick.implied,
        };
        let mut tick = std::mem::replace(&mut self.tick, tick);
        // `Moved` entries first: they are most of a tick, so the `moved`
        // bitmaps start at index 0 and stay short.
        let mut order: Vec<((bool, EntityId), u32)> = self
            .entries
            .keys()
            .iter()
            .enumerate()
            .map(|(i, &(kind, id))| ((kind == EntryKind::Entered, id), i as u32))
            .collect();
        self.entries.clear();
        self.views.clear();
        order.sort_unstable_by_key(|&(key, _)| key);
        // `renumber[old] = new`.
        let mut renumber = vec![0u32; order.len()];
        let mut sorted = Vec::with_capacity(order.len());
        for (new, &(_, old)) in order.iter().enumerate() {
            renumber[old as usize] = new as u32;
            sorted.push(std::mem::take(&mut tick.entries[old as usize]));
        }
        tick.entries = sorted;
        for view in &mut tick.views {
            for i in view.entered.iter_mut().chain(view.moved.iter_mut()) {
                *i = renumber[*i as usize];
            }
        }
        tick
    }
}

/// What a room's owner says to an edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerMsg {
    Joined(RemoteJoined),
    JoinRefused(JoinRefused),
    Tick(Tick),
    Reliable(Reliable),
    Closed(Closed),
    /// Added in 1.0 (appended).
    Fanout(Fanout),
    /// The answer to an [`EdgeMsg::WhoIs`]. Added in 1.0 (appended).
    TargetIs(super::calls::TargetIs),
    /// The room is moving to another shard (live migration, see
    /// [`crate::peer::migrate`]). Added in 1.0 (appended).
    Moving(RoomMoving),
}

/// A live migration of the room, as its edges are told: `to` empty, the
/// room is paused (hold the inputs); `to` the owner itself, it resumed
/// there (send them again); `to` another shard, it runs there now
/// (re-join every member there, quietly, and send the inputs held).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMoving {
    pub to: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::{encode_entity, encode_moved};
    use crate::msg::{Entity, Moved, Update};
    use crate::{encode_server, ServerMsg};

    #[test]
    fn a_builder_encodes_each_entry_once_and_shares_equal_views() {
        let mut asked = 0;
        let mut b = TickBuilder::new("lobby", 3);
        let mut entry = |b: &mut TickBuilder, id, kind| {
            b.entry(id, kind, || {
                asked += 1;
                Bytes::from(vec![id as u8])
            })
        };
        // Three members see entity 1 move; one also sees entity 2 enter.
        let m1 = entry(&mut b, 1, EntryKind::Moved);
        let m1_again = entry(&mut b, 1, EntryKind::Moved);
        let e2 = entry(&mut b, 2, EntryKind::Entered);
        let e1 = entry(&mut b, 1, EntryKind::Entered);
        assert_eq!((m1, m1_again, e2, e1), (0, 0, 1, 2));
        assert_eq!(asked, 3, "entity 1's move was encoded once");
        assert!(b.is_empty());
        b.view(10, vec![], vec![m1], vec![], false);
        b.view(11, vec![e2], vec![m1], vec![], false);
        b.view(12, vec![], vec![m1], vec![], false);
        b.view(13, vec![], vec![m1], vec![], true);
        let tick = b.finish();
        assert_eq!(tick.entries.len(), 3);
        let sessions: Vec<_> = tick.views.iter().map(|v| v.sessions.clone()).collect();
        assert_eq!(sessions, vec![vec![10, 12], vec![11], vec![13]]);
    }

    #[test]
    fn a_reused_builder_builds_what_a_new_one_builds() {
        // Two ticks of a room: entity ids on both sides of the lookup
        // table's end, both kinds, shared and distinct views.
        let big = super::super::entry_index::DENSE_IDS as EntityId + 1;
        let build = |b: &mut TickBuilder, round: u32| {
            let bytes = |id: EntityId| move || Bytes::from(id.to_be_bytes().to_vec());
            for member in 0..6u64 {
                let ids = [5 + round, 9, big + round, 2 + member as u32];
                let entered = vec![b.entry(ids[3], EntryKind::Entered, bytes(ids[3] + 1000))];
                let moved = ids[..3]
                    .iter()
                    .map(|&id| b.entry(id, EntryKind::Moved, bytes(id)))
                    .collect();
                b.view(member, entered, moved, vec![77], member % 2 == 0);
            }
        };
        let mut reused = TickBuilder::new("lobby", 1);
        build(&mut reused, 0);
        let first = reused.take();
        assert!(reused.is_empty());
        reused.reset("hall", 2);
        build(&mut reused, 1);
        let second = reused.take();
        let mut fresh = TickBuilder::new("lobby", 1);
        build(&mut fresh, 0);
        assert_eq!(first, fresh.finish());
        let mut fresh = TickBuilder::new("hall", 2);
        build(&mut fresh, 1);
        assert_eq!(second, fresh.finish());
        assert_eq!(second.room, "hall");
    }

    #[test]
    fn finish_numbers_entries_in_entity_order_so_views_are_ascending() {
        let mut b = TickBuilder::new("lobby", 1);
        let bytes = |id: u8| move || Bytes::from(vec![id]);
        // Member 1 sees 9 move: 9 gets index 0 while building. Member 2
        // sees 3 enter, then 3 and 9 move (in entity order, as a room
        // lists them): its moved list is [2, 0] until `finish`.
        let moved = vec![b.entry(9, EntryKind::Moved, bytes(9))];
        b.view(1, Vec::new(), moved, Vec::new(), false);
        let entered = vec![b.entry(3, EntryKind::Entered, bytes(103))];
        let moved = vec![
            b.entry(3, EntryKind::Moved, bytes(3)),
            b.entry(9, EntryKind::Moved, bytes(9)),
        ];
        assert_eq!(moved, [2, 0]);
        b.view(2, entered, moved, Vec::new(), false);
        let tick = b.finish();
        let order: Vec<u8> = tick.entries.iter().map(|e| e[0]).collect();
        assert_eq!(order, [3, 9, 103], "Moved entries first, each kind by id");
        assert_eq!(tick.views[0].moved, [1]);
        assert_eq!(tick.views[1].entered, [2]);
        assert_eq!(tick.views[1].moved, [0, 1]);
    }

    #[test]
    fn a_view_assembles_the_update_a_local_member_gets() {
        let ada = Entity {
            id: 1,
            name: "ada".into(),
            x: 1.0,
            y: 2.0,
            seq: 3,
        };
        let bob = Moved {
            id: 2,
            x: 5.0,
            y: 6.0,
            seq: 7,
        };
        let (mut e, mut m) = (Vec::new(), Vec::new());
        encode_entity(&ada, &mut e);
        encode_moved(&bob, &mut m);
        let tick = Tick {
            room: "lobby".into(),
            tick: 9,
            entries: vec![Bytes::from(e), Bytes::from(m)],
            views: vec![],
            implied: false,
        };
        let view = View {
            sessions: vec![4, 5],
            entered: vec![0],
            moved: vec![1],
            left: vec![8],
            full: false,
        };
        let mut out = Vec::new();
        tick.write_update(&view, &mut out).unwrap();
        let expected = encode_server(&ServerMsg::Update(Update {
            tick: 9,
            entered: vec![ada],
            moved: vec![bob],
            left: vec![8],
            full: false,
        }));
        assert_eq!(out, expected);
        assert_eq!(entry_position(&tick.entries[0]), Some((1, 1.0, 2.0)));
        assert_eq!(entry_position(&tick.entries[1]), Some((2, 5.0, 6.0)));
        assert_eq!(entry_position(b"\xc1"), None);
        assert_eq!(entry_seq(&tick.entries[0]), Some(3), "an Entity's seq");
        assert_eq!(entry_seq(&tick.entries[1]), Some(7), "a Moved's seq");
        assert_eq!(entry_seq(b"\xc1"), None);
        let no_seq =
            rmp_serde::to_vec_named(&serde_json::json!({"id": 9, "x": 1.0, "y": 2.0})).unwrap();
        assert_eq!(
            entry_position(&no_seq),
            Some((9, 1.0, 2.0)),
            "seq is not needed"
        );
        assert_eq!(entry_seq(&no_seq), None);
        let bad = View {
            moved: vec![2],
            ..View::default()
        };
        assert_eq!(
            tick.write_update(&bad, &mut Vec::new()),
            Err(TickError { index: 2, len: 2 })
        );
    }

    #[test]
    fn a_frame_is_laid_out_in_one_allocation_of_at_most_its_bound() {
        // Entries of several sizes, views of every field: the frame fits
        // the bound, so the buffer sized for it never grows.
        let entries: Vec<Bytes> = (0..40u32)
            .map(|i| {
                let mut bytes = Vec::new();
                if i % 2 == 0 {
                    let name = "n".repeat(i as usize);
                    encode_entity(
                        &Entity {
                            id: u32::MAX - i,
                            name,
                            x: i as f32,
                            y: -(i as f32),
                            seq: u32::MAX - i,
                        },
                        &mut bytes,
                    );
                } else {
                    encode_moved(
                        &Moved {
                            id: i,
                            x: 0.5,
                            y: 1.5,
                            seq: i,
                        },
                        &mut bytes,
                    );
                }
                Bytes::from(bytes)
            })
            .collect();
        let tick = Tick {
            room: "lobby".into(),
            tick: u64::MAX,
            entries,
            views: vec![],
            implied: true,
        };
        let views = [
            View::default(),
            View {
                entered: (0..40).step_by(2).collect(),
                moved: (1..40).step_by(2).collect(),
                left: vec![u32::MAX, 1, 1 << 20],
                full: true,
                ..View::default()
            },
            View {
                moved: vec![39],
                ..View::default()
            },
        ];
        for view in &views {
            let bound = tick.frame_bound(view, &view.moved).unwrap();
            let mut out = Vec::new();
            tick.write_view(view, &view.moved, &mut out).unwrap();
            assert!(out.len() <= bound, "{} > {bound}", out.len());
            assert_eq!(out.capacity(), Vec::<u8>::with_capacity(bound).capacity());
            let mut expected = Vec::new();
            let entry = |&i: &u32| tick.entries[i as usize].as_ref();
            crate::assemble::write_update(
                &mut expected,
                tick.tick,
                view.entered.iter().map(entry),
                view.moved.iter().map(entry),
                &view.left,
                view.full,
            );
            assert_eq!(out, expected);
        }
    }
}
