//! The hub: a replica's local fan-out, between the engine's live feed and the
//! client connections.
//!
//! * One engine subscription per channel however many local clients want it,
//!   taken on the first local subscriber and dropped after the last (the
//!   subscription manager task serializes these, in batches).
//! * The dispatcher checks each message of the engine feed against the last
//!   offset seen on its channel — dropping duplicates and filling gaps from
//!   history — and hands one shared [`Delivery`] to each shard that has
//!   subscribers of the channel. A message that continues its channel, when
//!   every shard queue it goes to has room, is dispatched in place on the
//!   engine's reader task ([`InlineReceiver`]); anything else (a gap, a new
//!   epoch, a full queue, feed loss and restore) goes through the dispatcher
//!   task, and later messages queue behind it, so the order holds.
//! * Shards ([`shard`]) write the frames to the sockets.
//!
//! Joining is two-phase so that a subscription can start with a snapshot and
//! history and continue with live messages with no gap and no duplicate: the
//! shard holds live messages for the new subscriber until the connection has sent
//! the start and releases it from the last offset it sent.

pub mod delivery;
mod delta;
pub mod heartbeat;
pub mod shard;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use delivery::Base;
pub use delivery::{Delivery, FrameKind};
pub use heartbeat::HeartbeatConfig;
pub use shard::Mode;
use shard::{Shard, ShardCmd};

use crate::channel::ChannelName;
use crate::engine::{
    Engine, EngineEvent, Epoch, EventFeed, IncomingMessage, InlineReceiver, Offset,
};
use crate::json::Json;
use crate::metrics::GatewayMetrics;
use crate::ws::conn::{Conn, ConnId};

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Fan-out shards (tasks that write to sockets); default: one per worker thread.
    pub shards: usize,
    /// Commands queued per shard before senders wait.
    pub shard_queue: usize,
    /// Messages held for a joining subscriber before it is closed as a slow consumer.
    pub max_held: usize,
    /// Longest wait for the engine to confirm a new channel subscription.
    pub subscribe_timeout: Duration,
    /// Most history entries read to fill one gap in the live feed.
    pub gap_fill_limit: usize,
    /// Pings, pong timeout, idle limit, token-expiry grace: heartbeat profile 0,
    /// the native protocol's.
    pub heartbeat: HeartbeatConfig,
    /// Profiles 1, 2, …: how other dialects' connections are kept alive.
    pub dialect_heartbeats: Vec<HeartbeatConfig>,
    /// permessage-deflate: whether it is negotiated, from what size a message
    /// is compressed, how hard (each message once per replica).
    pub compression: crate::ws::deflate::DeflateConfig,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            shards: 2,
            shard_queue: 8192,
            max_held: 10_000,
            subscribe_timeout: Duration::from_secs(5),
            gap_fill_limit: 10_000,
            heartbeat: HeartbeatConfig::default(),
            dialect_heartbeats: Vec::new(),
            compression: crate::ws::deflate::DeflateConfig::default(),
        }
    }
}

/// Why a subscription could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("the engine could not subscribe the channel: {0}")]
    Unavailable(String),
    #[error("the gateway is shutting down")]
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SubStatus {
    Pending,
    Live,
    Failed(String),
}

struct ChannelEntry {
    subscribers: usize,
    per_shard: Vec<u32>,
    status: watch::Sender<SubStatus>,
    /// The newest offset dispatched (or known at subscribe time), with its epoch.
    last: Option<(Epoch, Offset)>,
    /// The data of the message at `last`, when it was dispatched here: the
    /// base a delta of the next message is computed against.
    last_data: Option<Json>,
}

enum SubOp {
    Subscribe(ChannelName),
    Unsubscribe(ChannelName),
}

/// Subscriptions whose continuity was lost, per connection: the shards ask,
/// the connection's task takes them (its connection is woken for it).
#[derive(Default)]
pub(crate) struct Resyncs {
    pending: Mutex<HashMap<ConnId, Vec<ChannelName>>>,
}

impl Resyncs {
    fn request(&self, conn: &Conn, channel: &ChannelName) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let list = pending.entry(conn.id()).or_default();
        if !list.contains(channel) {
            list.push(channel.clone());
        }
        drop(pending);
        conn.flag_work();
    }

    fn take(&self, conn: ConnId) -> Vec<ChannelName> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&conn)
            .unwrap_or_default()
    }
}

/// See the module documentation.
pub struct Hub {
    engine: Arc<dyn Engine>,
    shards: Vec<mpsc::Sender<ShardCmd>>,
    table: Mutex<HashMap<ChannelName, ChannelEntry>>,
    ops: mpsc::UnboundedSender<SubOp>,
    metrics: Arc<GatewayMetrics>,
    next_shard: AtomicUsize,
    config: HubConfig,
    control: Option<mpsc::UnboundedSender<serde_json::Value>>,
    catching_up: AtomicBool,
    resyncs: Arc<Resyncs>,
}

/// What the dispatcher does with one live message.
enum Step {
    Drop,
    /// To these shards, with the previous message of the channel as its delta base.
    Deliver(Vec<usize>, Option<Base>),
    Fill {
        after: Offset,
    },
    /// The epoch changed: subscribers restart, then the message goes out.
    Resync(Vec<usize>),
}

impl Hub {
    /// Starts the shards, the subscription manager and the dispatcher.
    /// Control messages from the engine go to `control`, if given.
    pub fn start(
        engine: Arc<dyn Engine>,
        events: EventFeed,
        metrics: Arc<GatewayMetrics>,
        config: HubConfig,
        control: Option<mpsc::UnboundedSender<serde_json::Value>>,
    ) -> Arc<Self> {
        let shard_count = config.shards.max(1);
        let resyncs = Arc::new(Resyncs::default());
        let shards = (0..shard_count)
            .map(|_| {
                let (tx, rx) = mpsc::channel(config.shard_queue);
                let shard = Shard::new(
                    rx,
                    metrics.clone(),
                    config.max_held,
                    std::iter::once(config.heartbeat.clone())
                        .chain(config.dialect_heartbeats.iter().cloned())
                        .collect(),
                    resyncs.clone(),
                    config.compression,
                );
                tokio::spawn(shard.run());
                tx
            })
            .collect();
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Self {
            engine,
            shards,
            table: Mutex::new(HashMap::new()),
            ops: ops_tx,
            metrics,
            next_shard: AtomicUsize::new(0),
            config,
            control,
            catching_up: AtomicBool::new(false),
            resyncs,
        });
        tokio::spawn(hub.clone().manage(ops_rx));
        let inline: Arc<dyn InlineReceiver> = hub.clone();
        events.attach(Arc::downgrade(&inline));
        tokio::spawn(hub.clone().dispatch(events));
        hub
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ChannelName, ChannelEntry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Picks the shard for a new connection (round robin).
    pub fn assign_shard(&self) -> usize {
        self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len()
    }

    /// Starts heartbeats, idle and token-expiry checks for a connection,
    /// under heartbeat profile `profile` (0: `heartbeat`; n: `dialect_heartbeats[n-1]`).
    pub async fn watch(&self, conn: &Arc<Conn>, shard: usize, profile: heartbeat::Profile) {
        let _ = self.shards[shard]
            .send(ShardCmd::Watch(conn.clone(), profile))
            .await;
    }

    /// Changes how a subscriber of `channel` receives its messages (its
    /// filter or form), in order with the deliveries of its shard.
    pub async fn set_mode(&self, conn: ConnId, shard: usize, channel: &ChannelName, mode: Mode) {
        let _ = self.shards[shard]
            .send(ShardCmd::Regroup {
                conn,
                channel: channel.clone(),
                mode,
            })
            .await;
    }

    /// The subscriptions of `conn` to restart, if its connection was flagged
    /// ([`Conn::take_work`]); each is held by its shard until released.
    pub fn take_resyncs(&self, conn: &Conn) -> Vec<ChannelName> {
        if conn.take_work() {
            self.resyncs.take(conn.id())
        } else {
            Vec::new()
        }
    }

    /// Forgets what was pending for a connection that ended.
    pub fn forget_connection(&self, conn: ConnId) {
        self.resyncs.take(conn);
    }

    /// The newest offset this replica has seen on `channel` (dispatched, or
    /// known when it was subscribed), if it has local subscribers.
    pub fn last_offset(&self, channel: &ChannelName) -> Option<Offset> {
        self.lock()
            .get(channel)
            .and_then(|e| e.last.as_ref().map(|(_, o)| *o))
    }

    /// Adds `conn` as a subscriber of `channel` in held mode: live messages are
    /// kept for it until [`Hub::release`]. Returns once the engine subscription
    /// is active, so any message published from now on reaches the subscriber.
    pub async fn join(
        &self,
        conn: &Arc<Conn>,
        shard: usize,
        channel: &ChannelName,
        mode: Mode,
    ) -> Result<(), HubError> {
        let (mut status, first) = {
            let mut table = self.lock();
            let shards = self.shards.len();
            let entry = table
                .entry(channel.clone())
                .or_insert_with(|| ChannelEntry {
                    subscribers: 0,
                    per_shard: vec![0; shards],
                    status: watch::Sender::new(SubStatus::Pending),
                    last: None,
                    last_data: None,
                });
            entry.subscribers += 1;
            entry.per_shard[shard] += 1;
            (entry.status.subscribe(), entry.subscribers == 1)
        };
        if first {
            self.metrics.channels.inc();
            if self.ops.send(SubOp::Subscribe(channel.clone())).is_err() {
                self.forget(shard, channel);
                return Err(HubError::Closed);
            }
        }
        let wait = status.wait_for(|s| *s != SubStatus::Pending);
        let outcome = match tokio::time::timeout(self.config.subscribe_timeout, wait).await {
            Ok(Ok(s)) => s.clone(),
            Ok(Err(_)) => SubStatus::Failed("the subscription was dropped".into()),
            Err(_) => {
                SubStatus::Failed("the engine did not confirm the subscription in time".into())
            }
        };
        if let SubStatus::Failed(why) = outcome {
            self.forget(shard, channel);
            return Err(HubError::Unavailable(why));
        }
        let (done_tx, done_rx) = oneshot::channel();
        let join = ShardCmd::Join {
            conn: conn.clone(),
            channel: channel.clone(),
            mode,
            done: done_tx,
        };
        if self.shards[shard].send(join).await.is_err() || done_rx.await.is_err() {
            self.forget(shard, channel);
            return Err(HubError::Closed);
        }
        self.metrics.subscriptions.inc();
        Ok(())
    }

    /// Turns a joined subscriber live: held messages with offsets after `after`
    /// (and plain ones without an offset) go out, then every new message.
    pub async fn release(&self, conn: ConnId, shard: usize, channel: &ChannelName, after: Offset) {
        let _ = self.shards[shard]
            .send(ShardCmd::Release {
                conn,
                channel: channel.clone(),
                after,
            })
            .await;
    }

    /// Removes a joined subscriber.
    pub async fn leave(&self, conn: ConnId, shard: usize, channel: &ChannelName) {
        let _ = self.shards[shard]
            .send(ShardCmd::Leave {
                conn,
                channel: channel.clone(),
            })
            .await;
        self.forget(shard, channel);
        self.metrics.subscriptions.dec();
    }

    /// Drops one subscriber from the counts; unsubscribes after the last.
    fn forget(&self, shard: usize, channel: &ChannelName) {
        let last = {
            let mut table = self.lock();
            let Some(entry) = table.get_mut(channel) else {
                return;
            };
            entry.subscribers = entry.subscribers.saturating_sub(1);
            entry.per_shard[shard] = entry.per_shard[shard].saturating_sub(1);
            if entry.subscribers == 0 {
                table.remove(channel);
                true
            } else {
                false
            }
        };
        if last {
            self.metrics.channels.dec();
            let _ = self.ops.send(SubOp::Unsubscribe(channel.clone()));
        }
    }

    /// Channels with local subscribers and their subscriber counts.
    pub fn channel_counts(&self) -> Vec<(ChannelName, usize)> {
        self.lock()
            .iter()
            .map(|(c, e)| (c.clone(), e.subscribers))
            .collect()
    }

    /// The subscription manager: applies subscribe/unsubscribe in order, batching
    /// consecutive ones of the same kind into one engine call.
    async fn manage(self: Arc<Self>, mut ops: mpsc::UnboundedReceiver<SubOp>) {
        let mut batch = Vec::new();
        while ops.recv_many(&mut batch, 512).await > 0 {
            let mut run: Vec<ChannelName> = Vec::new();
            let mut subscribing = true;
            for op in batch.drain(..) {
                let (is_sub, channel) = match op {
                    SubOp::Subscribe(c) => (true, c),
                    SubOp::Unsubscribe(c) => (false, c),
                };
                if is_sub != subscribing && !run.is_empty() {
                    self.apply_ops(subscribing, std::mem::take(&mut run)).await;
                }
                subscribing = is_sub;
                run.push(channel);
            }
            if !run.is_empty() {
                self.apply_ops(subscribing, run).await;
            }
        }
    }

    async fn apply_ops(&self, subscribe: bool, channels: Vec<ChannelName>) {
        if !subscribe {
            // Only channels that nobody re-joined meanwhile.
            let gone: Vec<ChannelName> = {
                let table = self.lock();
                channels
                    .into_iter()
                    .filter(|c| !table.contains_key(c))
                    .collect()
            };
            if !gone.is_empty()
                && let Err(e) = self.engine.unsubscribe(&gone).await
            {
                tracing::warn!(error = %e, "engine unsubscribe failed");
            }
            return;
        }
        let wanted: Vec<ChannelName> = {
            let table = self.lock();
            channels
                .into_iter()
                .filter(|c| table.contains_key(c))
                .collect()
        };
        if wanted.is_empty() {
            return;
        }
        let result = self.engine.subscribe(&wanted).await;
        for channel in &wanted {
            let status = match &result {
                Err(e) => SubStatus::Failed(e.to_string()),
                // The position at subscribe time anchors gap detection: every
                // later message must continue from it.
                Ok(()) => match self.engine.position(channel).await {
                    Ok(p) => {
                        if let Some(entry) = self.lock().get_mut(channel)
                            && entry.last.is_none()
                        {
                            entry.last = Some((p.epoch, p.offset));
                        }
                        SubStatus::Live
                    }
                    Err(e) => SubStatus::Failed(e.to_string()),
                },
            };
            if let Some(entry) = self.lock().get(channel) {
                entry.status.send_replace(status);
            }
        }
    }

    /// The dispatcher: the engine feed, in order, to the shards.
    async fn dispatch(self: Arc<Self>, mut events: EventFeed) {
        while let Some(event) = events.recv().await {
            self.handle(event).await;
            events.handled();
        }
    }

    async fn handle(&self, event: EngineEvent) {
        match event {
            EngineEvent::Message(m) => {
                self.count_in(&m);
                self.dispatch_message(m).await;
            }
            EngineEvent::Lost => {
                self.catching_up.store(true, Ordering::Relaxed);
                tracing::warn!("engine feed lost: live delivery paused until it is restored");
            }
            EngineEvent::Restored => {
                self.catch_up_all().await;
                self.catching_up.store(false, Ordering::Relaxed);
                tracing::info!("caught up after the engine feed was restored");
            }
            EngineEvent::Control(message) => {
                if let Some(control) = &self.control {
                    let _ = control.send(message);
                }
            }
        }
    }

    fn count_in(&self, m: &IncomingMessage) {
        self.metrics.messages_in.inc();
        self.metrics.bytes_in.inc_by(m.data.as_bytes().len() as u64);
    }

    fn step(&self, m: &IncomingMessage) -> Step {
        let mut table = self.lock();
        let Some(entry) = table.get_mut(&m.channel) else {
            return Step::Drop;
        };
        match judge(entry, m) {
            Verdict::Seen => Step::Drop,
            Verdict::Gap { after } => Step::Fill { after },
            Verdict::NewEpoch => {
                if let (Some((old, _)), Some((_, new))) = (&entry.last, &m.seq) {
                    tracing::warn!(
                        channel = %m.channel, %old, %new,
                        "channel epoch changed: its history was lost in the engine; subscribers restart"
                    );
                }
                advance(entry, m);
                remember(entry, m, None);
                Step::Resync(targets(entry))
            }
            Verdict::Next => {
                let base = base_of(entry, m);
                advance(entry, m);
                remember(entry, m, base)
            }
        }
    }

    async fn dispatch_message(&self, m: IncomingMessage) {
        match self.step(&m) {
            Step::Drop => {}
            Step::Deliver(shards, base) => {
                self.send_to(shards, Delivery::live(m, base)).await;
            }
            Step::Resync(shards) => {
                self.resync(&m.channel, &shards).await;
                self.send_to(shards, Delivery::live(m, None)).await;
            }
            Step::Fill { after } => {
                self.fill_gap(&m.channel, after).await;
                // The message itself was in the history just read, unless the
                // history was lost; then deliver it and move on.
                if let Step::Deliver(shards, base) = self.step(&m) {
                    self.send_to(shards, Delivery::live(m, base)).await;
                }
            }
        }
    }

    /// Dispatches what history holds after `after` on `channel`.
    async fn fill_gap(&self, channel: &ChannelName, after: Offset) {
        let page = match self
            .engine
            .history(channel, after, self.config.gap_fill_limit)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(%channel, error = %e, "could not read history to fill a gap");
                self.metrics.gap_fills.with_label_values(&["lost"]).inc();
                return;
            }
        };
        let result = if page.covered { "filled" } else { "lost" };
        self.metrics.gap_fills.with_label_values(&[result]).inc();
        if !page.covered {
            tracing::warn!(
                %channel, after, top = page.position.offset,
                "messages missed by the live feed are no longer in history; subscribers restart"
            );
            // No partial replay: every subscriber restarts from the current
            // state, and the live feed continues after the position just read.
            let shards = {
                let mut table = self.lock();
                let Some(e) = table.get_mut(channel) else {
                    return;
                };
                e.last = Some((page.position.epoch.clone(), page.position.offset));
                e.last_data = None;
                targets(e)
            };
            self.resync(channel, &shards).await;
            return;
        }
        let epoch = page.position.epoch.clone();
        for entry in page.entries {
            let m = IncomingMessage {
                channel: channel.clone(),
                seq: Some((entry.offset, epoch.clone())),
                published_us: Some(entry.published_us),
                data: entry.data,
            };
            // History entries are contiguous from the first one on.
            let shards = {
                let mut table = self.lock();
                let Some(e) = table.get_mut(channel) else {
                    return;
                };
                match &e.last {
                    Some((le, lo)) if *le == epoch && entry.offset <= *lo => continue,
                    _ => {}
                }
                let base = base_of(e, &m);
                advance(e, &m);
                match remember(e, &m, base) {
                    Step::Deliver(shards, base) => (shards, base),
                    _ => continue,
                }
            };
            let (shards, base) = shards;
            self.send_to(shards, Delivery::live(m, base)).await;
        }
    }

    /// After the feed is restored: every channel catches up from history.
    async fn catch_up_all(&self) {
        let channels: Vec<(ChannelName, Option<Offset>)> = self
            .lock()
            .iter()
            .map(|(c, e)| (c.clone(), e.last.as_ref().map(|(_, o)| *o)))
            .collect();
        tracing::info!(
            channels = channels.len(),
            "catching up from history after the feed was restored"
        );
        for (channel, last) in channels {
            match last {
                Some(after) => self.fill_gap(&channel, after).await,
                None => {
                    if let Ok(p) = self.engine.position(&channel).await
                        && let Some(e) = self.lock().get_mut(&channel)
                        && e.last.is_none()
                    {
                        e.last = Some((p.epoch, p.offset));
                        e.last_data = None;
                    }
                }
            }
        }
    }

    async fn resync(&self, channel: &ChannelName, shards: &[usize]) {
        self.metrics.resyncs.inc();
        for &s in shards {
            let _ = self.shards[s].send(ShardCmd::Resync(channel.clone())).await;
        }
    }

    /// Whether the live feed is whole: false from a lost engine connection
    /// until every channel has caught up from history.
    pub fn feed_ready(&self) -> bool {
        !self.catching_up.load(Ordering::Relaxed)
    }

    async fn send_to(&self, shards: Vec<usize>, d: Arc<Delivery>) {
        for s in shards {
            let _ = self.shards[s].send(ShardCmd::Deliver(d.clone())).await;
        }
    }
}

/// Where a live message stands against its channel's last offset.
enum Verdict {
    /// Seen already (or older): dropped.
    Seen,
    /// The next one (or one without an offset): delivered.
    Next,
    /// Messages after `after` are missing before it.
    Gap { after: Offset },
    /// The channel's epoch changed.
    NewEpoch,
}

fn judge(entry: &ChannelEntry, m: &IncomingMessage) -> Verdict {
    let Some((offset, epoch)) = &m.seq else {
        return Verdict::Next;
    };
    match &entry.last {
        Some((last_epoch, last)) if last_epoch == epoch => {
            if offset <= last {
                Verdict::Seen
            } else if *offset > last + 1 {
                Verdict::Gap { after: *last }
            } else {
                Verdict::Next
            }
        }
        Some(_) => Verdict::NewEpoch,
        None => Verdict::Next,
    }
}

/// The base of `m`, if the previous message of its channel (same epoch, the
/// offset right before) was dispatched here.
fn base_of(entry: &ChannelEntry, m: &IncomingMessage) -> Option<Base> {
    let (offset, epoch) = m.seq.as_ref()?;
    match (&entry.last, &entry.last_data) {
        (Some((last_epoch, last)), Some(data)) if last_epoch == epoch && last + 1 == *offset => {
            Some((*last, data.clone()))
        }
        _ => None,
    }
}

/// Keeps `m` as the base of the channel's next message (a message without an
/// offset is no link of the chain), and says where `m` goes.
fn remember(entry: &mut ChannelEntry, m: &IncomingMessage, base: Option<Base>) -> Step {
    if m.seq.is_some() {
        entry.last_data = Some(m.data.clone());
    }
    Step::Deliver(targets(entry), base)
}

/// The message is the channel's newest from now on.
fn advance(entry: &mut ChannelEntry, m: &IncomingMessage) {
    if let Some((offset, epoch)) = &m.seq {
        entry.last = Some((epoch.clone(), *offset));
    }
}

/// The in-place path (see the module documentation): a message that continues
/// its channel goes to the shards from the engine's reader task when every
/// shard queue it needs has room; anything else is given back to be queued
/// for the dispatcher task, with nothing changed.
impl InlineReceiver for Hub {
    fn offer(&self, event: EngineEvent) -> Option<EngineEvent> {
        let EngineEvent::Message(m) = event else {
            return Some(event);
        };
        let permits = {
            let mut table = self.lock();
            let Some(entry) = table.get_mut(&m.channel) else {
                // Nobody here subscribes it (any more).
                self.count_in(&m);
                return None;
            };
            match judge(entry, &m) {
                Verdict::Seen => {
                    self.count_in(&m);
                    return None;
                }
                Verdict::Gap { .. } | Verdict::NewEpoch => return Some(EngineEvent::Message(m)),
                Verdict::Next => {}
            }
            let base = base_of(entry, &m);
            let reserved: Result<Vec<_>, _> = targets(entry)
                .into_iter()
                .map(|shard| self.shards[shard].try_reserve())
                .collect();
            // A queue full (or stopping): the dispatcher task waits for room.
            let Ok(permits) = reserved else {
                return Some(EngineEvent::Message(m));
            };
            advance(entry, &m);
            if m.seq.is_some() {
                entry.last_data = Some(m.data.clone());
            }
            (permits, base)
        };
        let (permits, base) = permits;
        self.count_in(&m);
        let d = Delivery::live(m, base);
        for permit in permits {
            permit.send(ShardCmd::Deliver(d.clone()));
        }
        None
    }
}

fn targets(entry: &ChannelEntry) -> Vec<usize> {
    entry
        .per_shard
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::engine::memory::MemoryEngine;
    use crate::engine::{HistoryConfig, HistoryPolicy, PublishOptions, event_channel};
    use crate::json::Json;
    use crate::ws::test_support::{Peer, Seen, conn_pair, metrics};

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name, 64).expect("channel name")
    }

    fn entry(last: Option<(&str, Offset)>, per_shard: Vec<u32>) -> ChannelEntry {
        ChannelEntry {
            subscribers: per_shard.iter().map(|n| *n as usize).sum(),
            per_shard,
            status: watch::Sender::new(SubStatus::Live),
            last: last.map(|(e, o)| (Epoch::new(e), o)),
            last_data: None,
        }
    }

    fn incoming(seq: Option<(&str, Offset)>) -> IncomingMessage {
        IncomingMessage {
            channel: channel("c"),
            seq: seq.map(|(e, o)| (o, Epoch::new(e))),
            published_us: None,
            data: Json::parse(Bytes::from_static(b"{}"), 8).expect("JSON"),
        }
    }

    fn show(v: &Verdict) -> String {
        match v {
            Verdict::Seen => "seen".into(),
            Verdict::Next => "next".into(),
            Verdict::Gap { after } => format!("gap after {after}"),
            Verdict::NewEpoch => "new epoch".into(),
        }
    }

    struct Case {
        name: &'static str,
        /// The channel's last (epoch, offset) before the messages.
        last: Option<(&'static str, Offset)>,
        /// The live messages, in order: (epoch, offset), or `None` for a plain PUBLISH.
        messages: Vec<Option<(&'static str, Offset)>>,
        /// The verdict on each.
        verdicts: Vec<&'static str>,
        /// The channel's last after them.
        end: Option<(&'static str, Offset)>,
    }

    #[test]
    fn judge_and_advance_decide_each_live_message() {
        let cases = vec![
            Case {
                name: "in order",
                last: Some(("e", 4)),
                messages: vec![Some(("e", 5)), Some(("e", 6))],
                verdicts: vec!["next", "next"],
                end: Some(("e", 6)),
            },
            Case {
                name: "duplicate and older",
                last: Some(("e", 4)),
                messages: vec![Some(("e", 4)), Some(("e", 1)), Some(("e", 0))],
                verdicts: vec!["seen", "seen", "seen"],
                end: Some(("e", 4)),
            },
            Case {
                name: "gap: the dispatcher fills from history, nothing moves yet",
                last: Some(("e", 4)),
                messages: vec![Some(("e", 7))],
                verdicts: vec!["gap after 4"],
                end: Some(("e", 4)),
            },
            Case {
                name: "gap right after the subscribe position 0",
                last: Some(("e", 0)),
                messages: vec![Some(("e", 2))],
                verdicts: vec!["gap after 0"],
                end: Some(("e", 0)),
            },
            Case {
                name: "first message after subscribing at position 0",
                last: Some(("e", 0)),
                messages: vec![Some(("e", 1))],
                verdicts: vec!["next"],
                end: Some(("e", 1)),
            },
            Case {
                name: "new epoch, whatever its offset",
                last: Some(("e", 4)),
                messages: vec![Some(("f", 1)), Some(("g", 4)), Some(("h", 9))],
                verdicts: vec!["new epoch", "new epoch", "new epoch"],
                end: Some(("h", 9)),
            },
            Case {
                name: "after a new epoch, the new one continues",
                last: Some(("e", 4)),
                messages: vec![
                    Some(("f", 1)),
                    Some(("f", 2)),
                    Some(("f", 2)),
                    Some(("e", 5)),
                ],
                verdicts: vec!["new epoch", "next", "seen", "new epoch"],
                end: Some(("e", 5)),
            },
            Case {
                name: "plain PUBLISH without an offset: delivered, the offset stays",
                last: Some(("e", 4)),
                messages: vec![None, Some(("e", 5)), None],
                verdicts: vec!["next", "next", "next"],
                end: Some(("e", 5)),
            },
            Case {
                name: "plain PUBLISH on a channel with no offset yet",
                last: None,
                messages: vec![None],
                verdicts: vec!["next"],
                end: None,
            },
            Case {
                name: "first message on a channel with no known position",
                last: None,
                messages: vec![Some(("e", 9)), Some(("e", 10)), Some(("e", 12))],
                verdicts: vec!["next", "next", "gap after 10"],
                end: Some(("e", 10)),
            },
            Case {
                name: "the largest offset does not overflow",
                last: Some(("e", u64::MAX)),
                messages: vec![Some(("e", u64::MAX)), Some(("e", 0))],
                verdicts: vec!["seen", "seen"],
                end: Some(("e", u64::MAX)),
            },
            Case {
                name: "just below the largest offset",
                last: Some(("e", u64::MAX - 1)),
                messages: vec![Some(("e", u64::MAX))],
                verdicts: vec!["next"],
                end: Some(("e", u64::MAX)),
            },
        ];
        let mut failures = Vec::new();
        for case in &cases {
            let mut e = entry(case.last, vec![1]);
            // As `Hub::step` does: advance on next and new epoch; a gap is
            // filled (elsewhere) before anything moves.
            let verdicts: Vec<String> = case
                .messages
                .iter()
                .map(|seq| {
                    let m = incoming(*seq);
                    let v = judge(&e, &m);
                    if matches!(v, Verdict::Next | Verdict::NewEpoch) {
                        advance(&mut e, &m);
                    }
                    show(&v)
                })
                .collect();
            if verdicts != case.verdicts {
                failures.push(format!(
                    "{}: verdicts {verdicts:?}, expected {:?}",
                    case.name, case.verdicts
                ));
            }
            let end = case.end.map(|(ep, o)| (Epoch::new(ep), o));
            if e.last != end {
                failures.push(format!(
                    "{}: last {:?}, expected {end:?}",
                    case.name, e.last
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} failed checks in {} cases:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn targets_are_the_shards_with_subscribers() {
        let cases: Vec<(Vec<u32>, Vec<usize>)> = vec![
            (vec![0, 0, 0], vec![]),
            (vec![1, 0, 0], vec![0]),
            (vec![0, 2, 0, 1], vec![1, 3]),
            (vec![5, 5], vec![0, 1]),
            (vec![], vec![]),
        ];
        let failures: Vec<String> = cases
            .into_iter()
            .filter_map(|(per_shard, expected)| {
                let got = targets(&entry(None, per_shard.clone()));
                (got != expected).then(|| format!("{per_shard:?}: {got:?}, expected {expected:?}"))
            })
            .collect();
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    /// A hub on the in-memory engine. The engine's live feed comes to the
    /// test, which passes on to the hub what it chooses: a message kept back
    /// is one the live feed missed.
    struct Rig {
        hub: Arc<Hub>,
        engine: Arc<MemoryEngine>,
        from_engine: mpsc::Receiver<EngineEvent>,
        to_hub: crate::engine::EventSink,
    }

    impl Rig {
        fn new(history: usize) -> Self {
            let (engine_tx, from_engine) = mpsc::channel(1024);
            let policy = HistoryPolicy {
                size: history,
                ttl: Duration::from_secs(600),
                tombstone: Duration::ZERO,
            };
            let engine = Arc::new(MemoryEngine::new(
                HistoryConfig {
                    default: policy,
                    namespaces: HashMap::new(),
                },
                engine_tx,
            ));
            let (to_hub, feed) = event_channel(1024);
            let config = HubConfig {
                shards: 2,
                ..HubConfig::default()
            };
            let hub = Hub::start(engine.clone(), feed, metrics(), config, None);
            Self {
                hub,
                engine,
                from_engine,
                to_hub,
            }
        }

        /// Publishes the next message of `c`; the hub sees it if `live`.
        async fn publish(&mut self, live: bool) -> Offset {
            let data = Json::parse(Bytes::from_static(b"{}"), 8).expect("JSON");
            let published = self
                .engine
                .publish(&channel("c"), &data, PublishOptions::default())
                .await
                .expect("publish");
            let event = self.from_engine.recv().await.expect("the engine's feed");
            if live {
                self.forward(event).await;
            }
            published.offset
        }

        async fn forward(&self, event: EngineEvent) {
            self.to_hub.send(event).await.expect("the hub's feed");
        }

        /// A live subscriber of `c`, released after the current position.
        async fn subscriber(&self, id: ConnId) -> (Arc<Conn>, usize, Peer) {
            let (conn, peer) = conn_pair(id, 1 << 20).await;
            let shard = self.hub.assign_shard();
            let mode = Mode {
                kind: FrameKind::Native,
                filter: None,
                compressed: false,
            };
            self.hub
                .join(&conn, shard, &channel("c"), mode)
                .await
                .expect("join");
            let position = self.engine.position(&channel("c")).await.expect("position");
            self.hub
                .release(conn.id(), shard, &channel("c"), position.offset)
                .await;
            (conn, shard, peer)
        }
    }

    /// The offsets a client receives up to and including `last`.
    async fn offsets_until(peer: &mut Peer, last: Offset) -> Vec<Offset> {
        let mut out = Vec::new();
        loop {
            let Seen::Text(t) = peer.frame().await else {
                panic!("expected a message");
            };
            let v: serde_json::Value = serde_json::from_str(&t).expect("JSON");
            let offset = v["offset"].as_u64().expect("an offset");
            out.push(offset);
            if offset == last {
                return out;
            }
        }
    }

    /// Waits until the hub asks `conn` to restart its subscriptions.
    async fn resyncs_of(hub: &Hub, conn: &Conn) -> Vec<ChannelName> {
        let wait = async {
            loop {
                std::future::poll_fn(|cx| conn.poll_woken(cx)).await;
                let resyncs = hub.take_resyncs(conn);
                if !resyncs.is_empty() {
                    return resyncs;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("the hub asked for no resync")
    }

    #[tokio::test]
    async fn a_gap_in_the_live_feed_is_filled_from_history_and_duplicates_dropped() {
        let mut rig = Rig::new(100);
        let (_conn, _, mut peer) = rig.subscriber(1).await;
        rig.publish(true).await; // 1
        rig.publish(false).await; // 2: missed by the live feed
        rig.publish(false).await; // 3: missed
        let four = rig.publish(false).await;
        // 4 reaches the hub twice (the overlap of a reconnect, say).
        let epoch = rig
            .engine
            .position(&channel("c"))
            .await
            .expect("position")
            .epoch;
        let event_4 = EngineEvent::Message(IncomingMessage {
            channel: channel("c"),
            seq: Some((four, epoch)),
            published_us: None,
            data: Json::parse(Bytes::from_static(b"{}"), 8).expect("JSON"),
        });
        rig.forward(event_4.clone()).await;
        rig.forward(event_4).await;
        rig.publish(true).await; // 5
        assert_eq!(offsets_until(&mut peer, 5).await, vec![1, 2, 3, 4, 5]);
        assert_eq!(rig.hub.last_offset(&channel("c")), Some(5));
    }

    #[tokio::test]
    async fn a_gap_history_no_longer_covers_restarts_the_subscribers() {
        let mut rig = Rig::new(2);
        let (conn, shard, mut peer) = rig.subscriber(1).await;
        rig.publish(true).await; // 1
        for _ in 2..=5 {
            rig.publish(false).await;
        }
        rig.publish(true).await; // 6: history holds only 5 and 6
        assert_eq!(resyncs_of(&rig.hub, &conn).await, vec![channel("c")]);
        assert_eq!(
            rig.hub.last_offset(&channel("c")),
            Some(6),
            "the live feed continues after what history holds"
        );
        rig.publish(true).await; // 7: held while the subscription restarts
        // The restart reads the channel's start: its position is where live
        // delivery continues.
        let start = rig.engine.position(&channel("c")).await.expect("position");
        assert_eq!(start.offset, 7);
        rig.hub
            .release(conn.id(), shard, &channel("c"), start.offset)
            .await;
        rig.publish(true).await; // 8
        assert_eq!(
            offsets_until(&mut peer, 8).await,
            vec![1, 8],
            "no partial replay, 6 and 7 came with the restart"
        );
    }

    #[tokio::test]
    async fn a_new_epoch_restarts_the_subscribers_and_its_messages_follow() {
        let mut rig = Rig::new(100);
        let (conn, shard, mut peer) = rig.subscriber(1).await;
        rig.publish(true).await; // 1
        let other = |offset| {
            EngineEvent::Message(IncomingMessage {
                channel: channel("c"),
                seq: Some((offset, Epoch::new("other"))),
                published_us: None,
                data: Json::parse(Bytes::from_static(b"{}"), 8).expect("JSON"),
            })
        };
        rig.forward(other(1)).await;
        assert_eq!(resyncs_of(&rig.hub, &conn).await, vec![channel("c")]);
        rig.forward(other(2)).await;
        // The restart read the new epoch's start up to 1.
        rig.hub.release(conn.id(), shard, &channel("c"), 1).await;
        rig.forward(other(3)).await;
        assert_eq!(offsets_until(&mut peer, 3).await, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_plain_publish_is_delivered_and_keeps_the_offset() {
        let mut rig = Rig::new(100);
        let (_conn, _, mut peer) = rig.subscriber(1).await;
        rig.publish(true).await; // 1
        rig.forward(EngineEvent::Message(IncomingMessage {
            channel: channel("c"),
            seq: None,
            published_us: None,
            data: Json::parse(Bytes::from_static(b"{\"plain\":true}"), 8).expect("JSON"),
        }))
        .await;
        rig.publish(true).await; // 2: no gap for the plain one
        let mut seen = Vec::new();
        loop {
            let Seen::Text(t) = peer.frame().await else {
                panic!("expected a message")
            };
            let v: serde_json::Value = serde_json::from_str(&t).expect("JSON");
            seen.push(v["offset"].clone());
            if v["offset"] == 2 {
                break;
            }
        }
        assert_eq!(
            seen,
            vec![
                serde_json::json!(1),
                serde_json::Value::Null,
                serde_json::json!(2)
            ]
        );
    }

    #[tokio::test]
    async fn a_restored_feed_catches_up_from_history_before_turning_ready() {
        let mut rig = Rig::new(100);
        let (_conn, _, mut peer) = rig.subscriber(1).await;
        rig.publish(true).await; // 1
        assert!(rig.hub.feed_ready());
        rig.forward(EngineEvent::Lost).await;
        let lost = async {
            while rig.hub.feed_ready() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), lost)
            .await
            .expect("the hub noticed the loss");
        rig.publish(false).await; // 2
        rig.publish(false).await; // 3
        rig.forward(EngineEvent::Restored).await;
        rig.publish(true).await; // 4, behind the catch-up
        assert_eq!(offsets_until(&mut peer, 4).await, vec![1, 2, 3, 4]);
        assert!(rig.hub.feed_ready());
    }

    #[tokio::test]
    async fn the_last_subscriber_leaving_forgets_the_channel() {
        let mut rig = Rig::new(100);
        let (a, a_shard, _a_peer) = rig.subscriber(1).await;
        let (b, b_shard, mut b_peer) = rig.subscriber(2).await;
        assert_eq!(rig.hub.channel_counts(), vec![(channel("c"), 2)]);
        rig.hub.leave(a.id(), a_shard, &channel("c")).await;
        assert_eq!(rig.hub.channel_counts(), vec![(channel("c"), 1)]);
        rig.publish(true).await;
        assert_eq!(offsets_until(&mut b_peer, 1).await, vec![1]);
        rig.hub.leave(b.id(), b_shard, &channel("c")).await;
        assert!(rig.hub.channel_counts().is_empty());
        assert_eq!(rig.hub.last_offset(&channel("c")), None);
    }
}
