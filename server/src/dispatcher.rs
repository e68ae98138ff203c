//! The dispatcher: typed topics that fan messages out to actor subscribers.
//!
//! ```text
//! publisher ──publish(M)──▶ Topic<M> ──try_send──▶ Recipient<Published<M>> × N
//!                              │ full mailbox: drop, count, warn (rate-limited)
//!                              └ depth: messages delivered but not yet handled
//! ```
//!
//! Publishing never waits on a subscriber. A subscriber's bound is its
//! mailbox capacity plus one (actix parks a sender that filled the mailbox
//! and refuses it until the mailbox drains). Each delivered message carries a
//! guard that counts it in its topic's depth until the subscriber drops it,
//! so queue depth is measured, not guessed. Topics in use: server
//! announcements (every session subscribes) and per-map broadcasts (the
//! map's room subscribes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::metrics as m;

const WARN_EVERY: Duration = Duration::from_secs(5);

/// A message as a subscriber receives it.
pub struct Published<M> {
    pub msg: M,
    _depth: DepthGuard,
}

impl<M: Send + 'static> Message for Published<M> {
    type Result = ();
}

struct DepthGuard(Arc<AtomicI64>);

impl Drop for DepthGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Identifies one subscription, for unsubscribing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

/// What one publish did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishReport {
    pub delivered: usize,
    pub dropped: usize,
}

pub struct Topic<M: Clone + Send + 'static> {
    name: String,
    subscribers: Mutex<Vec<(SubscriptionId, Recipient<Published<M>>)>>,
    next_id: AtomicU64,
    depth: Arc<AtomicI64>,
    dropped_since_warn: AtomicU64,
    last_warn: Mutex<Option<Instant>>,
    /// Totals since start, and the publish rate at the last sample (f64
    /// bits), for the admin API's topic view.
    published: AtomicU64,
    dropped: AtomicU64,
    published_at_sample: AtomicU64,
    rate_bits: AtomicU64,
}

/// One topic as the admin API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicStats {
    pub name: String,
    pub subscribers: usize,
    pub depth: i64,
    pub published: u64,
    pub published_per_s: f64,
    pub dropped: u64,
}

impl<M: Clone + Send + 'static> Topic<M> {
    pub fn new(name: impl Into<String>) -> Topic<M> {
        Topic {
            name: name.into(),
            subscribers: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            depth: Arc::new(AtomicI64::new(0)),
            dropped_since_warn: AtomicU64::new(0),
            last_warn: Mutex::new(None),
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            published_at_sample: AtomicU64::new(0),
            rate_bits: AtomicU64::new(0),
        }
    }

    /// Take the publish rate since the last sample, `every` ago, and export
    /// the depth gauge.
    fn sample(&self, every: f64) {
        let now = self.published.load(Ordering::Relaxed);
        let before = self.published_at_sample.swap(now, Ordering::Relaxed);
        let rate = now.saturating_sub(before) as f64 / every.max(f64::EPSILON);
        self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
        metrics::gauge!(m::DISPATCH_QUEUE_DEPTH, "topic" => self.name.clone())
            .set(self.depth() as f64);
    }

    pub fn stats(&self) -> TopicStats {
        TopicStats {
            name: self.name.clone(),
            subscribers: self.subscriber_count(),
            depth: self.depth(),
            published: self.published.load(Ordering::Relaxed),
            published_per_s: f64::from_bits(self.rate_bits.load(Ordering::Relaxed)),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn subscribe(&self, recipient: Recipient<Published<M>>) -> SubscriptionId {
        let id = SubscriptionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.subscribers.lock().push((id, recipient));
        id
    }

    pub fn unsubscribe(&self, id: SubscriptionId) {
        self.subscribers.lock().retain(|(sub, _)| *sub != id);
    }

    pub fn subscriber_count(&self) -> usize {
        self.subscribers.lock().len()
    }

    /// Messages delivered to subscribers and not yet handled by them.
    pub fn depth(&self) -> i64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Offer `msg` to every subscriber without waiting; subscribers whose
    /// mailbox is full miss it (counted), stopped ones are removed.
    pub fn publish(&self, msg: M) -> PublishReport {
        let mut report = PublishReport::default();
        // Send through the stored recipients themselves: actix grants every
        // sender *clone* one slot past the mailbox capacity, so sending
        // through fresh clones would make the bound meaningless.
        self.subscribers.lock().retain(|(_, recipient)| {
            self.depth.fetch_add(1, Ordering::Relaxed);
            let published = Published {
                msg: msg.clone(),
                _depth: DepthGuard(self.depth.clone()),
            };
            match recipient.try_send(published) {
                Ok(()) => {
                    report.delivered += 1;
                    true
                }
                Err(SendError::Full(_)) => {
                    report.dropped += 1;
                    true
                }
                Err(SendError::Closed(_)) => false,
            }
        });
        let labels = [("topic", self.name.clone())];
        self.published.fetch_add(1, Ordering::Relaxed);
        self.dropped
            .fetch_add(report.dropped as u64, Ordering::Relaxed);
        metrics::counter!(m::DISPATCH_PUBLISHED, &labels).increment(1);
        metrics::counter!(m::DISPATCH_DELIVERED, &labels).increment(report.delivered as u64);
        // Always touched, so the series exists (at 0) for dashboards and
        // alerts before the first drop.
        metrics::counter!(m::DISPATCH_DROPPED, &labels).increment(report.dropped as u64);
        if report.dropped > 0 {
            self.warn_dropped(report.dropped as u64);
        }
        report
    }

    fn warn_dropped(&self, dropped: u64) {
        let total = self
            .dropped_since_warn
            .fetch_add(dropped, Ordering::Relaxed)
            + dropped;
        let mut last = self.last_warn.lock();
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            *last = Some(now);
            self.dropped_since_warn.store(0, Ordering::Relaxed);
            tracing::warn!(topic = %self.name, dropped = total, "subscribers' mailboxes full; messages dropped");
        }
    }
}

/// A server announcement, encoded once as an `announce` frame.
#[derive(Clone)]
pub struct Announcement(pub Bytes);

/// A broadcast to everyone in one map, encoded once.
#[derive(Clone)]
pub struct MapBroadcast(pub Bytes);

/// Encode an announcement once, for [`Announcement`] or [`MapBroadcast`].
pub fn announce_frame(text: &str) -> Bytes {
    Bytes::from(protocol::encode_server(&protocol::ServerMsg::Announce(
        protocol::msg::Announce {
            text: text.to_string(),
        },
    )))
}

pub struct Dispatcher {
    pub announcements: Topic<Announcement>,
    maps: Mutex<HashMap<String, Arc<Topic<MapBroadcast>>>>,
}

impl Default for Dispatcher {
    fn default() -> Self {
        Dispatcher {
            announcements: Topic::new("announcements"),
            maps: Mutex::new(HashMap::new()),
        }
    }
}

impl Dispatcher {
    /// The broadcast topic of `map`, created on first use.
    pub fn map_topic(&self, map: &str) -> Arc<Topic<MapBroadcast>> {
        self.maps
            .lock()
            .entry(map.to_string())
            .or_insert_with(|| Arc::new(Topic::new(format!("map:{map}"))))
            .clone()
    }

    /// Export each topic's depth as a gauge and take its publish rate;
    /// called once a second (`every_s`).
    pub fn sample(&self, every_s: f64) {
        self.announcements.sample(every_s);
        for topic in self.maps.lock().values() {
            topic.sample(every_s);
        }
    }

    /// Every topic, announcements first, then the maps' by name.
    pub fn stats(&self) -> Vec<TopicStats> {
        let mut maps: Vec<TopicStats> = self.maps.lock().values().map(|t| t.stats()).collect();
        maps.sort_by(|a, b| a.name.cmp(&b.name));
        let mut all = vec![self.announcements.stats()];
        all.extend(maps);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscriber that holds every message until told to release them.
    struct Slow {
        held: Vec<Published<Announcement>>,
    }

    impl Actor for Slow {
        type Context = Context<Self>;
    }

    fn slow() -> Addr<Slow> {
        Slow::create(|ctx| {
            ctx.set_mailbox_capacity(2);
            Slow { held: Vec::new() }
        })
    }

    struct Stop;
    impl Message for Stop {
        type Result = ();
    }
    impl Handler<Stop> for Slow {
        type Result = ();
        fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }

    impl Handler<Published<Announcement>> for Slow {
        type Result = ();
        fn handle(&mut self, msg: Published<Announcement>, _: &mut Context<Self>) {
            self.held.push(msg);
        }
    }

    struct Release;
    impl Message for Release {
        type Result = usize;
    }
    impl Handler<Release> for Slow {
        type Result = usize;
        fn handle(&mut self, _: Release, _: &mut Context<Self>) -> usize {
            let n = self.held.len();
            self.held.clear();
            n
        }
    }

    #[actix::test]
    async fn full_mailboxes_drop_and_depth_tracks_unhandled_messages() {
        let topic: Topic<Announcement> = Topic::new("test");
        let slow = slow();
        let id = topic.subscribe(slow.clone().recipient());
        // The mailbox is not being drained while we publish synchronously.
        let mut delivered = 0;
        let mut dropped = 0;
        for _ in 0..10 {
            let r = topic.publish(Announcement(Bytes::from_static(b"x")));
            delivered += r.delivered;
            dropped += r.dropped;
        }
        assert_eq!(delivered + dropped, 10);
        assert!(dropped > 0, "a mailbox of 2 cannot take 10 at once");
        assert_eq!(topic.depth(), delivered as i64);
        let handled = slow.send(Release).await.unwrap();
        assert_eq!(handled, delivered);
        assert_eq!(topic.depth(), 0);
        topic.unsubscribe(id);
        assert_eq!(
            topic.publish(Announcement(Bytes::new())),
            PublishReport::default()
        );
    }

    #[actix::test]
    async fn stopped_subscribers_are_removed() {
        let topic: Topic<Announcement> = Topic::new("test");
        let addr = slow();
        topic.subscribe(addr.clone().recipient());
        assert_eq!(topic.subscriber_count(), 1);
        addr.send(Stop).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        topic.publish(Announcement(Bytes::new()));
        assert_eq!(topic.subscriber_count(), 0);
    }
}
