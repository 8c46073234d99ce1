//! How a subscription starts: which snapshot and which history a client gets
//! before live messages, and whether a resume succeeded.
//!
//! The rule is honesty: a `since` is either recovered completely (every message
//! after it, none missing, same epoch) or reported `recovered: false` with the
//! current snapshot — never a partial replay presented as complete.

use crate::channel::ChannelName;
use crate::engine::{Engine, EngineError, Entry, Offset, Position, Snapshot};
use crate::protocol::Since;

/// What to send before going live.
#[derive(Debug)]
pub struct Start {
    /// The channel's epoch and newest offset when the start was read: live
    /// delivery continues after this offset.
    pub position: Position,
    /// `Some` when the client asked to resume.
    pub recovered: Option<bool>,
    /// Sent first, when present.
    pub snapshot: Option<Snapshot>,
    /// Sent after the snapshot, in offset order.
    pub replay: Vec<Entry>,
}

impl Start {
    /// The offset after which live messages continue.
    pub fn live_after(&self) -> Offset {
        self.position.offset
    }
}

/// Reads the start of a subscription. `want_snapshot`: send the channel's
/// snapshot to a fresh (or unrecoverable) subscriber, followed by whatever was
/// published after it.
pub async fn plan(
    engine: &dyn Engine,
    channel: &ChannelName,
    since: Option<&Since>,
    want_snapshot: bool,
    max_replay: usize,
) -> Result<Start, EngineError> {
    if let Some(since) = since {
        let page = engine.history(channel, since.offset, max_replay).await?;
        if page.covered && page.position.epoch.as_str() == since.epoch {
            return Ok(Start {
                position: page.position,
                recovered: Some(true),
                snapshot: None,
                replay: page.entries,
            });
        }
        let mut start = fresh(engine, channel, want_snapshot, max_replay).await?;
        start.recovered = Some(false);
        return Ok(start);
    }
    fresh(engine, channel, want_snapshot, max_replay).await
}

/// Every message the channel's history holds (at most `max`, the oldest
/// first), with the position. What is missing (trimmed, expired, past `max`)
/// the caller sees from the entries' offsets against `position.offset`.
pub async fn everything(
    engine: &dyn Engine,
    channel: &ChannelName,
    max: usize,
) -> Result<Start, EngineError> {
    let page = engine.history(channel, 0, max).await?;
    Ok(Start {
        position: page.position,
        recovered: None,
        snapshot: None,
        replay: page.entries,
    })
}

async fn fresh(
    engine: &dyn Engine,
    channel: &ChannelName,
    want_snapshot: bool,
    max_replay: usize,
) -> Result<Start, EngineError> {
    if want_snapshot && let Some(snapshot) = engine.snapshot(channel).await? {
        let page = engine.history(channel, snapshot.offset, max_replay).await?;
        // Messages published after the snapshot complete it, if history still
        // has all of them; otherwise the snapshot alone is the best state.
        let replay = if page.covered && page.position.epoch == snapshot.epoch {
            page.entries
        } else {
            Vec::new()
        };
        return Ok(Start {
            position: page.position,
            recovered: None,
            snapshot: Some(snapshot),
            replay,
        });
    }
    Ok(Start {
        position: engine.position(channel).await?,
        recovered: None,
        snapshot: None,
        replay: Vec::new(),
    })
}
