//! One message on its way to local subscribers, encoded at most once per form.
//!
//! A form is how one dialect's clients receive a message (the native
//! `message`, the drop-in routes' bare data, the ESCAI seed's event, the AI
//! Council seed's envelope), plain or compressed (permessage-deflate), and for
//! native subscriptions with `"delta": "fossil"` whole or as a delta against
//! the channel's previous message. Whatever the number of subscribers and
//! dialects, each form of a message is encoded — and compressed, and diffed —
//! once per replica, and the same bytes go to every subscriber that takes it.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use serde_json::Value;

use crate::channel::ChannelName;
use crate::engine::{IncomingMessage, Offset};
use crate::filter::Filter;
use crate::json::Json;
use crate::protocol::{council, escai, server};
use crate::ws::deflate::{self, DeflateConfig};
use crate::ws::frame::{self, OpCode};

/// The form in which a subscriber receives messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Native protocol: `{"type":"message","channel":…,"offset":…,"data":…}`.
    Native,
    /// Native protocol with `"delta": "fossil"`: `data` is the JSON text as a
    /// string — whole, or with `"delta": true` a fossil delta against the
    /// channel's previous message when the subscriber has that message.
    NativeDelta,
    /// The data alone, exactly as published (the snapshot and relay routes).
    Bare,
    /// ESCAI (seed 003): the published event with `agent_id` and `timestamp`.
    Escai,
    /// AI Council (seed 004): `{"type","timestamp","message_id","data"}`.
    Council,
}

/// What a frame carries: a message whole in one of the forms, or the delta.
#[derive(Debug, Clone, Copy)]
enum Body {
    Whole(FrameKind),
    Delta,
}

impl Body {
    const COUNT: usize = 6;

    fn index(self) -> usize {
        match self {
            Self::Whole(FrameKind::Native) => 0,
            Self::Whole(FrameKind::NativeDelta) => 1,
            Self::Whole(FrameKind::Bare) => 2,
            Self::Whole(FrameKind::Escai) => 3,
            Self::Whole(FrameKind::Council) => 4,
            Self::Delta => 5,
        }
    }
}

/// The previous message of a channel, which a delta is computed against.
pub(crate) type Base = (Offset, Json);

/// A message with its encoded WebSocket frames, shared by every shard.
#[derive(Debug)]
pub struct Delivery {
    pub channel: ChannelName,
    pub offset: Option<Offset>,
    pub published_us: Option<u64>,
    pub data: Json,
    /// The channel's previous message, when this replica dispatched it.
    base: Option<Base>,
    /// Plain frames by body, then compressed ones.
    frames: [OnceLock<Bytes>; 2 * Body::COUNT],
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
            base: None,
            frames: Default::default(),
            parsed: OnceLock::new(),
            verdicts: Mutex::new(Vec::new()),
        }
    }

    /// A live message from the engine's feed, on its way out; `base` is the
    /// channel's previous message if this replica dispatched it.
    pub fn live(m: IncomingMessage, base: Option<Base>) -> Arc<Self> {
        let mut d = Self::new(
            m.channel,
            m.seq.map(|(offset, _)| offset),
            m.published_us,
            m.data,
        );
        d.base = base;
        Arc::new(d)
    }

    /// The offset of the message this one's delta is computed against.
    pub fn base_offset(&self) -> Option<Offset> {
        self.base.as_ref().map(|(offset, _)| *offset)
    }

    /// The complete, uncompressed WebSocket frame of the message in a form.
    pub fn frame(&self, kind: FrameKind) -> &Bytes {
        self.plain(Body::Whole(kind))
    }

    /// The frame a subscriber gets: in its form, compressed if it negotiated
    /// permessage-deflate (`compress`), and for [`FrameKind::NativeDelta`] a
    /// delta if the last message it got (`after`) is this one's base.
    pub fn frame_for(
        &self,
        kind: FrameKind,
        compress: Option<&DeflateConfig>,
        after: Option<Offset>,
    ) -> &Bytes {
        let body = match (kind, &self.base) {
            (FrameKind::NativeDelta, Some((base, _))) if after == Some(*base) => Body::Delta,
            _ => Body::Whole(kind),
        };
        match compress {
            None => self.plain(body),
            Some(config) => self.compressed(body, config),
        }
    }

    fn plain(&self, body: Body) -> &Bytes {
        cached(&self.frames[body.index()], || self.encode(body))
    }

    /// The compressed frame: compressed once, whoever asks first. A message
    /// under the threshold, or one deflate does not shrink, goes out plain
    /// (a connection that negotiated the extension takes either).
    fn compressed(&self, body: Body, config: &DeflateConfig) -> &Bytes {
        cached(&self.frames[Body::COUNT + body.index()], || {
            if let Some(same) = self.same_as(body) {
                return self.compressed(same, config).clone();
            }
            let plain = self.plain(body);
            let payload = frame::payload(plain);
            if payload.len() < config.threshold {
                return plain.clone();
            }
            let packed = deflate::compress(payload, config.level);
            if packed.len() >= payload.len() {
                return plain.clone();
            }
            frame::encode_compressed(OpCode::Text, &packed)
        })
    }

    /// The body whose frame this one's is, when a form fell back to another
    /// (a delta not worth it, a message without offset): compressed once, too.
    fn same_as(&self, body: Body) -> Option<Body> {
        let other = match body {
            Body::Delta => Body::Whole(FrameKind::NativeDelta),
            Body::Whole(FrameKind::NativeDelta) => Body::Whole(FrameKind::Native),
            Body::Whole(_) => return None,
        };
        let (a, b) = (self.plain(body), self.plain(other));
        (a.as_ptr() == b.as_ptr() && a.len() == b.len()).then_some(other)
    }

    fn encode(&self, body: Body) -> Bytes {
        let text = match body {
            Body::Whole(FrameKind::Native) => {
                server::message(self.channel.as_str(), self.offset, &self.data)
            }
            Body::Whole(FrameKind::NativeDelta) => match self.offset {
                Some(offset) => server::message_text(self.channel.as_str(), offset, &self.data),
                // Without an offset a message is no link of a delta chain:
                // the native form, which the client takes as it is.
                None => return self.plain(Body::Whole(FrameKind::Native)).clone(),
            },
            Body::Whole(FrameKind::Bare) => return frame::text(self.data.as_str()),
            Body::Whole(FrameKind::Escai) => escai::event(
                &self.data,
                self.value(),
                agent_of(&self.channel),
                self.published_us(),
            ),
            Body::Whole(FrameKind::Council) => {
                council::event(&self.data, self.offset, self.published_us())
            }
            Body::Delta => {
                let whole = self.plain(Body::Whole(FrameKind::NativeDelta));
                let (Some(offset), Some((_, base))) = (self.offset, &self.base) else {
                    return whole.clone();
                };
                let Some(patch) = super::delta::compute(base.as_bytes(), self.data.as_bytes())
                else {
                    return whole.clone();
                };
                let framed = frame::text(&server::message_delta(
                    self.channel.as_str(),
                    offset,
                    &patch,
                ));
                // A delta that would not be smaller goes whole.
                return if framed.len() < whole.len() {
                    framed
                } else {
                    whole.clone()
                };
            }
        };
        frame::text(&text)
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

/// The frame in `cell`, encoded by `encode` if missing.
///
/// Shards on other threads ask for the same frame at the same moment: one
/// that finds it missing encodes it itself rather than wait for another that
/// is encoding it (`get_or_init` would park it on a futex, a thread hand-off
/// per message); the first stored is kept, the other dropped. Storing is a
/// move: a race lost here waits nanoseconds, not an encoding.
fn cached(cell: &OnceLock<Bytes>, encode: impl FnOnce() -> Bytes) -> &Bytes {
    if let Some(frame) = cell.get() {
        return frame;
    }
    let encoded = encode();
    cell.get_or_init(|| encoded)
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
