//! One message on its way to local subscribers, encoded at most once per form.

use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::Value;

use crate::channel::ChannelName;
use crate::engine::Offset;
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
        }
    }

    /// The complete WebSocket frame in the given form (encoded on first use).
    pub fn frame(&self, kind: FrameKind) -> &Bytes {
        match kind {
            FrameKind::Native => self.native.get_or_init(|| {
                frame::text(&server::message(
                    self.channel.as_str(),
                    self.offset,
                    &self.data,
                ))
            }),
            FrameKind::Raw => self.raw.get_or_init(|| frame::text(self.data.as_str())),
        }
    }

    /// Whether the message passes `filter` (parsed once, on first need).
    pub fn passes(&self, filter: Option<&Filter>) -> bool {
        match filter {
            None => true,
            Some(f) => self
                .parsed
                .get_or_init(|| self.data.to_value())
                .as_ref()
                .is_some_and(|v| f.matches(v)),
        }
    }
}
