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
    /// ask each connection to restart the subscription.
    Resync(ChannelName),
}

struct Subscriber {
    conn: Arc<Conn>,
    /// `Some` until released: messages that arrived while the connection was
    /// sending the subscription's start (snapshot, history).
    held: Option<Vec<Arc<Delivery>>>,
    /// After release: the start went up to this offset. The connection may have
    /// read history further than this replica's live feed had come, so live
    /// messages up to here are dropped for this subscriber until the feed
    /// passes it (then it rejoins the shared fast path).
    floor: Option<Offset>,
    /// The offset of the last message this shard sent it, for a delta
    /// subscriber: a delta goes only to one that has the delta's base.
    last: Option<Offset>,
    /// A resync was asked of the connection and its restart has not released
    /// the subscription yet.
    resync_pending: bool,
    /// A resync came while the subscription's start was still being read
    /// (joined, not yet released): that start is older than the resync, so
    /// the release that ends it is ignored (it would let out, after an old
    /// start, messages past the gap the resync is about, before the client
    /// is told); the connection's restart releases instead.
    stale_release: bool,
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
                    match sub.held {
                        None => sub.held = Some(Vec::new()),
                        // Still reading its start: that start predates the gap.
                        Some(_) if !sub.resync_pending => sub.stale_release = true,
                        Some(_) => {}
                    }
                    sub.resync_pending = true;
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
                    resync_pending: false,
                    stale_release: false,
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
                    if sub.stale_release {
                        // The start this release ends was read before the
                        // resync: keep holding for the restart's release.
                        sub.stale_release = false;
                        return;
                    }
                    sub.resync_pending = false;
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
                    let out = frames_after(&newer, group.mode.kind, compress, None);
                    if !out.frames.is_empty() {
                        sub.last = out.last;
                        out.count(&self.metrics, 1);
                        if sub.conn.send(concat(&out.frames)) == Sent::Overflow {
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
            let chained = frames_after(&matching, kind, compress, chained_from);
            // A buffer of this shard's own, even for a single frame: every send
            // clones it, and a refcount shared with the other shards would bounce
            // between cores once per client.
            let batch = concat_owned(&chained.frames);
            let mut fresh: Option<(Frames, Bytes)> = None;
            let (mut sent_chained, mut sent_fresh) = (0u64, 0u64);
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
                                sub.last = chained.last;
                                sent_chained += 1;
                                bytes += batch.len() as u64;
                                sub.conn.send_uncounted(batch.clone())
                            }
                            None => {
                                let (_, whole_first) = fresh.get_or_insert_with(|| {
                                    let out = frames_after(&matching, kind, compress, None);
                                    let buffer = concat_owned(&out.frames);
                                    (out, buffer)
                                });
                                sub.last = chained.last;
                                sent_fresh += 1;
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
                                let out = frames_after(&newer, kind, compress, sub.last);
                                sub.last = out.last;
                                out.count(&self.metrics, 1);
                                let newer = concat(&out.frames);
                                bytes += newer.len() as u64;
                                sub.conn.send_uncounted(newer)
                            }
                        };
                        if sent == Sent::Overflow {
                            self.metrics.slow_consumer_closes.inc();
                        }
                    }
                }
            }
            chained.count(&self.metrics, sent_chained);
            if let Some((out, _)) = &fresh {
                out.count(&self.metrics, sent_fresh);
            }
            self.metrics.bytes_out.inc_by(bytes);
        }
    }
}

/// The frames of `deliveries` for a subscriber whose last message was at
/// `after`: each a delta where the form has them and the subscriber has the
/// base, compressed where the group is.
struct Frames<'a> {
    frames: Vec<&'a Bytes>,
    /// The offset of the last one.
    last: Option<Offset>,
    compressed: u64,
    deltas: u64,
}

fn frames_after<'a>(
    deliveries: &[&'a Arc<Delivery>],
    kind: FrameKind,
    compress: Option<&DeflateConfig>,
    mut after: Option<Offset>,
) -> Frames<'a> {
    let mut deltas = 0;
    let frames: Vec<&Bytes> = deliveries
        .iter()
        .map(|d| {
            if kind == FrameKind::NativeDelta && d.is_delta_for(kind, after) {
                deltas += 1;
            }
            let frame = d.frame_for(kind, compress, after);
            after = d.offset;
            frame
        })
        .collect();
    let compressed = match compress {
        Some(_) => frames
            .iter()
            .filter(|f| crate::ws::frame::is_compressed(f))
            .count() as u64,
        None => 0,
    };
    Frames {
        frames,
        last: after,
        compressed,
        deltas,
    }
}

impl Frames<'_> {
    /// Counts `sent` copies of these frames in the metrics.
    fn count(&self, metrics: &GatewayMetrics, sent: u64) {
        metrics.messages_out.inc_by(sent * self.frames.len() as u64);
        if self.compressed > 0 {
            metrics.compressed_out.inc_by(sent * self.compressed);
        }
        if self.deltas > 0 {
            metrics.deltas_out.inc_by(sent * self.deltas);
        }
    }
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

#[cfg(test)]
mod tests {
    //! A shard driven command by command (`apply`, `flush`), or through its
    //! run loop with commands queued before it starts (so they arrive as one
    //! batch, as they do under load). What it writes is read back at the
    //! client's end of real loopback sockets.

    use bytes::Bytes;

    use super::*;
    use crate::json::Json;
    use crate::ws::conn::OutState;
    use crate::ws::frame;
    use crate::ws::test_support::{Peer, Seen, conn_pair, metrics, small_conn_pair};

    const END: &str = "-- end of test --";

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name, 64).expect("channel name")
    }

    /// A message on `ch` whose data is `{"o":offset}` (`{"o":"plain"}` without one),
    /// plus `extra` fields for filters.
    fn msg(ch: &str, offset: Option<Offset>, extra: &str) -> Arc<Delivery> {
        let o = offset.map_or_else(|| "\"plain\"".to_string(), |o| o.to_string());
        let text = if extra.is_empty() {
            format!(r#"{{"o":{o}}}"#)
        } else {
            format!(r#"{{"o":{o},{extra}}}"#)
        };
        let data = Json::parse(Bytes::from(text), 8).expect("JSON");
        Arc::new(Delivery::new(channel(ch), offset, None, data))
    }

    fn raw() -> Mode {
        Mode {
            kind: FrameKind::Bare,
            filter: None,
            compressed: false,
        }
    }

    fn native() -> Mode {
        Mode {
            kind: FrameKind::Native,
            filter: None,
            compressed: false,
        }
    }

    /// Raw frames through a filter on field `k`.
    fn raw_where_k(k: i64) -> Mode {
        let spec = serde_json::json!({ "k": k });
        let spec = spec.as_object().expect("object").clone();
        let filter = Filter::compile(&spec, &crate::filter::FilterLimits::default())
            .expect("filter compiles");
        Mode {
            kind: FrameKind::Bare,
            filter: Some(Arc::new(filter)),
            compressed: false,
        }
    }

    fn shard(max_held: usize) -> (Shard, Arc<super::super::Resyncs>) {
        let (_tx, rx) = mpsc::channel(16);
        shard_on(rx, max_held)
    }

    /// A shard that reads its commands from `rx`.
    fn shard_on(
        rx: mpsc::Receiver<ShardCmd>,
        max_held: usize,
    ) -> (Shard, Arc<super::super::Resyncs>) {
        let resyncs = Arc::new(super::super::Resyncs::default());
        let shard = Shard::new(
            rx,
            metrics(),
            max_held,
            vec![HeartbeatConfig::default()],
            resyncs.clone(),
            DeflateConfig::default(),
        );
        (shard, resyncs)
    }

    fn join_cmd(conn: &Arc<Conn>, ch: &str, mode: Mode) -> ShardCmd {
        let (done, _) = oneshot::channel();
        ShardCmd::Join {
            conn: conn.clone(),
            channel: channel(ch),
            mode,
            done,
        }
    }

    fn release_cmd(conn: &Conn, ch: &str, after: Offset) -> ShardCmd {
        ShardCmd::Release {
            conn: conn.id(),
            channel: channel(ch),
            after,
        }
    }

    fn deliver(shard: &mut Shard, deliveries: &[Arc<Delivery>]) {
        let mut pending = deliveries.to_vec();
        shard.flush(&mut pending);
        assert!(pending.is_empty());
    }

    /// What a client received up to now, each text frame's `o` (an offset,
    /// or "plain"); the native form's offset must match the data's.
    async fn offsets(conn: &Conn, peer: &mut Peer) -> Vec<String> {
        conn.send_text(END);
        let mut out = Vec::new();
        loop {
            let seen = peer.frame_flushing(conn).await;
            let text = match seen {
                Seen::Binary(_) => continue, // filler, see `blocked`
                Seen::Text(t) if t == END => return out,
                Seen::Text(t) => t,
                other => panic!("unexpected frame {other:?}"),
            };
            let v: serde_json::Value = serde_json::from_str(&text).expect("JSON frame");
            let data = if v["type"] == "message" {
                assert_eq!(v["offset"], v["data"]["o"], "native offset: {text}");
                &v["data"]
            } else {
                &v
            };
            out.push(match &data["o"] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A connection whose kernel buffers are full: whatever it is sent next
    /// is queued, one buffer per write.
    async fn blocked(id: ConnId) -> (Arc<Conn>, Peer) {
        let (conn, peer) = small_conn_pair(id, 64 << 20).await;
        let filler = frame::encode(frame::OpCode::Binary, &[0; 4096]);
        for _ in 0..10_000 {
            if conn.has_queued() {
                return (conn, peer);
            }
            assert_eq!(conn.send(filler.clone()), Sent::Accepted);
        }
        panic!("the kernel buffers never filled up");
    }

    /// A snapshot-like message at `offset` (most of it the same every time),
    /// with the previous one as its delta base.
    fn snapshot_msg(offset: Offset) -> Arc<Delivery> {
        let text = |o: Offset| {
            let rows: Vec<String> = (0..40)
                .map(|i| format!(r#"{{"peer":"p{i}","status":"online","n":{}}}"#, o * (i % 2)))
                .collect();
            format!(r#"{{"o":{o},"peers":[{}]}}"#, rows.join(","))
        };
        let json = |o: Offset| Json::parse(Bytes::from(text(o)), 8).expect("JSON");
        let base = (offset > 1).then(|| (offset - 1, json(offset - 1)));
        Arc::new(Delivery::new(channel("c"), Some(offset), None, json(offset)).with_base(base))
    }

    /// What a delta subscriber received: per message, its offset and whether
    /// it came as a delta (decoded and checked against the message).
    async fn delta_frames(conn: &Conn, peer: &mut Peer) -> Vec<(u64, bool)> {
        conn.send_text(END);
        let mut out = Vec::new();
        let mut previous: Option<Vec<u8>> = None;
        loop {
            let text = match peer.frame_flushing(conn).await {
                Seen::Text(t) if t == END => return out,
                Seen::Text(t) => t,
                other => panic!("unexpected frame {other:?}"),
            };
            let v: serde_json::Value = serde_json::from_str(&text).expect("JSON frame");
            let offset = v["offset"].as_u64().expect("offset");
            let data = v["data"].as_str().expect("delta form: data as text");
            let delta = v["delta"] == true;
            let whole = if delta {
                let patch: Vec<u8> = data.chars().map(|c| c as u8).collect();
                fossil_delta::apply(previous.as_ref().expect("a base"), patch).expect("applies")
            } else {
                data.as_bytes().to_vec()
            };
            assert_eq!(
                whole,
                snapshot_msg(offset).data.as_bytes(),
                "offset {offset} decodes to the message"
            );
            previous = Some(whole);
            out.push((offset, delta));
        }
    }

    #[tokio::test]
    async fn delta_subscribers_get_a_delta_only_when_they_have_its_base() {
        let (mut shard, _) = shard(100);
        let mode = Mode {
            kind: FrameKind::NativeDelta,
            filter: None,
            compressed: false,
        };
        let (a, mut pa) = conn_pair(1, 1 << 20).await;
        shard.apply(join_cmd(&a, "c", mode.clone()));
        shard.apply(release_cmd(&a, "c", 0));
        deliver(&mut shard, &[snapshot_msg(1)]);
        deliver(&mut shard, &[snapshot_msg(2)]);
        // B joins now: 3 is held for it, its start went up to 2.
        let (b, mut pb) = conn_pair(2, 1 << 20).await;
        shard.apply(join_cmd(&b, "c", mode.clone()));
        deliver(&mut shard, &[snapshot_msg(3)]);
        shard.apply(release_cmd(&b, "c", 2));
        // C joins and is released with nothing held: it has no base yet.
        let (c, mut pc) = conn_pair(3, 1 << 20).await;
        shard.apply(join_cmd(&c, "c", mode.clone()));
        shard.apply(release_cmd(&c, "c", 3));
        // One batch of two: C takes the buffer with its first message whole.
        deliver(&mut shard, &[snapshot_msg(4), snapshot_msg(5)]);
        assert_eq!(
            delta_frames(&a, &mut pa).await,
            [(1, false), (2, true), (3, true), (4, true), (5, true)]
        );
        assert_eq!(
            delta_frames(&b, &mut pb).await,
            [(3, false), (4, true), (5, true)]
        );
        assert_eq!(delta_frames(&c, &mut pc).await, [(4, false), (5, true)]);
        // A resync forgets every base: the next message is whole.
        shard.apply(ShardCmd::Resync(channel("c")));
        shard.apply(release_cmd(&a, "c", 5));
        deliver(&mut shard, &[snapshot_msg(6)]);
        assert_eq!(delta_frames(&a, &mut pa).await, [(6, false)]);
    }

    struct HoldCase {
        name: &'static str,
        /// Delivered while the subscriber is held.
        held: Vec<Option<Offset>>,
        /// `Release` after this offset.
        after: Offset,
        /// Delivered after the release, each inner list as one batch.
        live: Vec<Vec<Option<Offset>>>,
        /// What the client receives, in order.
        expected: Vec<&'static str>,
    }

    #[tokio::test]
    async fn held_messages_are_released_after_the_offset_in_order() {
        let cases = [
            HoldCase {
                name: "held up to 5, start up to 3: 4 and 5 go out, then live",
                held: vec![Some(1), Some(2), Some(3), Some(4), Some(5)],
                after: 3,
                live: vec![vec![Some(6)]],
                expected: vec!["4", "5", "6"],
            },
            HoldCase {
                name: "everything held was in the start",
                held: vec![Some(2), Some(3)],
                after: 3,
                live: vec![vec![Some(4)]],
                expected: vec!["4"],
            },
            HoldCase {
                name: "nothing held",
                held: vec![],
                after: 0,
                live: vec![vec![Some(1)], vec![Some(2)]],
                expected: vec!["1", "2"],
            },
            HoldCase {
                name: "plain messages (no offset) held are sent, in order",
                held: vec![None, Some(2), None, Some(3)],
                after: 2,
                live: vec![],
                expected: vec!["plain", "plain", "3"],
            },
            HoldCase {
                name: "the start read further than the live feed: live up to it is skipped",
                held: vec![Some(1), Some(2)],
                after: 4,
                live: vec![vec![Some(3)], vec![Some(4)], vec![Some(5)], vec![Some(6)]],
                expected: vec!["5", "6"],
            },
            HoldCase {
                name: "the start read further: the floor applies inside one batch",
                held: vec![],
                after: 4,
                live: vec![vec![Some(3), Some(4), Some(5), None, Some(6)]],
                expected: vec!["5", "plain", "6"],
            },
            HoldCase {
                name: "plain messages pass the floor",
                held: vec![],
                after: 4,
                live: vec![vec![None], vec![Some(4)], vec![Some(5)]],
                expected: vec!["plain", "5"],
            },
        ];
        let mut failures = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let (mut shard, _) = shard(100);
            let (conn, mut peer) = conn_pair(i as ConnId, 1 << 20).await;
            shard.apply(join_cmd(&conn, "c", raw()));
            for o in &case.held {
                deliver(&mut shard, &[msg("c", *o, "")]);
            }
            let before: Vec<String> = {
                conn.send_text(END);
                peer.until(END)
                    .await
                    .into_iter()
                    .map(|s| format!("{s:?}"))
                    .collect()
            };
            shard.apply(release_cmd(&conn, "c", case.after));
            for batch in &case.live {
                let batch: Vec<_> = batch.iter().map(|o| msg("c", *o, "")).collect();
                deliver(&mut shard, &batch);
            }
            let got = offsets(&conn, &mut peer).await;
            if !before.is_empty() {
                failures.push(format!("{}: sent while held: {before:?}", case.name));
            }
            if got != strings(&case.expected) {
                failures.push(format!(
                    "{}: got {got:?}, expected {:?}",
                    case.name, case.expected
                ));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[tokio::test]
    async fn too_many_held_messages_close_the_subscriber_with_4000() {
        let (mut shard, _) = shard(3);
        let (slow, mut slow_peer) = conn_pair(1, 1 << 20).await;
        let (live, mut live_peer) = conn_pair(2, 1 << 20).await;
        shard.apply(join_cmd(&live, "c", raw()));
        shard.apply(release_cmd(&live, "c", 0));
        shard.apply(join_cmd(&slow, "c", raw()));
        for o in 1..=3 {
            deliver(&mut shard, &[msg("c", Some(o), "")]);
        }
        assert_eq!(slow.state(), OutState::Open, "at the limit, still held");
        deliver(&mut shard, &[msg("c", Some(4), "")]);
        assert_eq!(slow.state(), OutState::Closing(CloseCode::SlowConsumer));
        assert_eq!(slow.flush(), crate::ws::conn::Flush::Done);
        assert_eq!(slow_peer.frame().await, Seen::Close(Some(4000)));
        assert_eq!(
            offsets(&live, &mut live_peer).await,
            strings(&["1", "2", "3", "4"]),
            "the others are not affected"
        );
    }

    #[tokio::test]
    async fn deliveries_queued_meanwhile_are_coalesced_per_channel_and_group() {
        let (tx, rx) = mpsc::channel(64);
        let (shard, _) = shard_on(rx, 100);
        // a and b share a group; c takes the native form; d filters; e is on
        // another channel. a and e cannot write: each write they get queues.
        let (a, mut a_peer) = blocked(1).await;
        let (b, mut b_peer) = conn_pair(2, 1 << 20).await;
        let (c, mut c_peer) = conn_pair(3, 1 << 20).await;
        let (d, mut d_peer) = conn_pair(4, 1 << 20).await;
        let (e, mut e_peer) = blocked(5).await;
        let (a_before, e_before) = (a.queued_buffers(), e.queued_buffers());
        let mut commands = vec![
            join_cmd(&a, "x", raw()),
            join_cmd(&b, "x", raw()),
            join_cmd(&c, "x", native()),
            join_cmd(&d, "x", raw_where_k(1)),
            join_cmd(&e, "y", raw()),
        ];
        for conn in [&a, &b, &c, &d] {
            commands.push(release_cmd(conn, "x", 0));
        }
        commands.push(release_cmd(&e, "y", 0));
        for d in [
            msg("x", Some(1), r#""k":1"#),
            msg("y", Some(1), ""),
            msg("x", Some(2), r#""k":2"#),
            msg("x", Some(3), r#""k":1"#),
            msg("y", Some(2), ""),
        ] {
            commands.push(ShardCmd::Deliver(d));
        }
        for cmd in commands {
            assert!(tx.try_send(cmd).is_ok());
        }
        drop(tx);
        // Everything is queued before the shard starts: one batch; the shard
        // returns once its queue is closed and empty.
        shard.run().await;

        assert_eq!(
            a.queued_buffers() - a_before,
            1,
            "three messages of x, one write"
        );
        assert_eq!(
            e.queued_buffers() - e_before,
            1,
            "two messages of y, one write"
        );
        let x_all = strings(&["1", "2", "3"]);
        assert_eq!(offsets(&a, &mut a_peer).await, x_all);
        assert_eq!(offsets(&b, &mut b_peer).await, x_all);
        assert_eq!(offsets(&c, &mut c_peer).await, x_all, "native form");
        assert_eq!(offsets(&d, &mut d_peer).await, strings(&["1", "3"]));
        assert_eq!(offsets(&e, &mut e_peer).await, strings(&["1", "2"]));
    }

    #[tokio::test]
    async fn a_join_between_deliveries_splits_the_batch() {
        let (tx, rx) = mpsc::channel(64);
        let (shard, _) = shard_on(rx, 100);
        let (old, mut old_peer) = conn_pair(1, 1 << 20).await;
        let (new, mut new_peer) = conn_pair(2, 1 << 20).await;
        let commands = vec![
            join_cmd(&old, "x", raw()),
            release_cmd(&old, "x", 0),
            ShardCmd::Deliver(msg("x", Some(1), "")),
            ShardCmd::Deliver(msg("x", Some(2), "")),
            join_cmd(&new, "x", raw()),
            ShardCmd::Deliver(msg("x", Some(3), "")),
            release_cmd(&new, "x", 1),
            ShardCmd::Deliver(msg("x", Some(4), "")),
        ];
        for cmd in commands {
            assert!(tx.try_send(cmd).is_ok());
        }
        drop(tx);
        shard.run().await;
        assert_eq!(
            offsets(&old, &mut old_peer).await,
            strings(&["1", "2", "3", "4"])
        );
        // 1 and 2 came before its join; 3 was held and is after 1.
        assert_eq!(offsets(&new, &mut new_peer).await, strings(&["3", "4"]));
    }

    #[tokio::test]
    async fn regroup_moves_a_subscriber_in_order_with_deliveries() {
        let (tx, rx) = mpsc::channel(64);
        let (shard, _) = shard_on(rx, 100);
        let (mover, mut mover_peer) = conn_pair(1, 1 << 20).await;
        let (stayer, mut stayer_peer) = conn_pair(2, 1 << 20).await;
        let (former, mut former_peer) = conn_pair(3, 1 << 20).await;
        let commands = vec![
            join_cmd(&mover, "x", raw_where_k(1)),
            join_cmd(&stayer, "x", raw_where_k(1)),
            join_cmd(&former, "x", raw()),
            release_cmd(&mover, "x", 0),
            release_cmd(&stayer, "x", 0),
            release_cmd(&former, "x", 0),
            ShardCmd::Deliver(msg("x", Some(1), r#""k":1"#)),
            ShardCmd::Deliver(msg("x", Some(2), r#""k":2"#)),
            ShardCmd::Regroup {
                conn: mover.id(),
                channel: channel("x"),
                mode: raw_where_k(2),
            },
            ShardCmd::Regroup {
                conn: former.id(),
                channel: channel("x"),
                mode: native(),
            },
            ShardCmd::Deliver(msg("x", Some(3), r#""k":1"#)),
            ShardCmd::Deliver(msg("x", Some(4), r#""k":2"#)),
        ];
        for cmd in commands {
            assert!(tx.try_send(cmd).is_ok());
        }
        drop(tx);
        shard.run().await;
        assert_eq!(
            offsets(&mover, &mut mover_peer).await,
            strings(&["1", "4"]),
            "the old filter before the move, the new one after"
        );
        assert_eq!(
            offsets(&stayer, &mut stayer_peer).await,
            strings(&["1", "3"])
        );
        let seen = {
            former.send_text(END);
            former_peer.until(END).await
        };
        let forms: Vec<bool> = seen
            .iter()
            .map(|s| matches!(s, Seen::Text(t) if t.contains(r#""type":"message""#)))
            .collect();
        assert_eq!(
            forms,
            vec![false, false, true, true],
            "raw before the move, native after: {seen:?}"
        );
    }

    #[tokio::test]
    async fn regroup_reuses_a_matching_group_and_drops_emptied_ones() {
        let (mut shard, _) = shard(100);
        let (a, _a_peer) = conn_pair(1, 1 << 20).await;
        let (b, _b_peer) = conn_pair(2, 1 << 20).await;
        shard.apply(join_cmd(&a, "x", raw_where_k(1)));
        shard.apply(join_cmd(&b, "x", raw_where_k(2)));
        let groups = |shard: &Shard| -> Vec<usize> {
            shard.channels[&channel("x")]
                .iter()
                .map(|g| g.subscribers.len())
                .collect()
        };
        assert_eq!(groups(&shard), vec![1, 1]);
        shard.apply(ShardCmd::Regroup {
            conn: a.id(),
            channel: channel("x"),
            mode: raw_where_k(2),
        });
        assert_eq!(groups(&shard), vec![2], "equal filters share one group");
        // Unknown connection or channel: nothing happens.
        shard.apply(ShardCmd::Regroup {
            conn: 99,
            channel: channel("x"),
            mode: raw(),
        });
        shard.apply(ShardCmd::Regroup {
            conn: a.id(),
            channel: channel("nope"),
            mode: raw(),
        });
        assert_eq!(groups(&shard), vec![2]);
        assert_eq!(shard.channels.len(), 1);
    }

    #[tokio::test]
    async fn leave_stops_deliveries_and_forgets_an_empty_channel() {
        let (mut shard, _) = shard(100);
        let (a, mut a_peer) = conn_pair(1, 1 << 20).await;
        let (b, mut b_peer) = conn_pair(2, 1 << 20).await;
        for conn in [&a, &b] {
            shard.apply(join_cmd(conn, "x", raw()));
            shard.apply(release_cmd(conn, "x", 0));
        }
        deliver(&mut shard, &[msg("x", Some(1), "")]);
        let leave = |conn: &Conn| ShardCmd::Leave {
            conn: conn.id(),
            channel: channel("x"),
        };
        shard.apply(leave(&a));
        deliver(&mut shard, &[msg("x", Some(2), "")]);
        assert_eq!(offsets(&a, &mut a_peer).await, strings(&["1"]));
        assert_eq!(offsets(&b, &mut b_peer).await, strings(&["1", "2"]));
        shard.apply(leave(&a)); // twice: nothing happens
        assert!(shard.channels.contains_key(&channel("x")));
        shard.apply(leave(&b));
        assert!(
            !shard.channels.contains_key(&channel("x")),
            "no subscriber left: the channel is forgotten"
        );
        deliver(&mut shard, &[msg("x", Some(3), "")]);
        assert_eq!(offsets(&b, &mut b_peer).await, Vec::<String>::new());
    }

    #[tokio::test]
    async fn resync_holds_live_messages_and_asks_each_connection_to_restart() {
        let (mut shard, resyncs) = shard(100);
        let (a, mut a_peer) = conn_pair(1, 1 << 20).await;
        let (b, mut b_peer) = conn_pair(2, 1 << 20).await;
        let (joining, mut joining_peer) = conn_pair(3, 1 << 20).await;
        let (other, _other_peer) = conn_pair(4, 1 << 20).await;
        for conn in [&a, &b] {
            shard.apply(join_cmd(conn, "x", raw()));
            shard.apply(release_cmd(conn, "x", 0));
        }
        shard.apply(join_cmd(&other, "y", raw()));
        shard.apply(release_cmd(&other, "y", 0));
        shard.apply(join_cmd(&joining, "x", raw()));
        deliver(&mut shard, &[msg("x", Some(1), "")]);

        shard.apply(ShardCmd::Resync(channel("x")));
        for conn in [&a, &b, &joining] {
            assert!(conn.take_work(), "conn {} is woken", conn.id());
            assert_eq!(resyncs.take(conn.id()), vec![channel("x")]);
        }
        assert!(!other.take_work(), "another channel's subscriber is not");
        assert!(resyncs.take(other.id()).is_empty());

        deliver(&mut shard, &[msg("x", Some(5), "")]);
        deliver(&mut shard, &[msg("x", Some(6), "")]);
        // Each restarted subscription was read up to a different offset.
        shard.apply(release_cmd(&a, "x", 5));
        shard.apply(release_cmd(&b, "x", 6));
        // The joining one's start was read before the resync: its release is
        // stale and lets nothing out (5 and 6 lie past the gap the resync is
        // about, which the client has not been told of yet); its restart's
        // release does.
        shard.apply(release_cmd(&joining, "x", 0));
        shard.apply(release_cmd(&joining, "x", 5));
        deliver(&mut shard, &[msg("x", Some(7), "")]);
        assert_eq!(
            offsets(&a, &mut a_peer).await,
            strings(&["1", "6", "7"]),
            "held from the resync on, released after its restart"
        );
        assert_eq!(offsets(&b, &mut b_peer).await, strings(&["1", "7"]));
        assert_eq!(
            offsets(&joining, &mut joining_peer).await,
            strings(&["6", "7"]),
            "a subscriber still held when the resync came is released by its restart only"
        );
        // A channel this shard has no subscriber of: nothing to do.
        shard.apply(ShardCmd::Resync(channel("nope")));
        assert!(!a.take_work());
    }

    #[tokio::test]
    async fn release_of_an_unknown_subscriber_does_nothing() {
        let (mut shard, _) = shard(100);
        let (a, mut a_peer) = conn_pair(1, 1 << 20).await;
        shard.apply(join_cmd(&a, "x", raw()));
        deliver(&mut shard, &[msg("x", Some(1), "")]);
        shard.apply(release_cmd(&a, "nope", 0));
        shard.apply(ShardCmd::Release {
            conn: 99,
            channel: channel("x"),
            after: 0,
        });
        assert_eq!(
            offsets(&a, &mut a_peer).await,
            Vec::<String>::new(),
            "still held"
        );
        shard.apply(release_cmd(&a, "x", 0));
        assert_eq!(offsets(&a, &mut a_peer).await, strings(&["1"]));
    }
}
