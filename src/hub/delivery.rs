//! One message on its way to local subscribers, encoded at most once per form.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use serde_json::Value;

use crate::channel::ChannelName;
use crate::engine::{IncomingMessage, Offset};
use crate::filter::Filter;
use crate::json::Json;
use crate::protocol::server;
use crate::ws::frame;

/// The form in which a subscriber receives messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Native protocol: `{"type":"message","channel":…,"offset":…,"data":…}`.
    Native,
    /// Drop-in routes: the data exactly as published.
    Raw,
}

/// A message with its encoded WebSocket frames, shared by every shard.
#[derive(Debug)]
pub struct Delivery {
    pub channel: ChannelName,
    pub offset: Option<Offset>,
    pub published_us: Option<u64>,
    pub data: Json,
    native: OnceLock<Bytes>,
    raw: OnceLock<Bytes>,
    parsed: OnceLock<Option<Value>>,
    /// Filter results by filter key: each distinct filter is evaluated once
    /// per message, whichever shard asks first.
    verdicts: Mutex<Vec<(Arc<str>, bool)>>,
}

impl Delivery {
    pub fn new(
        channel: ChannelName,
        offset: Option<Offset>,
        published_us: Option<u64>,
        data: Json,
    ) -> Self {
        Self {
            channel,
            offset,
            published_us,
            data,
            native: OnceLock::new(),
            raw: OnceLock::new(),
            parsed: OnceLock::new(),
            verdicts: Mutex::new(Vec::new()),
        }
    }

    /// A live message from the engine's feed, on its way out.
    pub fn live(m: IncomingMessage) -> Arc<Self> {
        Arc::new(Self::new(
            m.channel,
            m.seq.map(|(offset, _)| offset),
            m.published_us,
            m.data,
        ))
    }

    /// The complete WebSocket frame in the given form (encoded on first use).
    ///
    /// Shards on other threads ask for the same frame at the same moment: one
    /// that finds it missing encodes it itself rather than wait for another
    /// that is encoding it (`get_or_init` would park it on a futex, a thread
    /// hand-off per message); the first stored is kept, the other dropped.
    pub fn frame(&self, kind: FrameKind) -> &Bytes {
        let cell = match kind {
            FrameKind::Native => &self.native,
            FrameKind::Raw => &self.raw,
        };
        if let Some(frame) = cell.get() {
            return frame;
        }
        let encoded = match kind {
            FrameKind::Native => frame::text(&server::message(
                self.channel.as_str(),
                self.offset,
                &self.data,
            )),
            FrameKind::Raw => frame::text(self.data.as_str()),
        };
        // Storing is a move: a race lost here waits nanoseconds, not an
        // encoding, and keeps the other (equal) frame.
        cell.get_or_init(|| encoded)
    }

    /// Whether the message passes `filter`: the data is parsed once, on first
    /// need, and each distinct filter is evaluated once for the whole replica.
    pub fn passes(&self, filter: Option<&Filter>) -> bool {
        let Some(f) = filter else {
            return true;
        };
        let cached =
            |v: &Vec<(Arc<str>, bool)>| v.iter().find(|(k, _)| &**k == f.key()).map(|(_, b)| *b);
        if let Some(verdict) = cached(&self.lock_verdicts()) {
            return verdict;
        }
        let verdict = self
            .parsed
            .get_or_init(|| self.data.to_value())
            .as_ref()
            .is_some_and(|v| f.matches(v));
        let mut verdicts = self.lock_verdicts();
        if cached(&verdicts).is_none() {
            verdicts.push((f.shared_key(), verdict));
        }
        verdict
    }

    fn lock_verdicts(&self) -> std::sync::MutexGuard<'_, Vec<(Arc<str>, bool)>> {
        self.verdicts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn equal_filters_share_one_evaluation_and_frames_are_encoded_once() {
        let data = Json::parse(Bytes::from_static(br#"{"a":1}"#), 8).unwrap();
        let d = Delivery::new(ChannelName::parse("c", 16).unwrap(), Some(3), None, data);
        let spec = |v: serde_json::Value| v.as_object().unwrap().clone();
        let limits = crate::filter::FilterLimits::default();
        let f1 = Filter::compile(&spec(serde_json::json!({"a": 1})), &limits).unwrap();
        let f2 = Filter::compile(&spec(serde_json::json!({"a": 1})), &limits).unwrap();
        let other = Filter::compile(&spec(serde_json::json!({"a": 2})), &limits).unwrap();
        assert!(d.passes(Some(&f1)));
        assert!(d.passes(Some(&f2)));
        assert!(!d.passes(Some(&other)));
        assert_eq!(
            d.lock_verdicts().len(),
            2,
            "one verdict per distinct filter"
        );
        let first = d.frame(FrameKind::Native).as_ptr();
        assert_eq!(
            d.frame(FrameKind::Native).as_ptr(),
            first,
            "the same buffer every time"
        );
        assert_eq!(&d.frame(FrameKind::Raw)[2..], br#"{"a":1}"#);
    }
}
