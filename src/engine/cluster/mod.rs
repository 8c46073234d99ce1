//! Sharded pub/sub on a Redis Cluster: the live feed when the engine runs on a
//! cluster.
//!
//! Classic `PUBLISH` on a cluster is broadcast to every node; `SPUBLISH` (which
//! the publish script uses in cluster mode) reaches only the shard owning the
//! channel's slot, so a subscriber must `SSUBSCRIBE` on that shard's master.
//! The coordinator here keeps **one pub/sub connection per master** ([`node`]),
//! however many channels live there: it reads the slot map (`CLUSTER SLOTS`,
//! [`topology`]), sends each channel's `SSUBSCRIBE` to the connection of its
//! owner (grouped per slot, as the server requires), and follows changes:
//!
//! * a master's connection fails (crash, restart, failover) or stops delivering
//!   its probe messages: the connection is dropped, the slot map read again, a
//!   new connection opened (to the promoted replica after a failover, with
//!   backoff while there is none) and its channels subscribed there;
//! * a slot moves to another master (resharding): the old master unsubscribes
//!   its shard channels by itself (`sunsubscribe` push) and rejects new ones
//!   with `MOVED`; either makes the coordinator read the slot map and
//!   resubscribe the channels on their new owner.
//!
//! Whenever channels that were subscribed may have missed messages, it sends
//! [`EngineEvent::Lost`] (readiness turns false), and once every wanted channel
//! is subscribed on its owner again, [`EngineEvent::Restored`]: the hub then
//! catches every channel up from history, so clients lose nothing. Each master
//! gets a probe channel whose hash tag lands in one of its slots; the probe
//! published through the command connections every probe interval proves the
//! whole path (command routing, shard, pub/sub connection).
//!
//! redis-rs has `SSUBSCRIBE` only on its cluster connection, where it shares the
//! command connections, resubscribes by itself without saying when, and reports
//! pushes without the node they came from; this module speaks RESP2 directly
//! ([`resp`]) so that it knows, per master, what is subscribed and when. On a
//! `rediss://` cluster those connections are TLS (tokio-rustls, with the
//! engine's trust settings, checked against each master's announced address).

pub mod node;
pub mod resp;
pub mod topology;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::node::{Auth, NodeError, NodeEvent, NodeHandle, NodeSettings, Report};
use self::resp::Frame;
use self::topology::{NodeAddr, Topology};
use super::connection::{Commands, RedisTarget};
use super::feed::{FeedWriter, Health, SubCommand, unavailable};
use super::keys::{Keys, slot};
use super::redis_config::RedisConfig;
use super::{EngineError, EngineEvent};
use crate::backoff::Backoff;
use crate::channel::ChannelName;
use crate::metrics::{EngineMetrics, RedisOp};

/// Most channels in one `SSUBSCRIBE`.
const CHUNK: usize = 512;

/// A master's pub/sub connection as the coordinator sees it.
struct Node {
    handle: NodeHandle,
    connected: bool,
    connected_at: Instant,
    /// Confirmed by the master.
    subscribed: HashSet<String>,
    /// Sent, not yet confirmed.
    requested: HashSet<String>,
    /// Commands awaiting their confirmations, oldest first.
    inflight: VecDeque<Inflight>,
    probe: Option<String>,
    probe_seen: Instant,
}

struct Inflight {
    subscribe: bool,
    names: Vec<String>,
    remaining: usize,
}

/// A `subscribe` (or `unsubscribe`) call waiting for confirmations.
struct Pending {
    subscribe: bool,
    names: HashSet<String>,
    reply: oneshot::Sender<Result<(), EngineError>>,
    deadline: Instant,
}

/// See the module documentation.
pub(crate) struct ClusterPubSub {
    commands: Commands,
    keys: Keys,
    config: RedisConfig,
    settings: Arc<NodeSettings>,
    feed: Arc<FeedWriter>,
    health: Arc<Health>,
    metrics: Arc<EngineMetrics>,
    requests: mpsc::Receiver<SubCommand>,
    reports_tx: mpsc::Sender<Report>,
    reports: mpsc::Receiver<Report>,
    fallback_host: String,
    control: String,
    wanted: HashSet<ChannelName>,
    topology: Option<Topology>,
    nodes: HashMap<NodeAddr, Node>,
    /// When a master whose connection failed may be tried again.
    retry_at: HashMap<NodeAddr, Instant>,
    backoffs: HashMap<NodeAddr, Backoff>,
    /// Masters that cannot be reached (their failures are logged once).
    unreachable: HashSet<NodeAddr>,
    generation: u64,
    pending: Vec<Pending>,
    /// Wanted channels whose slot no master owns.
    unowned: usize,
    /// Subscriptions may have missed messages: `Restored` is due.
    lost: bool,
    /// `Lost` is to be sent.
    announce_lost: bool,
    was_up: bool,
    /// The subscriptions must be compared with the slot map again.
    dirty: bool,
    /// When to read the slot map next.
    refresh_at: Option<Instant>,
    refresh_backoff: Backoff,
    refresh_failing: bool,
}

impl ClusterPubSub {
    pub(crate) fn new(
        commands: Commands,
        config: RedisConfig,
        feed: Arc<FeedWriter>,
        health: Arc<Health>,
        metrics: Arc<EngineMetrics>,
        requests: mpsc::Receiver<SubCommand>,
    ) -> Self {
        let keys = feed.keys().clone();
        let (_, fallback_host) = seed_auth(&config.target);
        let control = keys.control();
        let settings = Arc::new(node_settings(&config, &keys));
        let (reports_tx, reports) = mpsc::channel(4096);
        Self {
            commands,
            keys,
            config,
            settings,
            feed,
            health,
            metrics,
            requests,
            reports_tx,
            reports,
            fallback_host,
            control,
            wanted: HashSet::new(),
            topology: None,
            nodes: HashMap::new(),
            retry_at: HashMap::new(),
            backoffs: HashMap::new(),
            unreachable: HashSet::new(),
            generation: 0,
            pending: Vec::new(),
            unowned: 0,
            lost: false,
            announce_lost: false,
            was_up: false,
            dirty: false,
            refresh_at: Some(Instant::now()),
            refresh_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            refresh_failing: false,
        }
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        self.health.set_detail("connecting to the Redis Cluster");
        let mut tick = tokio::time::interval(self.config.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.refresh_at.is_some_and(|at| at <= Instant::now()) {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.refresh_topology() => {}
                }
            }
            if self.retry_at.values().any(|at| *at <= Instant::now()) {
                self.dirty = true;
            }
            if self.dirty {
                self.reconcile(&shutdown);
            }
            if !self.settle().await {
                return;
            }
            let wake = self.next_wake();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                request = self.requests.recv() => match request {
                    None => return,
                    Some(r) => self.on_request(r),
                },
                Some(report) = self.reports.recv() => self.on_report(report),
                _ = tick.tick() => self.on_tick(),
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            }
        }
    }

    /// The next moment something is due without an outside event.
    fn next_wake(&self) -> Option<Instant> {
        let retry = self.retry_at.values().min().copied();
        match (self.refresh_at, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn refresh_soon(&mut self) {
        let soon = Instant::now();
        self.refresh_at = Some(self.refresh_at.map_or(soon, |at| at.min(soon)));
    }

    /// Reads the slot map through the command connections; when that fails,
    /// straight from the nodes on connections of its own (see
    /// [`ClusterPubSub::read_slots_directly`]).
    async fn refresh_topology(&mut self) {
        let read = async {
            let mut conn = self.commands.get().await?;
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut conn)
                .await
                .map_err(unavailable)
        };
        let mut result = match tokio::time::timeout(self.config.response_timeout * 2, read).await {
            Ok(Ok(reply)) => Topology::parse(reply, &self.fallback_host).map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("CLUSTER SLOTS timed out".into()),
        };
        if let Err(why) = &result {
            // Bounded as the read above: the coordinator answers nothing else
            // meanwhile.
            let direct =
                tokio::time::timeout(self.config.response_timeout * 2, self.read_slots_directly())
                    .await
                    .map_err(|_| "timed out".to_string());
            match direct {
                Ok(Ok((topology, from))) => {
                    tracing::debug!(reason = %why, node = %from, "Redis Cluster: slot map read from a node directly, the command connections could not");
                    result = Ok(topology);
                }
                Ok(Err(direct)) => result = Err(format!("{why}; directly: {direct}")),
                Err(timeout) => result = Err(format!("{why}; directly: {timeout}")),
            }
        }
        match result {
            Ok(topology) => {
                self.refresh_at = None;
                self.refresh_backoff.reset();
                if self.refresh_failing {
                    tracing::info!("Redis Cluster: slot map readable again");
                    self.refresh_failing = false;
                }
                if self.topology.as_ref() != Some(&topology) {
                    let masters: Vec<String> =
                        topology.masters().iter().map(|m| m.to_string()).collect();
                    if topology.unassigned() > 0 {
                        tracing::warn!(
                            unassigned_slots = topology.unassigned(),
                            "Redis Cluster: some hash slots have no master; channels in them cannot be served until the cluster covers them"
                        );
                    }
                    tracing::info!(masters = ?masters, "Redis Cluster: slot map read");
                    let probes: Vec<String> = topology
                        .masters()
                        .iter()
                        .filter_map(|m| {
                            topology.probe_tag(m, |tag| self.keys.shard_probe(tag, HEALTH_PROBE))
                        })
                        .map(|tag| self.keys.shard_probe(tag, HEALTH_PROBE))
                        .collect();
                    *self
                        .health
                        .slot_probes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = probes;
                    self.topology = Some(topology);
                    self.dirty = true;
                }
            }
            Err(why) => {
                // The cluster client says little more than "timed out" when
                // it cannot connect: before the slot map was ever read (a
                // wrong address, TLS certificate or password), connecting to a
                // seed node directly says why. Later failures are the cluster's
                // own (failover), where the check would only delay recovery.
                let why = match self.topology.is_none() {
                    true => match self.check_seed().await {
                        Some(seed) => format!("{why}; {seed}"),
                        None => why,
                    },
                    false => why,
                };
                if !self.refresh_failing {
                    tracing::warn!(reason = %why, "Redis Cluster: cannot read the slot map (CLUSTER SLOTS); retrying");
                    self.refresh_failing = true;
                }
                self.metrics.redis_errors.inc(RedisOp::PubSub);
                self.health
                    .set_detail(format!("Redis Cluster: cannot read the slot map: {why}"));
                self.refresh_at = Some(Instant::now() + self.refresh_backoff.next_delay());
            }
        }
    }

    /// The slot map as a node answers it on a new connection of its own: the
    /// seed nodes, then the masters last known, in turn. The feed then follows
    /// a failover even while the cluster command client is stuck on a master
    /// that is gone (its connections to the other masters do not depend on it).
    async fn read_slots_directly(&self) -> Result<(Topology, NodeAddr), ProbeError> {
        let mut candidates = seed_addrs(&self.config.target);
        if let Some(topology) = &self.topology {
            for m in topology.masters() {
                if !candidates.contains(m) {
                    candidates.push(m.clone());
                }
            }
        }
        let mut last = ProbeError::NoNode;
        let cmd = {
            let mut c = redis::cmd("CLUSTER");
            c.arg("SLOTS");
            c
        };
        for addr in candidates {
            last = match node::query(&addr, &self.settings, &cmd).await {
                Ok(Frame::Error(message)) => ProbeError::Refused { addr, message },
                Ok(frame) => match Topology::parse(to_value(frame), &self.fallback_host) {
                    Ok(topology) => return Ok((topology, addr)),
                    Err(source) => ProbeError::SlotMap { addr, source },
                },
                Err(source) => ProbeError::Node { addr, source },
            };
        }
        Err(last)
    }

    /// Why the first seed node cannot be used, if it cannot.
    async fn check_seed(&self) -> Option<String> {
        let seed = seed_addr(&self.config.target)?;
        node::check(&seed, &self.settings)
            .await
            .err()
            .map(|why| format!("seed node {seed}: {why}"))
    }

    /// Brings connections and subscriptions in line with the slot map.
    fn reconcile(&mut self, shutdown: &CancellationToken) {
        self.dirty = false;
        let Some(topology) = self.topology.clone() else {
            return;
        };
        let masters: HashSet<&NodeAddr> = topology.masters().iter().collect();
        let gone: Vec<NodeAddr> = self
            .nodes
            .keys()
            .filter(|a| !masters.contains(a))
            .cloned()
            .collect();
        for addr in gone {
            if let Some(node) = self.nodes.remove(&addr) {
                tracing::info!(node = %addr, "Redis Cluster: no longer a master; its pub/sub connection is closed");
                if self.has_data(&node) {
                    self.mark_lost(&format!("{addr} is no longer a master"));
                }
            }
        }
        self.retry_at.retain(|a, _| masters.contains(a));
        self.backoffs.retain(|a, _| masters.contains(a));
        self.unreachable.retain(|a| masters.contains(a));
        let now = Instant::now();
        for master in topology.masters() {
            if self.nodes.contains_key(master)
                || self.retry_at.get(master).is_some_and(|at| *at > now)
            {
                continue;
            }
            self.retry_at.remove(master);
            self.generation += 1;
            let handle = node::spawn(
                master.clone(),
                self.generation,
                self.settings.clone(),
                self.feed.clone(),
                self.reports_tx.clone(),
                shutdown,
            );
            self.nodes.insert(
                master.clone(),
                Node {
                    handle,
                    connected: false,
                    connected_at: now,
                    subscribed: HashSet::new(),
                    requested: HashSet::new(),
                    inflight: VecDeque::new(),
                    probe: None,
                    probe_seen: now,
                },
            );
        }
        // What each master should carry.
        let mut desired: HashMap<&NodeAddr, HashSet<String>> = HashMap::new();
        let mut unowned = 0;
        for channel in &self.wanted {
            let name = self.keys.pubsub(channel);
            match topology.owner_of(&name) {
                Some(owner) => {
                    desired.entry(owner).or_default().insert(name);
                }
                None => unowned += 1,
            }
        }
        if let Some(owner) = topology.owner_of(&self.control) {
            desired
                .entry(owner)
                .or_default()
                .insert(self.control.clone());
        }
        self.unowned = unowned;
        let replica = self.config.replica_id.clone();
        for (addr, node) in self.nodes.iter_mut() {
            if !node.connected {
                continue;
            }
            let mut want = desired.remove(addr).unwrap_or_default();
            let probe = topology
                .probe_tag(addr, |tag| self.keys.shard_probe(tag, &replica))
                .map(|tag| self.keys.shard_probe(tag, &replica));
            if node.probe != probe {
                node.probe = probe.clone();
                node.probe_seen = now;
            }
            want.extend(probe);
            let missing: Vec<String> = want
                .iter()
                .filter(|n| !node.subscribed.contains(*n) && !node.requested.contains(*n))
                .cloned()
                .collect();
            let stale: Vec<String> = node
                .subscribed
                .iter()
                .filter(|n| !want.contains(*n))
                .cloned()
                .collect();
            send_grouped(node, true, missing);
            send_grouped(node, false, stale);
        }
    }

    /// Sends what is due to the hub and updates readiness; false once the hub is gone.
    async fn settle(&mut self) -> bool {
        if self.announce_lost {
            self.announce_lost = false;
            if !self.feed.send(EngineEvent::Lost).await {
                return false;
            }
        }
        let masters = self.topology.as_ref().map_or(0, |t| t.masters().len());
        let connected = self.topology.as_ref().map_or(0, |t| {
            t.masters()
                .iter()
                .filter(|m| self.nodes.get(*m).is_some_and(|n| n.connected))
                .count()
        });
        let all_connected = masters > 0 && connected == masters;
        let complete = all_connected
            && !self.dirty
            && self.unowned == 0
            && self
                .nodes
                .values()
                .all(|n| n.requested.is_empty() && n.probe.is_some());
        if complete {
            if self.lost {
                self.lost = false;
                tracing::info!(
                    channels = self.wanted.len(),
                    masters,
                    "Redis Cluster: every channel subscribed on its master again; catching up from history"
                );
                if !self.feed.send(EngineEvent::Restored).await {
                    return false;
                }
            } else if !self.was_up {
                tracing::info!(
                    masters,
                    channels = self.wanted.len(),
                    "Redis Cluster pub/sub connected: one sharded pub/sub connection per master"
                );
            }
            self.was_up = true;
        }
        let up = all_connected && !self.lost;
        self.health
            .feed_up
            .store(up, std::sync::atomic::Ordering::Relaxed);
        if up {
            self.health.set_detail(format!(
                "Redis Cluster reachable ({masters} masters), subscriptions live"
            ));
        } else if self.topology.is_some() {
            let mut detail =
                format!("Redis Cluster: {connected} of {masters} masters connected for pub/sub");
            if self.lost {
                detail.push_str(", resubscribing channels");
            }
            self.health.set_detail(detail);
        }
        true
    }

    fn mark_lost(&mut self, why: &str) {
        if !self.lost {
            tracing::warn!(
                reason = why,
                "Redis Cluster: channel subscriptions interrupted; live delivery of their channels resumes once they are resubscribed on their master, and what they missed is caught up from history"
            );
            self.lost = true;
            self.announce_lost = true;
            self.metrics.redis_reconnects.inc();
        }
    }

    /// Whether `node` carried subscriptions of channels (not just probe and control).
    fn has_data(&self, node: &Node) -> bool {
        node.subscribed
            .iter()
            .chain(node.requested.iter())
            .any(|n| self.is_channel(n))
    }

    fn is_channel(&self, name: &str) -> bool {
        self.keys
            .channel_of(name, self.config.max_channel_len)
            .is_some()
    }

    /// Whether `name` should stay subscribed on `addr`.
    fn desired(&self, addr: &NodeAddr, name: &str) -> bool {
        if name == self.control {
            return true;
        }
        if self.nodes.get(addr).and_then(|n| n.probe.as_deref()) == Some(name) {
            return true;
        }
        self.keys
            .channel_of(name, self.config.max_channel_len)
            .is_some_and(|c| self.wanted.contains(&c))
    }

    fn on_request(&mut self, request: SubCommand) {
        match request {
            SubCommand::Subscribe(channels, reply) => {
                let mut waiting = HashSet::new();
                let mut unreachable = None;
                let mut per_node: HashMap<NodeAddr, Vec<String>> = HashMap::new();
                for channel in channels {
                    let name = self.keys.pubsub(&channel);
                    self.wanted.insert(channel);
                    let owner = self
                        .topology
                        .as_ref()
                        .and_then(|t| t.owner_of(&name))
                        .cloned();
                    match owner.as_ref().and_then(|o| self.nodes.get(o)) {
                        Some(node) if node.connected => {
                            if node.subscribed.contains(&name) {
                                continue;
                            }
                            if !node.requested.contains(&name)
                                && let Some(o) = owner
                            {
                                per_node.entry(o).or_default().push(name.clone());
                            }
                            waiting.insert(name);
                        }
                        _ => {
                            // Kept wanted, and subscribed once its master is
                            // connected; the caller hears now that it is not yet.
                            unreachable = Some(match owner {
                                Some(o) => format!(
                                    "the Redis Cluster master {o} of channel {name} is not connected yet"
                                ),
                                None if self.topology.is_none() => {
                                    "the Redis Cluster slot map is not known yet".to_string()
                                }
                                None => {
                                    format!("no Redis Cluster master serves the slot of {name}")
                                }
                            });
                            self.dirty = true;
                        }
                    }
                }
                for (addr, names) in per_node {
                    if let Some(node) = self.nodes.get_mut(&addr) {
                        send_grouped(node, true, names);
                    }
                }
                if let Some(why) = unreachable {
                    let _ = reply.send(Err(unavailable(why)));
                } else if waiting.is_empty() {
                    let _ = reply.send(Ok(()));
                } else {
                    self.pending.push(Pending {
                        subscribe: true,
                        names: waiting,
                        reply,
                        deadline: Instant::now() + self.config.response_timeout * 4,
                    });
                }
            }
            SubCommand::Unsubscribe(channels, reply) => {
                let mut per_node: HashMap<NodeAddr, Vec<String>> = HashMap::new();
                let mut waiting = HashSet::new();
                for channel in channels {
                    self.wanted.remove(&channel);
                    let name = self.keys.pubsub(&channel);
                    for (addr, node) in &self.nodes {
                        if node.subscribed.contains(&name) || node.requested.contains(&name) {
                            per_node.entry(addr.clone()).or_default().push(name.clone());
                            waiting.insert(name.clone());
                        }
                    }
                }
                for (addr, names) in per_node {
                    if let Some(node) = self.nodes.get_mut(&addr) {
                        send_grouped(node, false, names);
                    }
                }
                // Answered once the masters confirm: nothing published after
                // the answer is delivered.
                if waiting.is_empty() {
                    let _ = reply.send(Ok(()));
                } else {
                    self.pending.push(Pending {
                        subscribe: false,
                        names: waiting,
                        reply,
                        deadline: Instant::now() + self.config.response_timeout * 4,
                    });
                }
            }
        }
    }

    /// `name` was confirmed (subscribed, or unsubscribed): answers the calls
    /// that waited for nothing else.
    fn resolve(&mut self, subscribe: bool, name: &str) {
        self.pending.retain_mut(|p| {
            if p.subscribe != subscribe || !p.names.remove(name) || !p.names.is_empty() {
                return true;
            }
            let reply = std::mem::replace(&mut p.reply, oneshot::channel().0);
            let _ = reply.send(Ok(()));
            false
        });
    }

    fn on_report(&mut self, report: Report) {
        let Some(addr) = self
            .nodes
            .iter()
            .find(|(_, n)| n.handle.generation == report.generation)
            .map(|(a, _)| a.clone())
        else {
            return;
        };
        match report.event {
            NodeEvent::Connected => {
                if let Some(node) = self.nodes.get_mut(&addr) {
                    let now = Instant::now();
                    node.connected = true;
                    node.connected_at = now;
                    node.probe_seen = now;
                }
                if self.unreachable.remove(&addr) {
                    tracing::info!(node = %addr, "Redis Cluster: master reachable again; pub/sub connection open");
                } else {
                    tracing::info!(node = %addr, "Redis Cluster: pub/sub connection to master open");
                }
                self.dirty = true;
            }
            NodeEvent::Subscribed(name) => {
                let keep = self.desired(&addr, &name);
                if let Some(node) = self.nodes.get_mut(&addr) {
                    confirm(node, true, Some(&name));
                    node.requested.remove(&name);
                    if keep {
                        node.subscribed.insert(name.clone());
                    } else {
                        // Unsubscribed (or moved) while the SSUBSCRIBE was in flight.
                        send_grouped(node, false, vec![name.clone()]);
                    }
                }
                self.resolve(true, &name);
            }
            NodeEvent::Unsubscribed(name) => {
                let Some(node) = self.nodes.get_mut(&addr) else {
                    return;
                };
                let ours = confirm(node, false, name.as_deref());
                let Some(name) = name else { return };
                node.subscribed.remove(&name);
                if ours {
                    self.resolve(false, &name);
                    return;
                }
                // Not ours: the master dropped a shard channel whose slot left it.
                node.requested.remove(&name);
                self.resolve(false, &name);
                if self.desired(&addr, &name) {
                    tracing::info!(node = %addr, channel = %name, "Redis Cluster: the slot of a channel moved to another master; resubscribing there");
                    if self.is_channel(&name) {
                        self.mark_lost(&format!("slot of {name} left {addr}"));
                    }
                    self.refresh_soon();
                    self.dirty = true;
                }
            }
            NodeEvent::Error(e) => {
                let Some(node) = self.nodes.get_mut(&addr) else {
                    return;
                };
                let failed = node.inflight.pop_front();
                if let Some(cmd) = &failed {
                    if cmd.subscribe {
                        for n in &cmd.names {
                            node.requested.remove(n);
                        }
                    } else {
                        // Whatever the master says, we no longer want these.
                        for n in cmd.names.clone() {
                            self.resolve(false, &n);
                        }
                    }
                }
                let moved = ["MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"]
                    .iter()
                    .any(|p| e.starts_with(p));
                if moved {
                    tracing::info!(node = %addr, reply = %e, "Redis Cluster: a subscription was redirected; reading the slot map again");
                    // The nodes may take a moment to agree on the new owner.
                    let soon = Instant::now() + Duration::from_millis(100);
                    self.refresh_at = Some(self.refresh_at.map_or(soon, |at| at.min(soon)));
                    self.dirty = true;
                    return;
                }
                tracing::error!(node = %addr, reply = %e, "Redis Cluster: SSUBSCRIBE/SUNSUBSCRIBE refused (check the ACL of the Redis user: it needs &<prefix>* channel access)");
                self.metrics.redis_errors.inc(RedisOp::PubSub);
                if let Some(cmd) = failed.filter(|c| c.subscribe) {
                    for name in &cmd.names {
                        if let Some(c) = self.keys.channel_of(name, self.config.max_channel_len) {
                            self.wanted.remove(&c);
                        }
                    }
                    let refused: HashSet<&String> = cmd.names.iter().collect();
                    self.pending.retain_mut(|p| {
                        if p.names.iter().any(|n| refused.contains(n)) {
                            let reply = std::mem::replace(&mut p.reply, oneshot::channel().0);
                            let _ = reply.send(Err(EngineError::Unavailable(format!(
                                "Redis refused SSUBSCRIBE: {e}"
                            ))));
                            false
                        } else {
                            true
                        }
                    });
                }
            }
            NodeEvent::Probe(name) => {
                if let Some(node) = self.nodes.get_mut(&addr)
                    && node.probe.as_deref() == Some(name.as_str())
                {
                    node.probe_seen = Instant::now();
                }
            }
            NodeEvent::Closed(why) => self.drop_node(&addr, &why),
        }
    }

    /// Forgets a master's connection and schedules a new one.
    fn drop_node(&mut self, addr: &NodeAddr, why: &str) {
        let Some(node) = self.nodes.remove(addr) else {
            return;
        };
        if node.connected {
            tracing::warn!(node = %addr, reason = why, "Redis Cluster: pub/sub connection to a master lost; reading the slot map and reconnecting");
        } else if self.unreachable.insert(addr.clone()) {
            tracing::warn!(node = %addr, reason = why, "Redis Cluster: cannot open a pub/sub connection to a master; retrying with backoff until it is back or a replica takes over");
        } else {
            tracing::debug!(node = %addr, reason = why, "Redis Cluster: master still unreachable");
        }
        self.metrics.redis_errors.inc(RedisOp::PubSub);
        if self.has_data(&node) {
            self.mark_lost(&format!("{addr}: {why}"));
        }
        // Unsubscribing from a closed connection is done.
        for cmd in node.inflight.iter().filter(|c| !c.subscribe) {
            for n in &cmd.names {
                self.resolve(false, n);
            }
        }
        // Subscriptions waiting for this master's confirmation will not get it.
        self.pending.retain_mut(|p| {
            if p.subscribe && p.names.iter().any(|n| node.requested.contains(n)) {
                let reply = std::mem::replace(&mut p.reply, oneshot::channel().0);
                let _ = reply.send(Err(unavailable(format!(
                    "lost the connection to Redis Cluster master {addr}"
                ))));
                false
            } else {
                true
            }
        });
        let backoff = self
            .backoffs
            .entry(addr.clone())
            .or_insert_with(|| Backoff::new(Duration::from_millis(100), Duration::from_secs(2)));
        // A connection that served for a while starts the delays over.
        if node.connected && node.connected_at.elapsed() > self.config.probe_interval {
            backoff.reset();
        }
        self.retry_at
            .insert(addr.clone(), Instant::now() + backoff.next_delay());
        self.refresh_soon();
        self.dirty = true;
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        // Calls never confirmed: a subscription failed; an unsubscription
        // is done as far as this replica is concerned.
        self.pending.retain_mut(|p| {
            if p.deadline > now {
                return true;
            }
            let reply = std::mem::replace(&mut p.reply, oneshot::channel().0);
            let _ = reply.send(if p.subscribe {
                Err(unavailable(
                    "Redis Cluster did not confirm SSUBSCRIBE in time",
                ))
            } else {
                Ok(())
            });
            false
        });
        // Probes: a connection that stopped delivering them is rebuilt.
        let limit = self.config.probe_interval * 3;
        let silent: Vec<NodeAddr> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.connected && n.connected_at.elapsed() > limit && n.probe_seen.elapsed() > limit
            })
            .map(|(a, _)| a.clone())
            .collect();
        for addr in silent {
            self.drop_node(&addr, "probe messages stopped arriving");
        }
        for node in self.nodes.values() {
            if let (true, Some(probe)) = (node.connected, node.probe.clone()) {
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    if let Ok(mut conn) = commands.get().await {
                        let _: Result<(), _> = redis::cmd("SPUBLISH")
                            .arg(probe)
                            .arg("probe")
                            .query_async(&mut conn)
                            .await;
                    }
                });
            }
        }
        // The slot map is read again every probe interval.
        if self.refresh_at.is_none() {
            self.refresh_at = Some(now);
        }
    }
}

/// Matches a confirmation with the oldest command in flight; true if it was
/// one of ours (a `sunsubscribe` may also come from the server by itself).
fn confirm(node: &mut Node, subscribe: bool, name: Option<&str>) -> bool {
    let Some(front) = node.inflight.front_mut() else {
        return false;
    };
    let matches =
        front.subscribe == subscribe && name.is_none_or(|n| front.names.iter().any(|x| x == n));
    if !matches {
        return false;
    }
    front.remaining = front.remaining.saturating_sub(1);
    if front.remaining == 0 {
        node.inflight.pop_front();
    }
    true
}

/// Sends `SSUBSCRIBE` (or `SUNSUBSCRIBE`) for `names`, one command per slot
/// (the server refuses channels of several slots in one command).
fn send_grouped(node: &mut Node, subscribe: bool, names: Vec<String>) {
    if names.is_empty() {
        return;
    }
    let mut by_slot: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for name in names {
        if subscribe {
            node.requested.insert(name.clone());
        } else {
            node.subscribed.remove(&name);
            node.requested.remove(&name);
        }
        by_slot.entry(slot(name.as_bytes())).or_default().push(name);
    }
    let command = if subscribe {
        "SSUBSCRIBE"
    } else {
        "SUNSUBSCRIBE"
    };
    for names in by_slot.into_values() {
        for chunk in names.chunks(CHUNK) {
            let mut cmd = redis::cmd(command);
            for n in chunk {
                cmd.arg(n);
            }
            node.handle.send(cmd.get_packed_command());
            node.inflight.push_back(Inflight {
                subscribe,
                names: chunk.to_vec(),
                remaining: chunk.len(),
            });
        }
    }
}

/// The settings of the feed's own node connections (and of the engine's
/// direct checks of the cluster): credentials, TLS and timeouts of the target.
pub(crate) fn node_settings(config: &RedisConfig, keys: &Keys) -> NodeSettings {
    let (auth, _) = seed_auth(&config.target);
    let tls = config
        .tls
        .as_ref()
        .filter(|_| config.target.is_tls())
        .map(|t| t.connector().clone());
    NodeSettings {
        auth,
        tls,
        connect_timeout: config.connect_timeout,
        response_timeout: config.response_timeout,
        probe_prefix: keys.global("probe:{sbp"),
        control: keys.control(),
    }
}

/// Whether the cluster itself serves: a seed node answers `CLUSTER INFO` with
/// `cluster_state:ok` on a new connection of its own (the seeds in turn, the
/// first that answers decides). `Err` says why not.
pub(crate) async fn cluster_serves(
    target: &RedisTarget,
    settings: &NodeSettings,
) -> Result<NodeAddr, ProbeError> {
    let mut last = ProbeError::NoNode;
    let cmd = {
        let mut c = redis::cmd("CLUSTER");
        c.arg("INFO");
        c
    };
    for addr in seed_addrs(target) {
        match node::query(&addr, settings, &cmd).await {
            Ok(Frame::Bulk(Some(info))) => {
                if String::from_utf8_lossy(&info)
                    .lines()
                    .any(|l| l.trim() == "cluster_state:ok")
                {
                    return Ok(addr);
                }
                return Err(ProbeError::NotOk { addr });
            }
            Ok(Frame::Error(message)) => last = ProbeError::Refused { addr, message },
            Ok(other) => {
                last = ProbeError::Unexpected {
                    addr,
                    reply: format!("{other:?}"),
                }
            }
            Err(source) => last = ProbeError::Node { addr, source },
        }
    }
    Err(last)
}

/// The name part of the keys the engine's health check reads, one per
/// master (`Health::slot_probes`): never written.
const HEALTH_PROBE: &str = "health";

/// Why no node could say what the cluster is (its slot map, its state) on a
/// connection of our own.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("no node to ask")]
    NoNode,
    #[error("{addr}: {source}")]
    Node { addr: NodeAddr, source: NodeError },
    #[error("{addr}: {message}")]
    Refused { addr: NodeAddr, message: String },
    #[error("{addr}: {source}")]
    SlotMap {
        addr: NodeAddr,
        source: topology::TopologyError,
    },
    #[error("{addr}: cluster_state is not ok")]
    NotOk { addr: NodeAddr },
    #[error("{addr}: unexpected CLUSTER INFO reply {reply}")]
    Unexpected { addr: NodeAddr, reply: String },
}

/// A RESP frame as the `redis` crate's value (to parse `CLUSTER SLOTS`).
fn to_value(frame: Frame) -> Value {
    match frame {
        Frame::Simple(b) => Value::SimpleString(String::from_utf8_lossy(&b).into_owned()),
        Frame::Error(e) => Value::SimpleString(e),
        Frame::Integer(i) => Value::Int(i),
        Frame::Bulk(Some(b)) => Value::BulkString(b.to_vec()),
        Frame::Bulk(None) | Frame::Array(None) => Value::Nil,
        Frame::Array(Some(items)) => Value::Array(items.into_iter().map(to_value).collect()),
    }
}

/// Every seed node's address.
fn seed_addrs(target: &RedisTarget) -> Vec<NodeAddr> {
    use redis::IntoConnectionInfo;
    let RedisTarget::Cluster(nodes) = target else {
        return Vec::new();
    };
    nodes
        .iter()
        .filter_map(|n| n.as_str().into_connection_info().ok())
        .filter_map(|info| match info.addr() {
            redis::ConnectionAddr::Tcp(host, port)
            | redis::ConnectionAddr::TcpTls { host, port, .. } => Some(NodeAddr {
                host: host.clone(),
                port: *port,
            }),
            _ => None,
        })
        .collect()
}

/// The address of the first seed node.
fn seed_addr(target: &RedisTarget) -> Option<NodeAddr> {
    seed_addrs(target).into_iter().next()
}

/// The credentials and a host for nodes announced without one, from the first seed.
fn seed_auth(target: &RedisTarget) -> (Auth, String) {
    use redis::IntoConnectionInfo;
    let RedisTarget::Cluster(nodes) = target else {
        return (Auth::default(), "127.0.0.1".into());
    };
    let Some(info) = nodes
        .first()
        .and_then(|u| u.as_str().into_connection_info().ok())
    else {
        return (Auth::default(), "127.0.0.1".into());
    };
    let host = match info.addr() {
        redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. } => {
            host.clone()
        }
        _ => "127.0.0.1".into(),
    };
    let settings = info.redis_settings();
    (
        Auth {
            username: settings.username().map(str::to_string),
            password: settings.password().map(str::to_string),
        },
        host,
    )
}
