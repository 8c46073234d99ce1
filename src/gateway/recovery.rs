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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::engine::memory::MemoryEngine;
    use crate::engine::{HistoryConfig, HistoryPolicy, PublishOptions};
    use crate::json::Json;

    /// How the start is asked for.
    enum Ask {
        /// `plan`: resume from (offset, the channel's epoch or another one),
        /// whether a snapshot is wanted, the replay limit.
        Plan {
            since: Option<(Offset, bool)>,
            want_snapshot: bool,
            max: usize,
        },
        /// `everything`, at most this many.
        Everything(usize),
    }

    struct Case {
        name: &'static str,
        /// History kept by the engine.
        history: usize,
        /// Messages published (offsets 1..=published).
        published: Offset,
        /// The one published as the snapshot.
        snapshot_at: Option<Offset>,
        ask: Ask,
        recovered: Option<bool>,
        snapshot: Option<Offset>,
        replay: Vec<Offset>,
        position: Offset,
    }

    fn plan(since: Option<(Offset, bool)>, want_snapshot: bool, max: usize) -> Ask {
        Ask::Plan {
            since,
            want_snapshot,
            max,
        }
    }

    async fn run(case: &Case) -> Result<Start, EngineError> {
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let engine = MemoryEngine::new(
            HistoryConfig {
                default: HistoryPolicy {
                    size: case.history,
                    ttl: Duration::from_secs(600),
                    tombstone: Duration::ZERO,
                },
                namespaces: HashMap::new(),
            },
            tx,
        );
        let channel = ChannelName::parse("c", 16).expect("channel");
        for n in 1..=case.published {
            let data = Json::parse(Bytes::from(format!("{{\"n\":{n}}}")), 8).expect("JSON");
            let options = PublishOptions {
                snapshot: case.snapshot_at == Some(n),
                version: None,
                idempotency: None,
            };
            engine.publish(&channel, &data, options).await?;
        }
        let epoch = engine.position(&channel).await?.epoch;
        match case.ask {
            Ask::Plan {
                since,
                want_snapshot,
                max,
            } => {
                let since = since.map(|(offset, same_epoch)| Since {
                    offset,
                    epoch: if same_epoch {
                        epoch.as_str().to_string()
                    } else {
                        "another-epoch".into()
                    },
                });
                super::plan(&engine, &channel, since.as_ref(), want_snapshot, max).await
            }
            Ask::Everything(max) => everything(&engine, &channel, max).await,
        }
    }

    #[tokio::test]
    async fn the_start_of_a_subscription() {
        let cases = vec![
            Case {
                name: "resume covered by history",
                history: 100,
                published: 5,
                snapshot_at: None,
                ask: plan(Some((2, true)), true, 100),
                recovered: Some(true),
                snapshot: None,
                replay: vec![3, 4, 5],
                position: 5,
            },
            Case {
                name: "resume with nothing missed",
                history: 100,
                published: 5,
                snapshot_at: Some(3),
                ask: plan(Some((5, true)), true, 100),
                recovered: Some(true),
                snapshot: None,
                replay: vec![],
                position: 5,
            },
            Case {
                name: "resume no longer covered (history trimmed): the current state",
                history: 3,
                published: 10,
                snapshot_at: None,
                ask: plan(Some((2, true)), false, 100),
                recovered: Some(false),
                snapshot: None,
                replay: vec![],
                position: 10,
            },
            Case {
                name: "resume not covered: snapshot then what followed it",
                history: 3,
                published: 10,
                snapshot_at: Some(8),
                ask: plan(Some((2, true)), true, 100),
                recovered: Some(false),
                snapshot: Some(8),
                replay: vec![9, 10],
                position: 10,
            },
            Case {
                name: "resume from another epoch",
                history: 100,
                published: 5,
                snapshot_at: None,
                ask: plan(Some((2, false)), false, 100),
                recovered: Some(false),
                snapshot: None,
                replay: vec![],
                position: 5,
            },
            Case {
                name: "resume from another epoch with a snapshot",
                history: 100,
                published: 5,
                snapshot_at: Some(4),
                ask: plan(Some((5, false)), true, 100),
                recovered: Some(false),
                snapshot: Some(4),
                replay: vec![5],
                position: 5,
            },
            Case {
                name: "resume from an offset the channel never reached",
                history: 100,
                published: 5,
                snapshot_at: None,
                ask: plan(Some((9, true)), false, 100),
                recovered: Some(false),
                snapshot: None,
                replay: vec![],
                position: 5,
            },
            Case {
                name: "resume longer than the replay limit: no partial replay",
                history: 100,
                published: 10,
                snapshot_at: None,
                ask: plan(Some((1, true)), false, 3),
                recovered: Some(false),
                snapshot: None,
                replay: vec![],
                position: 10,
            },
            Case {
                name: "fresh: snapshot then history after it",
                history: 100,
                published: 5,
                snapshot_at: Some(3),
                ask: plan(None, true, 100),
                recovered: None,
                snapshot: Some(3),
                replay: vec![4, 5],
                position: 5,
            },
            Case {
                name: "fresh: the snapshot is the newest message",
                history: 100,
                published: 5,
                snapshot_at: Some(5),
                ask: plan(None, true, 100),
                recovered: None,
                snapshot: Some(5),
                replay: vec![],
                position: 5,
            },
            Case {
                name: "fresh: history after the snapshot trimmed: the snapshot alone",
                history: 2,
                published: 6,
                snapshot_at: Some(1),
                ask: plan(None, true, 100),
                recovered: None,
                snapshot: Some(1),
                replay: vec![],
                position: 6,
            },
            Case {
                name: "fresh: more after the snapshot than the replay limit: the snapshot alone",
                history: 100,
                published: 10,
                snapshot_at: Some(1),
                ask: plan(None, true, 3),
                recovered: None,
                snapshot: Some(1),
                replay: vec![],
                position: 10,
            },
            Case {
                name: "fresh: no snapshot stored",
                history: 100,
                published: 5,
                snapshot_at: None,
                ask: plan(None, true, 100),
                recovered: None,
                snapshot: None,
                replay: vec![],
                position: 5,
            },
            Case {
                name: "fresh: snapshot not wanted",
                history: 100,
                published: 5,
                snapshot_at: Some(3),
                ask: plan(None, false, 100),
                recovered: None,
                snapshot: None,
                replay: vec![],
                position: 5,
            },
            Case {
                name: "fresh: a channel nobody published on",
                history: 100,
                published: 0,
                snapshot_at: None,
                ask: plan(None, true, 100),
                recovered: None,
                snapshot: None,
                replay: vec![],
                position: 0,
            },
            Case {
                name: "everything history holds",
                history: 100,
                published: 5,
                snapshot_at: Some(2),
                ask: Ask::Everything(100),
                recovered: None,
                snapshot: None,
                replay: vec![1, 2, 3, 4, 5],
                position: 5,
            },
            Case {
                name: "everything: trimmed history shows its gap against the position",
                history: 3,
                published: 5,
                snapshot_at: None,
                ask: Ask::Everything(100),
                recovered: None,
                snapshot: None,
                replay: vec![3, 4, 5],
                position: 5,
            },
            Case {
                name: "everything up to the limit, oldest first",
                history: 100,
                published: 5,
                snapshot_at: None,
                ask: Ask::Everything(2),
                recovered: None,
                snapshot: None,
                replay: vec![1, 2],
                position: 5,
            },
        ];
        let mut failures = Vec::new();
        for case in &cases {
            let start = match run(case).await {
                Ok(start) => start,
                Err(e) => {
                    failures.push(format!("{}: {e}", case.name));
                    continue;
                }
            };
            let replay: Vec<Offset> = start.replay.iter().map(|e| e.offset).collect();
            let got = (
                start.recovered,
                start.snapshot.as_ref().map(|s| s.offset),
                replay,
                start.position.offset,
            );
            let expected = (
                case.recovered,
                case.snapshot,
                case.replay.clone(),
                case.position,
            );
            if got != expected {
                failures.push(format!(
                    "{}: (recovered, snapshot, replay, position) = {got:?}, expected {expected:?}",
                    case.name
                ));
            }
            if start.live_after() != start.position.offset {
                failures.push(format!("{}: live after {}", case.name, start.live_after()));
            }
            if let Some(s) = &start.snapshot
                && s.epoch != start.position.epoch
            {
                failures.push(format!("{}: snapshot from another epoch", case.name));
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
}
