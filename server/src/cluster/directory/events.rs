//! The events stream: shard and room events for the console, appended
//! with `XADD ... MAXLEN ~ cluster.events_max_len` (trimmed in whole
//! stream nodes, so it may hold a little more than the cap).

use std::collections::HashMap;

use redis::streams::StreamRangeReply;

use super::{unix_ms, Directory, Event, EventKind, Result};

impl Directory {
    /// Append an event written by this shard. Returns its stream id.
    pub async fn event(&self, kind: EventKind, subject: &str, detail: &str) -> Result<String> {
        let key = self.key(&["events"]);
        let cap = self.settings().events_max_len;
        let fields = [
            ("kind", kind.name().to_string()),
            ("subject", subject.to_string()),
            ("shard", self.shard().to_string()),
            ("detail", detail.to_string()),
            ("time", unix_ms().to_string()),
        ];
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(cap)
            .arg("*")
            .arg(&fields[..]);
        self.run("event", &cmd).await
    }

    /// [`Directory::event`] without the id.
    pub(super) async fn emit(&self, kind: EventKind, subject: &str, detail: &str) -> Result<()> {
        self.event(kind, subject, detail).await.map(drop)
    }

    /// Up to `count` events after stream id `after` (`"0"` or `""`: from
    /// the oldest kept), oldest first.
    pub async fn events_since(&self, after: &str, count: usize) -> Result<Vec<Event>> {
        let key = self.key(&["events"]);
        let start = if after.is_empty() || after == "0" {
            "-".to_string()
        } else {
            format!("({after}")
        };
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(key).arg(start).arg("+").arg("COUNT").arg(count);
        let reply: StreamRangeReply = self.run("events_since", &cmd).await?;
        Ok(parse(reply))
    }

    /// The last `count` events, oldest first.
    pub async fn events_tail(&self, count: usize) -> Result<Vec<Event>> {
        let key = self.key(&["events"]);
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(key).arg("+").arg("-").arg("COUNT").arg(count);
        let reply: StreamRangeReply = self.run("events_tail", &cmd).await?;
        let mut events = parse(reply);
        events.reverse();
        Ok(events)
    }

    /// How many events the stream holds now.
    pub async fn events_len(&self) -> Result<u64> {
        let key = self.key(&["events"]);
        self.run("events_len", redis::cmd("XLEN").arg(key)).await
    }
}

/// Entries into events; one of an unknown kind (a newer shard's) is
/// skipped.
fn parse(reply: StreamRangeReply) -> Vec<Event> {
    reply
        .ids
        .into_iter()
        .filter_map(|entry| {
            let fields: HashMap<String, String> = entry
                .map
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), redis::from_redis_value(v).ok()?)))
                .collect();
            let text = |k: &str| fields.get(k).cloned().unwrap_or_default();
            Some(Event {
                kind: EventKind::parse(fields.get("kind")?)?,
                subject: text("subject"),
                shard: text("shard"),
                detail: text("detail"),
                time: fields.get("time").and_then(|t| t.parse().ok()).unwrap_or(0),
                id: entry.id,
            })
        })
        .collect()
}
