//! The in-memory engine: channels, history and snapshots in this process.
//!
//! Used by `standalone`. It keeps the same contract as the Redis engine —
//! offsets, epochs, capped history with a TTL, fenced snapshots — so the
//! gateway above cannot tell them apart (the conformance suite checks it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::{
    Engine, EngineError, EngineEvent, EngineHealth, Entry, Epoch, EventSink, HistoryConfig,
    HistoryPage, Idempotency, IdempotencyKey, IncomingMessage, Offset, Position, PublishOptions,
    Published, Snapshot,
};
use crate::channel::ChannelName;
use crate::json::Json;

/// The in-memory engine.
pub struct MemoryEngine {
    state: Mutex<State>,
    events: EventSink,
    history: HistoryConfig,
}

#[derive(Default)]
struct State {
    channels: HashMap<ChannelName, ChannelLog>,
    subscribed: HashSet<ChannelName>,
}

struct ChannelLog {
    epoch: Epoch,
    top: Offset,
    entries: VecDeque<(Instant, Entry)>,
    snapshot: Option<Snapshot>,
    /// Publishes made with an idempotency key, until their window ends...
    published_keys: HashMap<IdempotencyKey, (Instant, Published)>,
    /// ...and their keys in the order they were made, to forget them.
    key_order: VecDeque<(Instant, IdempotencyKey)>,
}

impl ChannelLog {
    fn new() -> Self {
        Self {
            epoch: Epoch::random(),
            top: 0,
            entries: VecDeque::new(),
            snapshot: None,
            published_keys: HashMap::new(),
            key_order: VecDeque::new(),
        }
    }

    /// The publish already made with this key, if its window is still open;
    /// forgets the keys whose window ended.
    fn published_with(&mut self, key: &IdempotencyKey) -> Option<Published> {
        let now = Instant::now();
        while let Some((until, _)) = self.key_order.front()
            && *until <= now
        {
            if let Some((_, old)) = self.key_order.pop_front()
                && self
                    .published_keys
                    .get(&old)
                    .is_some_and(|(until, _)| *until <= now)
            {
                self.published_keys.remove(&old);
            }
        }
        self.published_keys
            .get(key)
            .filter(|(until, _)| *until > now)
            .map(|(_, p)| p.clone())
    }

    fn remember(&mut self, idempotency: Idempotency, published: Published) {
        let until = Instant::now() + idempotency.window;
        self.key_order.push_back((until, idempotency.key.clone()));
        self.published_keys
            .insert(idempotency.key, (until, published));
    }
}

impl MemoryEngine {
    /// An engine whose live feed goes to `events`.
    pub fn new(history: HistoryConfig, events: impl Into<EventSink>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            events: events.into(),
            history,
        }
    }

    fn expire(&self, channel: &ChannelName, log: &mut ChannelLog) {
        let ttl = self.history.policy(channel).ttl;
        let now = Instant::now();
        while log
            .entries
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > ttl)
        {
            log.entries.pop_front();
        }
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    async fn publish(
        &self,
        channel: &ChannelName,
        data: &Json,
        options: PublishOptions,
    ) -> Result<Published, EngineError> {
        let mut state = self.state.lock().await;
        let subscribed = state.subscribed.contains(channel);
        let log = state
            .channels
            .entry(channel.clone())
            .or_insert_with(ChannelLog::new);
        if let Some(first) = options
            .idempotency
            .as_ref()
            .and_then(|i| log.published_with(&i.key))
        {
            return Ok(first);
        }
        if let (true, Some(version), Some(current)) = (
            options.snapshot,
            options.version,
            log.snapshot.as_ref().and_then(|s| s.version),
        ) && current >= version
        {
            return Err(EngineError::StaleVersion { current });
        }
        log.top += 1;
        let offset = log.top;
        let published_us = crate::time::unix_micros();
        let policy = self.history.policy(channel);
        if policy.size > 0 {
            log.entries.push_back((
                Instant::now(),
                Entry {
                    offset,
                    data: data.clone(),
                    published_us,
                },
            ));
            while log.entries.len() > policy.size {
                log.entries.pop_front();
            }
        }
        if options.snapshot {
            log.snapshot = Some(Snapshot {
                offset,
                epoch: log.epoch.clone(),
                data: data.clone(),
                version: options.version,
            });
        }
        let epoch = log.epoch.clone();
        if let Some(idempotency) = options.idempotency {
            let published = Published {
                offset,
                epoch: epoch.clone(),
            };
            log.remember(idempotency, published);
        }
        if subscribed {
            // Sent under the lock so the feed sees offsets in order.
            let event = EngineEvent::Message(IncomingMessage {
                channel: channel.clone(),
                seq: Some((offset, epoch.clone())),
                published_us: Some(published_us),
                data: data.clone(),
            });
            self.events
                .send(event)
                .await
                .map_err(|_| EngineError::Unavailable("the event feed is closed".into()))?;
        }
        Ok(Published { offset, epoch })
    }

    async fn history(
        &self,
        channel: &ChannelName,
        after: Offset,
        limit: usize,
    ) -> Result<HistoryPage, EngineError> {
        let mut state = self.state.lock().await;
        let log = state
            .channels
            .entry(channel.clone())
            .or_insert_with(ChannelLog::new);
        self.expire(channel, log);
        let entries = log
            .entries
            .iter()
            .filter(|(_, e)| e.offset > after)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect();
        let position = Position {
            epoch: log.epoch.clone(),
            offset: log.top,
        };
        Ok(HistoryPage::new(position, after, entries))
    }

    async fn snapshot(&self, channel: &ChannelName) -> Result<Option<Snapshot>, EngineError> {
        let state = self.state.lock().await;
        Ok(state.channels.get(channel).and_then(|l| l.snapshot.clone()))
    }

    async fn subscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        let mut state = self.state.lock().await;
        state.subscribed.extend(channels.iter().cloned());
        Ok(())
    }

    async fn unsubscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        let mut state = self.state.lock().await;
        for c in channels {
            state.subscribed.remove(c);
        }
        Ok(())
    }

    fn health(&self) -> EngineHealth {
        EngineHealth {
            ready: !self.events.is_closed(),
            detail: "in-memory engine".into(),
        }
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
