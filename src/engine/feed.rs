//! What the Redis engine's live feeds share, on one Redis and on a cluster:
//! decoding a pub/sub message into an event for the hub ([`FeedWriter`]), the
//! requests to the task owning a feed ([`SubCommand`]), the engine's readiness
//! as its tasks see it ([`Health`]), and the payload format of the publish
//! script ([`parse_payload`]).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::keys::Keys;
use super::{EngineError, EngineEvent, Epoch, EventSink, IncomingMessage, Offset};
use crate::channel::ChannelName;
use crate::json::Json;
use crate::metrics::EngineMetrics;

/// Readiness of the engine, written by its tasks.
#[derive(Default)]
pub(crate) struct Health {
    pub(crate) feed_up: AtomicBool,
    pub(crate) commands_ok: AtomicBool,
    pub(crate) detail: Mutex<String>,
    /// Why the last health check's commands failed.
    pub(crate) command_error: Mutex<String>,
    /// On a cluster: one key per master of the slot map the feed last read,
    /// in a slot that master serves. The health check reads each on every
    /// command connection, so a connection that routes some slots wrong (a
    /// stale slot map after a failover) is found even while it answers `PING`.
    pub(crate) slot_probes: Mutex<Vec<String>>,
}

impl Health {
    pub(crate) fn set_detail(&self, detail: impl Into<String>) {
        *self.detail.lock().unwrap_or_else(|e| e.into_inner()) = detail.into();
    }
}

/// A request to the task owning the live feed.
pub(crate) enum SubCommand {
    Subscribe(Vec<ChannelName>, oneshot::Sender<Result<(), EngineError>>),
    Unsubscribe(Vec<ChannelName>, oneshot::Sender<Result<(), EngineError>>),
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

/// Where the live feed's messages go, and how they are decoded.
pub(crate) struct FeedWriter {
    pub(crate) events: EventSink,
    pub(crate) keys: Keys,
    pub(crate) max_channel_len: usize,
    pub(crate) max_json_depth: usize,
    pub(crate) metrics: Arc<EngineMetrics>,
}

impl FeedWriter {
    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Queues an event for the hub; false once the hub has stopped.
    pub(crate) async fn send(&self, event: EngineEvent) -> bool {
        self.events.send(event).await.is_ok()
    }

    /// The event for a message on pub/sub channel `name`, if it is one of ours
    /// and valid.
    pub(crate) fn decode(&self, name: &str, payload: &Bytes) -> Option<EngineEvent> {
        let channel = self.keys.channel_of(name, self.max_channel_len)?;
        let (seq, data) = parse_payload(payload);
        let start = payload.len() - data.len();
        let data = match Json::parse(payload.slice(start..), self.max_json_depth) {
            Ok(d) => d,
            Err(e) => {
                self.metrics.invalid_messages.inc();
                tracing::debug!(%channel, error = %e, "dropped a published message that is not valid JSON");
                return None;
            }
        };
        let (seq, published_us) = match seq {
            Some((offset, epoch, ts)) => (Some((offset, epoch)), Some(ts)),
            None => (None, None),
        };
        Some(EngineEvent::Message(IncomingMessage {
            channel,
            seq,
            published_us,
            data,
        }))
    }
}

/// Splits a pub/sub payload: `sb1:<offset>:<epoch>:<µs>:<json>` from the publish
/// script, or anything else as a plain JSON message.
pub fn parse_payload(payload: &[u8]) -> (Option<(Offset, Epoch, u64)>, &[u8]) {
    let Some(rest) = payload.strip_prefix(b"sb1:") else {
        return (None, payload);
    };
    let mut parts = rest.splitn(4, |b| *b == b':');
    let (Some(offset), Some(epoch), Some(ts), Some(data)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (None, payload);
    };
    let num = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
    };
    match (num(offset), std::str::from_utf8(epoch), num(ts)) {
        (Some(o), Ok(e), Some(t)) => (Some((o, Epoch::new(e), t)), data),
        _ => (None, payload),
    }
}
