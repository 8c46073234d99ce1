//! What was published: per channel, every publish in the order it was sent,
//! with its outcome. The checks ask it which acknowledged messages a client
//! should have received.
//!
//! Each channel has one publisher that sends one message at a time, so the
//! order of `seq` (ours, in the message's `data.s`) is the order of offsets
//! (Redis's) for every message that was applied — the only exception being a
//! publish whose outcome was unknown (a timeout), which is never acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::clock::now_us;

/// A publish's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Sent, no answer yet.
    Pending,
    /// HTTP 200 or the script's reply: the producer was told it is published.
    Acked,
    /// Refused, failed or timed out: the producer was not told it is published
    /// (it may still have been applied).
    Failed,
}

/// One publish.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub send_us: u64,
    pub ack_us: u64,
    pub state: State,
    /// The epoch (interned) and offset the acknowledgement named.
    pub epoch: u32,
    pub offset: u64,
    /// What a native client first saw this message delivered as.
    pub seen_epoch: u32,
    pub seen_offset: u64,
    /// The message's kind (the ESCAI event family, or 0).
    pub kind: u8,
}

/// The publishes of one channel.
pub struct Ledger {
    pub channel: String,
    entries: Mutex<Vec<Entry>>,
}

/// Which messages a subscriber wants: all, or only some kinds (a bit per kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter(pub u32);

impl Filter {
    pub const ALL: Filter = Filter(u32::MAX);

    pub fn passes(self, kind: u8) -> bool {
        self.0 & (1 << kind) != 0
    }
}

/// A message delivered under an offset the acknowledgement (or another
/// client) gave to another message.
#[derive(Debug)]
pub struct Mismatch {
    pub seq: u64,
    pub expected: (u32, u64),
    pub got: (u32, u64),
    /// The producer was told this publish failed (refused or timed out): a
    /// second copy of it is not a violation, since it was never acknowledged.
    pub unacked: bool,
}

impl Ledger {
    pub fn new(channel: &str) -> Arc<Self> {
        Arc::new(Self {
            channel: channel.to_string(),
            entries: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a publish about to be sent; its `seq` (from 1).
    pub fn begin(&self, kind: u8) -> (u64, u64) {
        let mut entries = self.lock();
        let send_us = now_us();
        entries.push(Entry {
            send_us,
            ack_us: 0,
            state: State::Pending,
            epoch: 0,
            offset: 0,
            seen_epoch: 0,
            seen_offset: 0,
            kind,
        });
        (entries.len() as u64, send_us)
    }

    /// Records the outcome of publish `seq`; a mismatch if a client had seen
    /// it under another offset.
    pub fn resolve(&self, seq: u64, outcome: Option<(u32, u64)>) -> Option<Mismatch> {
        let mut entries = self.lock();
        let e = entries.get_mut(seq.checked_sub(1)? as usize)?;
        e.ack_us = now_us();
        match outcome {
            Some((epoch, offset)) => {
                e.state = State::Acked;
                e.epoch = epoch;
                e.offset = offset;
                if e.seen_offset != 0 && (e.seen_epoch, e.seen_offset) != (epoch, offset) {
                    return Some(Mismatch {
                        seq,
                        expected: (epoch, offset),
                        got: (e.seen_epoch, e.seen_offset),
                        unacked: false,
                    });
                }
            }
            None => e.state = State::Failed,
        }
        None
    }

    /// A native client received `seq` as (`epoch`, `offset`): checked against
    /// the acknowledgement, or against what the first client saw.
    pub fn observe(&self, seq: u64, epoch: u32, offset: u64) -> Option<Mismatch> {
        let mut entries = self.lock();
        let e = entries.get_mut(seq.checked_sub(1)? as usize)?;
        let expected = if e.state == State::Acked {
            (e.epoch, e.offset)
        } else if e.seen_offset != 0 {
            (e.seen_epoch, e.seen_offset)
        } else {
            e.seen_epoch = epoch;
            e.seen_offset = offset;
            return None;
        };
        (expected != (epoch, offset)).then_some(Mismatch {
            seq,
            expected,
            got: (epoch, offset),
            // Still pending: it may yet be acknowledged, so it counts.
            unacked: e.state == State::Failed,
        })
    }

    /// How many publishes were sent.
    pub fn len(&self) -> u64 {
        self.lock().len() as u64
    }

    /// The entry of `seq`.
    pub fn get(&self, seq: u64) -> Option<Entry> {
        self.lock().get(seq.checked_sub(1)? as usize).copied()
    }

    /// Acknowledged messages with `lo < seq < hi` that `filter` passes and
    /// `pred` accepts: how many, and the first.
    pub fn acked_between(
        &self,
        lo: u64,
        hi: u64,
        filter: Filter,
        pred: impl Fn(&Entry) -> bool,
    ) -> (u64, Option<u64>) {
        let entries = self.lock();
        let from = lo as usize; // seq lo+1 is at index lo
        let to = (hi.saturating_sub(1) as usize).min(entries.len());
        let mut n = 0;
        let mut first = None;
        for (i, e) in entries.iter().enumerate().take(to).skip(from) {
            if e.state == State::Acked && filter.passes(e.kind) && pred(e) {
                n += 1;
                first.get_or_insert(i as u64 + 1);
            }
        }
        (n, first)
    }

    /// Acknowledged messages of `epoch` with `lo ≤ offset ≤ hi`: how many, and the first seq.
    pub fn acked_offsets(&self, epoch: u32, lo: u64, hi: u64) -> (u64, Option<u64>) {
        self.acked_offsets_where(epoch, lo, hi, |_| true)
    }

    /// As [`Ledger::acked_offsets`], for the entries `pred` accepts.
    pub fn acked_offsets_where(
        &self,
        epoch: u32,
        lo: u64,
        hi: u64,
        pred: impl Fn(&Entry) -> bool,
    ) -> (u64, Option<u64>) {
        let entries = self.lock();
        let mut n = 0;
        let mut first = None;
        // Offsets grow with seq within an epoch: walk back from the end.
        for (i, e) in entries.iter().enumerate().rev() {
            if e.state != State::Acked || e.epoch != epoch {
                continue;
            }
            if e.offset < lo {
                break;
            }
            if e.offset <= hi && pred(e) {
                n += 1;
                first = Some(i as u64 + 1);
            }
        }
        (n, first)
    }

    /// Counts of (acknowledged, failed, pending).
    pub fn outcomes(&self) -> (u64, u64, u64) {
        let entries = self.lock();
        let mut c = (0, 0, 0);
        for e in entries.iter() {
            match e.state {
                State::Acked => c.0 += 1,
                State::Failed => c.1 += 1,
                State::Pending => c.2 += 1,
            }
        }
        c
    }
}

/// Every channel's ledger, and the epochs' names.
#[derive(Default)]
pub struct Ledgers {
    channels: Mutex<HashMap<String, Arc<Ledger>>>,
    epochs: Mutex<HashMap<String, u32>>,
}

impl Ledgers {
    pub fn channel(&self, name: &str) -> Arc<Ledger> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string())
            .or_insert_with(|| Ledger::new(name))
            .clone()
    }

    /// The ledger of `name` if something was published there.
    pub fn existing(&self, name: &str) -> Option<Arc<Ledger>> {
        let map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Ledger>> {
        let map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }

    /// The interned id of an epoch (never 0).
    pub fn epoch(&self, name: &str) -> u32 {
        let mut map = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
        let next = map.len() as u32 + 1;
        *map.entry(name.to_string()).or_insert(next)
    }
}
