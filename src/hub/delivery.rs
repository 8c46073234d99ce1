//! One message on its way to local subscribers, encoded at most once per form.
//!
//! A form is how one dialect's clients receive a message (the native
//! `message`, the drop-in routes' bare data, the ESCAI seed's event, the AI
//! Council seed's envelope). Whatever the number of subscribers and dialects,
//! each form of a message is encoded once per replica and the same bytes go to
//! every subscriber that takes that form.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use serde_json::Value;

use crate::channel::ChannelName;
use crate::engine::{IncomingMessage, Offset};
use crate::filter::Filter;
use crate::json::Json;
use crate::protocol::{council, escai, server};
use crate::ws::frame;

/// The form in which a subscriber receives messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Native protocol: `{"type":"message","channel":…,"offset":…,"data":…}`.
    Native,
    /// The data alone, exactly as published (the snapshot and relay routes).
    Bare,
    /// ESCAI (seed 003): the published event with `agent_id` and `timestamp`.
    Escai,
    /// AI Council (seed 004): `{"type","timestamp","message_id","data"}`.
    Council,
}

impl FrameKind {
    const COUNT: usize = 4;

    fn index(self) -> usize {
        match self {
            Self::Native => 0,
            Self::Bare => 1,
            Self::Escai => 2,
            Self::Council => 3,
        }
    }
}

/// A message with its encoded WebSocket frames, shared by every shard.
#[derive(Debug)]
pub struct Delivery {
    pub channel: ChannelName,
    pub offset: Option<Offset>,
    pub published_us: Option<u64>,
    pub data: Json,
    frames: [OnceLock<Bytes>; FrameKind::COUNT],
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
            frames: Default::default(),
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
        let cell = &self.frames[kind.index()];
        if let Some(frame) = cell.get() {
            return frame;
        }
        let encoded = match kind {
            FrameKind::Native => frame::text(&server::message(
                self.channel.as_str(),
                self.offset,
                &self.data,
            )),
            FrameKind::Bare => frame::text(self.data.as_str()),
            FrameKind::Escai => frame::text(&escai::event(
                &self.data,
                self.value(),
                agent_of(&self.channel),
                self.published_us(),
            )),
            FrameKind::Council => frame::text(&council::event(
                &self.data,
                self.offset,
                self.published_us(),
            )),
        };
        // Storing is a move: a race lost here waits nanoseconds, not an
        // encoding, and keeps the other (equal) frame.
        cell.get_or_init(|| encoded)
    }

    /// The data, parsed on first need (`None` if it is not valid JSON).
    fn value(&self) -> Option<&Value> {
        self.parsed.get_or_init(|| self.data.to_value()).as_ref()
    }

    /// When the message was published (now, for a plain `PUBLISH` without one).
    fn published_us(&self) -> u64 {
        self.published_us.unwrap_or_else(crate::time::unix_micros)
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
        let verdict = self.value().is_some_and(|v| f.matches(v));
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

/// The agent of an ESCAI channel: `agents:{id}` and `agents:{id}:…`.
fn agent_of(channel: &ChannelName) -> Option<&str> {
    channel
        .as_str()
        .strip_prefix("agents:")
        .and_then(|rest| rest.split(':').next())
        .filter(|a| !a.is_empty())
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
        assert_eq!(&d.frame(FrameKind::Bare)[2..], br#"{"a":1}"#);
        let council = d.frame(FrameKind::Council).as_ptr();
        assert_eq!(d.frame(FrameKind::Council).as_ptr(), council);
        assert_ne!(council, first, "each form has its own frame");
    }

    #[test]
    fn dialect_forms_carry_the_channels_agent_and_offset() {
        let data = Json::parse(
            Bytes::from_static(br#"{"type":"epistemic_update","data":{"c":1}}"#),
            8,
        )
        .unwrap();
        let d = Delivery::new(
            ChannelName::parse("agents:agent_1", 64).unwrap(),
            Some(9),
            Some(1_000_000),
            data,
        );
        let text = |b: &Bytes| -> serde_json::Value { serde_json::from_slice(&b[2..]).unwrap() };
        let escai = text(d.frame(FrameKind::Escai));
        assert_eq!(escai["agent_id"], "agent_1");
        assert_eq!(escai["type"], "epistemic_update");
        assert_eq!(escai["timestamp"], "1970-01-01T00:00:01.000Z");
        let council = text(d.frame(FrameKind::Council));
        assert_eq!(council["message_id"], 9);
        assert_eq!(council["data"], serde_json::json!({"c": 1}));
    }
}
