//! A fan-out shard: owns a slice of the replica's connections and writes each
//! batch of messages to them.
//!
//! A shard is one task with one ordered command queue, so joins, releases,
//! leaves and deliveries are applied in the order they were sent — the property
//! the resume path relies on. Deliveries that queue up while the shard is busy
//! are coalesced: one buffer per (channel, subscriber group), written to each
//! socket with one non-blocking write — two for a delta group, whose members
//! that lack the first message's base (just joined, released or resynced)
//! get it whole. No lock is shared between shards.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::delivery::{Delivery, FrameKind};
use super::heartbeat::{HeartbeatConfig, Profile, Wheel};
use crate::channel::ChannelName;
use crate::engine::Offset;
use crate::filter::Filter;
use crate::metrics::GatewayMetrics;
use crate::protocol::CloseCode;
use crate::ws::conn::{Conn, ConnId, Sent};
use crate::ws::deflate::DeflateConfig;

/// How a subscriber wants its messages.
#[derive(Debug, Clone)]
pub struct Mode {
    pub kind: FrameKind,
    pub filter: Option<Arc<Filter>>,
    /// The connection negotiated permessage-deflate.
    pub compressed: bool,
}

impl Mode {
    fn same_group(&self, other: &Mode) -> bool {
        self.kind == other.kind
            && self.compressed == other.compressed
            && self.filter.as_ref().map(|f| f.key()) == other.filter.as_ref().map(|f| f.key())
    }
}

/// Commands a shard executes, in order.
pub(crate) enum ShardCmd {
    /// A message for the shard's subscribers of its channel.
    Deliver(Arc<Delivery>),
    /// Add a subscriber whose messages are held until `Release`.
    Join {
        conn: Arc<Conn>,
        channel: ChannelName,
        mode: Mode,
        done: oneshot::Sender<()>,
    },
    /// Send the held messages with offsets after `after`, then go live.
    Release {
        conn: ConnId,
        channel: ChannelName,
        after: Offset,
    },
    /// Remove a subscriber.
    Leave { conn: ConnId, channel: ChannelName },
    /// Start heartbeats, idle and token-expiry checks for a connection.
    Watch(Arc<Conn>, Profile),
    /// Move a subscriber to another group (a new filter or form), in order
    /// with deliveries: nothing is lost or sent twice by the move.
    Regroup {
        conn: ConnId,
        channel: ChannelName,
        mode: Mode,
    },
    /// The channel's continuity was lost: hold its subscribers' messages and
    /// ask each session to restart the subscription.
    Resync(ChannelName),
}

struct Subscriber {
    conn: Arc<Conn>,
    /// `Some` until released: messages that arrived while the session was
    /// sending the subscription's start (snapshot, history).
    held: Option<Vec<Arc<Delivery>>>,
    /// After release: the start went up to this offset. The session may have
    /// read history further than this replica's live feed had come, so live
    /// messages up to here are dropped for this subscriber until the feed
    /// passes it (then it rejoins the shared fast path).
    floor: Option<Offset>,
    /// The offset of the last message this shard sent it, for a delta
    /// subscriber: a delta goes only to one that has the delta's base.
    last: Option<Offset>,
}

struct Group {
    mode: Mode,
    subscribers: Vec<Subscriber>,
}

/// The shard's state and its queue.
pub(crate) struct Shard {
    commands: mpsc::Receiver<ShardCmd>,
    channels: HashMap<ChannelName, Vec<Group>>,
    wheel: Wheel,
    metrics: Arc<GatewayMetrics>,
    max_held: usize,
    resyncs: Arc<super::Resyncs>,
    deflate: DeflateConfig,
}

/// Commands taken from the queue per round.
const BATCH: usize = 512;

impl Shard {
    pub(crate) fn new(
        commands: mpsc::Receiver<ShardCmd>,
        metrics: Arc<GatewayMetrics>,
        max_held: usize,
        heartbeats: Vec<HeartbeatConfig>,
        resyncs: Arc<super::Resyncs>,
        deflate: DeflateConfig,
    ) -> Self {
        Self {
            resyncs,
            deflate,
            commands,
            channels: HashMap::new(),
            wheel: Wheel::new(heartbeats),
            metrics,
            max_held,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut commands = Vec::with_capacity(BATCH);
        let mut pending: Vec<Arc<Delivery>> = Vec::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                received = self.commands.recv_many(&mut commands, BATCH) => {
                    if received == 0 {
                        return;
                    }
                    for cmd in commands.drain(..) {
                        match cmd {
                            ShardCmd::Deliver(d) => pending.push(d),
                            other => {
                                self.flush(&mut pending);
                                self.apply(other);
                            }
                        }
                    }
                    self.flush(&mut pending);
                }
                _ = tick.tick() => self.wheel.tick(&self.metrics),
            }
        }
    }

    fn apply(&mut self, cmd: ShardCmd) {
        match cmd {
            ShardCmd::Deliver(_) => {}
            ShardCmd::Watch(conn, profile) => self.wheel.watch(&conn, profile),
            ShardCmd::Regroup {
                conn,
                channel,
                mode,
            } => {
                let Some(groups) = self.channels.get_mut(&channel) else {
                    return;
                };
                let Some(mut subscriber) = groups.iter_mut().find_map(|g| {
                    let i = g.subscribers.iter().position(|s| s.conn.id() == conn)?;
                    Some(g.subscribers.swap_remove(i))
                }) else {
                    return;
                };
                // What it was sent was in the old form: the next delta base is unknown.
                subscriber.last = None;
                match groups.iter_mut().find(|g| g.mode.same_group(&mode)) {
                    Some(g) => g.subscribers.push(subscriber),
                    None => groups.push(Group {
                        mode,
                        subscribers: vec![subscriber],
                    }),
                }
                groups.retain(|g| !g.subscribers.is_empty());
            }
            ShardCmd::Resync(channel) => {
                let Some(groups) = self.channels.get_mut(&channel) else {
                    return;
                };
                for sub in groups.iter_mut().flat_map(|g| g.subscribers.iter_mut()) {
                    if sub.held.is_none() {
                        sub.held = Some(Vec::new());
                    }
                    sub.last = None;
                    self.resyncs.request(&sub.conn, &channel);
                }
            }
            ShardCmd::Join {
                conn,
                channel,
                mode,
                done,
            } => {
                let groups = self.channels.entry(channel).or_default();
                let subscriber = Subscriber {
                    conn,
                    held: Some(Vec::new()),
                    floor: None,
                    last: None,
                };
                match groups.iter_mut().find(|g| g.mode.same_group(&mode)) {
                    Some(g) => g.subscribers.push(subscriber),
                    None => groups.push(Group {
                        mode,
                        subscribers: vec![subscriber],
                    }),
                }
                let _ = done.send(());
            }
            ShardCmd::Release {
                conn,
                channel,
                after,
            } => {
                let Some(groups) = self.channels.get_mut(&channel) else {
                    return;
                };
                for group in groups.iter_mut() {
                    let Some(sub) = group.subscribers.iter_mut().find(|s| s.conn.id() == conn)
                    else {
                        continue;
                    };
                    let held = sub.held.take().unwrap_or_default();
                    sub.floor = Some(after);
                    let newer: Vec<&Arc<Delivery>> = held
                        .iter()
                        .filter(|d| d.offset.is_none_or(|o| o > after))
                        .collect();
                    if newer.iter().any(|d| d.offset.is_some()) {
                        sub.floor = None;
                    }
                    let compress = group.mode.compressed.then_some(&self.deflate);
                    let (frames, last) = frames_after(&newer, group.mode.kind, compress, None);
                    if !frames.is_empty() {
                        sub.last = last;
                        self.metrics.messages_out.inc_by(frames.len() as u64);
                        if sub.conn.send(concat(&frames)) == Sent::Overflow {
                            self.metrics.slow_consumer_closes.inc();
                        }
                    }
                    return;
                }
            }
            ShardCmd::Leave { conn, channel } => {
                let Some(groups) = self.channels.get_mut(&channel) else {
                    return;
                };
                for group in groups.iter_mut() {
                    if let Some(i) = group.subscribers.iter().position(|s| s.conn.id() == conn) {
                        group.subscribers.swap_remove(i);
                        break;
                    }
                }
                groups.retain(|g| !g.subscribers.is_empty());
                if groups.is_empty() {
                    self.channels.remove(&channel);
                }
            }
        }
    }

    /// Writes the pending deliveries, one coalesced buffer per channel and group.
    fn flush(&mut self, pending: &mut Vec<Arc<Delivery>>) {
        if pending.is_empty() {
            return;
        }
        let started = Instant::now();
        let now_us = crate::time::unix_micros();
        for d in pending.iter() {
            if let Some(published) = d.published_us {
                self.metrics
                    .delivery_lag
                    .observe(now_us.saturating_sub(published) as f64 / 1e6);
            }
        }
        // Usually one channel; otherwise group by channel, keeping each channel's order.
        let mut by_channel: Vec<(ChannelName, Vec<Arc<Delivery>>)> = Vec::new();
        for d in pending.drain(..) {
            match by_channel.iter_mut().find(|(c, _)| *c == d.channel) {
                Some((_, list)) => list.push(d),
                None => by_channel.push((d.channel.clone(), vec![d])),
            }
        }
        for (channel, deliveries) in by_channel {
            self.deliver(&channel, &deliveries);
        }
        self.metrics
            .broadcast_duration
            .observe(started.elapsed().as_secs_f64());
    }

    fn deliver(&mut self, channel: &ChannelName, deliveries: &[Arc<Delivery>]) {
        let Some(groups) = self.channels.get_mut(channel) else {
            return;
        };
        for group in groups.iter_mut() {
            let matching: Vec<&Arc<Delivery>> = deliveries
                .iter()
                .filter(|d| d.passes(group.mode.filter.as_deref()))
                .collect();
            if matching.is_empty() {
                continue;
            }
            let kind = group.mode.kind;
            let compress = group.mode.compressed.then_some(&self.deflate);
            // Delta subscribers that have the first message's base (all but
            // those just joined, released or resynced) take the chained
            // buffer; the others take it with the first message whole.
            let delta = kind == FrameKind::NativeDelta;
            let chained_from = if delta {
                matching[0].base_offset()
            } else {
                None
            };
            let (frames, newest) = frames_after(&matching, kind, compress, chained_from);
            // A buffer of this shard's own, even for a single frame: every send
            // clones it, and a refcount shared with the other shards would bounce
            // between cores once per client.
            let batch = concat_owned(&frames);
            let mut fresh: Option<Bytes> = None;
            let mut live = 0u64;
            let mut bytes = 0u64;
            for sub in group.subscribers.iter_mut() {
                match sub.held.as_mut() {
                    Some(held) => {
                        held.extend(matching.iter().map(|d| Arc::clone(d)));
                        if held.len() > self.max_held {
                            held.clear();
                            if sub.conn.close(CloseCode::SlowConsumer) {
                                self.metrics.slow_consumer_closes.inc();
                            }
                        }
                    }
                    None => {
                        let sent = match sub.floor {
                            None if !delta || sub.last == chained_from => {
                                sub.last = newest;
                                bytes += batch.len() as u64;
                                sub.conn.send_uncounted(batch.clone())
                            }
                            None => {
                                let whole_first = fresh.get_or_insert_with(|| {
                                    concat_owned(&frames_after(&matching, kind, compress, None).0)
                                });
                                sub.last = newest;
                                bytes += whole_first.len() as u64;
                                sub.conn.send_uncounted(whole_first.clone())
                            }
                            Some(floor) => {
                                // Only just released: skip what its start already had.
                                let newer: Vec<&Arc<Delivery>> = matching
                                    .iter()
                                    .copied()
                                    .filter(|d| d.offset.is_none_or(|o| o > floor))
                                    .collect();
                                if matching.iter().any(|d| d.offset.is_some_and(|o| o > floor)) {
                                    sub.floor = None;
                                }
                                if newer.is_empty() {
                                    continue;
                                }
                                let (frames, last) = frames_after(&newer, kind, compress, sub.last);
                                sub.last = last;
                                let newer = concat(&frames);
                                bytes += newer.len() as u64;
                                sub.conn.send_uncounted(newer)
                            }
                        };
                        live += 1;
                        if sent == Sent::Overflow {
                            self.metrics.slow_consumer_closes.inc();
                        }
                    }
                }
            }
            self.metrics
                .messages_out
                .inc_by(live * matching.len() as u64);
            self.metrics.bytes_out.inc_by(bytes);
        }
    }
}

/// The frames of `deliveries` for a subscriber whose last message was at
/// `after` (each a delta where the form has them and the subscriber has the
/// base), and the offset of the last one.
fn frames_after<'a>(
    deliveries: &[&'a Arc<Delivery>],
    kind: FrameKind,
    compress: Option<&DeflateConfig>,
    mut after: Option<Offset>,
) -> (Vec<&'a Bytes>, Option<Offset>) {
    let frames = deliveries
        .iter()
        .map(|d| {
            let frame = d.frame_for(kind, compress, after);
            after = d.offset;
            frame
        })
        .collect();
    (frames, after)
}

/// One new buffer holding `frames` back to back.
fn concat_owned(frames: &[&Bytes]) -> Bytes {
    let mut out = BytesMut::with_capacity(frames.iter().map(|f| f.len()).sum());
    for f in frames {
        out.extend_from_slice(f);
    }
    out.freeze()
}

/// One buffer holding `frames` back to back (no copy for a single frame).
fn concat(frames: &[&Bytes]) -> Bytes {
    match frames {
        [one] => (*one).clone(),
        many => concat_owned(many),
    }
}
