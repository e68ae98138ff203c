//! The shard's recent events: room restarts and failures, the shard
//! starting and stopping, and every admin action (the audit trail's live
//! half; the store keeps the durable half in `audit`).
//!
//! [`Events`] is a bounded ring (`admin.events_capacity`; the oldest go
//! first) read by `GET /admin/events?since=`, plus any number of
//! [`EventSink`]s that each event is also handed to: the seam where a
//! cluster publishes them to its directory's event stream. A sink must not
//! block: it is called on whatever thread recorded the event (a room
//! supervisor's, an HTTP handler's).

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use protocol::admin::{Event, EventKind};

/// Somewhere else events go, beside the ring.
pub trait EventSink: Send + Sync + 'static {
    fn publish(&self, event: &Event);
}

struct Ring {
    events: VecDeque<Event>,
    next_seq: u64,
}

/// The ring and its sinks; cheap to clone (one shared ring).
#[derive(Clone)]
pub struct Events {
    shard: Arc<str>,
    capacity: usize,
    ring: Arc<Mutex<Ring>>,
    sinks: Arc<Mutex<Vec<Arc<dyn EventSink>>>>,
}

/// What [`Events::record`] is told; the ring adds the sequence number, the
/// time and the shard.
pub struct NewEvent {
    pub kind: EventKind,
    pub subject: String,
    pub detail: String,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub result: Option<String>,
}

impl NewEvent {
    /// An event that is not an admin action.
    pub fn plain(kind: EventKind, subject: impl Into<String>, detail: impl Into<String>) -> Self {
        NewEvent {
            kind,
            subject: subject.into(),
            detail: detail.into(),
            actor: None,
            action: None,
            result: None,
        }
    }
}

impl Events {
    /// A ring of `capacity` events (at least 1) for shard `shard`.
    pub fn new(shard: &str, capacity: usize) -> Events {
        Events {
            shard: Arc::from(shard),
            capacity: capacity.max(1),
            ring: Arc::new(Mutex::new(Ring {
                events: VecDeque::new(),
                next_seq: 1,
            })),
            sinks: Arc::default(),
        }
    }

    /// Hand every later event to `sink` too.
    pub fn add_sink(&self, sink: Arc<dyn EventSink>) {
        self.sinks.lock().push(sink);
    }

    /// Record an event; returns it as stored.
    pub fn record(&self, new: NewEvent) -> Event {
        let event = {
            let mut ring = self.ring.lock();
            let event = Event {
                seq: ring.next_seq,
                at_ms: unix_ms(),
                shard: self.shard.to_string(),
                kind: new.kind,
                subject: new.subject,
                detail: new.detail,
                actor: new.actor,
                action: new.action,
                result: new.result,
            };
            ring.next_seq += 1;
            if ring.events.len() == self.capacity {
                ring.events.pop_front();
            }
            ring.events.push_back(event.clone());
            event
        };
        let sinks = self.sinks.lock().clone();
        for sink in sinks {
            sink.publish(&event);
        }
        event
    }

    /// Events after `since` (oldest first), at most `limit`, and the
    /// sequence number to ask with next.
    pub fn since(&self, since: u64, limit: usize) -> (Vec<Event>, u64) {
        let ring = self.ring.lock();
        let events: Vec<Event> = ring
            .events
            .iter()
            .filter(|e| e.seq > since)
            .take(limit)
            .cloned()
            .collect();
        let next = events
            .last()
            .map_or(since.min(ring.next_seq - 1), |e| e.seq);
        (events, next)
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(Mutex<Vec<u64>>);

    impl EventSink for Count {
        fn publish(&self, event: &Event) {
            self.0.lock().push(event.seq);
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_and_pages_by_sequence() {
        let events = Events::new("s1", 3);
        let sink = Arc::new(Count(Mutex::new(Vec::new())));
        events.add_sink(sink.clone());
        for i in 0..5 {
            events.record(NewEvent::plain(
                EventKind::RoomRestarted,
                "lobby",
                i.to_string(),
            ));
        }
        let (all, next) = events.since(0, 100);
        let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 4, 5], "the oldest went first");
        assert_eq!(next, 5);
        assert_eq!(all[0].shard, "s1");
        let (later, next) = events.since(4, 100);
        assert_eq!(later.len(), 1);
        assert_eq!(next, 5);
        let (none, same) = events.since(5, 100);
        assert!(none.is_empty());
        assert_eq!(same, 5);
        assert_eq!(
            *sink.0.lock(),
            [1, 2, 3, 4, 5],
            "every event reached the sink"
        );
        let (two, next) = events.since(0, 2);
        assert_eq!(two.len(), 2);
        assert_eq!(next, 4);
    }
}
