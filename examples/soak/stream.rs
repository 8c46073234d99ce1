//! One subscription's view of a channel, for the routes that carry no offset
//! (relay, snapshot, ESCAI): messages are known by the seq their publisher
//! put in `data.s`. The rule while connected: from the stream's start on,
//! every acknowledged message exactly once and in order.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::Ctx;
use crate::check::{Check, Kind};
use crate::clock::now_us;
use crate::ledger::{Filter, Ledger, State};
use crate::stats::Route;

pub struct SeqStream {
    pub ledger: Arc<Ledger>,
    pub filter: Filter,
    pub route: Route,
    pub client: u64,
    /// The newest seq processed (0: none yet).
    pub last: u64,
    /// When the subscription was confirmed (checking starts then).
    marker: Option<u64>,
    /// No message has arrived since the marker.
    awaiting_first: bool,
    /// Seqs up to this may come again (after a snapshot that could not be placed).
    redeliver_upto: u64,
    /// When the connection opened: messages sent before are replays.
    opened_us: u64,
}

impl SeqStream {
    pub fn new(ctx: &Ctx, channel: &str, filter: Filter, route: Route, client: u64) -> Self {
        Self {
            ledger: ctx.ledgers.channel(channel),
            filter,
            route,
            client,
            last: 0,
            marker: None,
            awaiting_first: false,
            redeliver_upto: 0,
            opened_us: now_us(),
        }
    }

    fn file(&self, ctx: &Ctx, kind: Kind) {
        ctx.checks.file(Check {
            route: self.route,
            client: self.client,
            ledger: self.ledger.clone(),
            filter: self.filter,
            kind,
        });
    }

    /// The subscription is confirmed now: every acknowledged message sent
    /// from now on must arrive, in order, exactly once.
    pub fn confirm(&mut self) {
        self.marker = Some(now_us());
        self.awaiting_first = true;
    }

    /// Checking starts at seq `s` (a snapshot: the stream continues after it).
    pub fn start_after(&mut self, s: u64) {
        self.marker = Some(now_us());
        self.awaiting_first = false;
        self.last = s;
    }

    /// A snapshot frame of seq `s` whose publish the producer was told failed
    /// (timed out, refused): Redis may have applied it at any later point
    /// (the cluster client retries a command after its caller gave up), so
    /// its seq does not say where it stands among the channel's offsets. It
    /// is either a live message applied late (the stream continues) or the
    /// stored snapshot of a restart (what followed its unknown offset comes
    /// again). Checking starts afresh, as on a new connection: messages up
    /// to the newest one received may come again, in order, and every
    /// acknowledged message sent from now on must follow.
    pub fn unplaced_snapshot(&mut self, s: u64) {
        self.redeliver_upto = self.redeliver_upto.max(self.last);
        self.last = s;
        self.marker = Some(now_us());
        self.awaiting_first = true;
    }

    /// A message with seq `s`, sent at `t` µs.
    pub fn message(&mut self, ctx: &Ctx, s: u64, t: u64) {
        let counters = ctx.stats.route(self.route);
        ctx.delivered(self.route, t, self.opened_us);
        if self.ledger.get(s).is_some_and(|e| e.state == State::Failed) {
            // Its producer was told the publish failed (timed out against a
            // stalled replica or a failing master), and Redis applied it
            // later, at a point its seq does not say: after messages with
            // higher seqs, maybe after this subscription started. It anchors
            // no gap check (the acknowledged message between it and the next
            // may have come before it, or before the subscription); a second
            // copy is an unacknowledged repeat, never a violation.
            if s <= self.last {
                self.file(ctx, Kind::Repeat { seq: s });
            }
            return;
        }
        if self.marker.is_none() {
            // Before confirmation: only the order is checked.
            if s <= self.last {
                self.file(ctx, Kind::Repeat { seq: s });
            } else {
                self.last = s;
            }
            return;
        }
        if s <= self.last {
            self.file(ctx, Kind::Repeat { seq: s });
            return;
        }
        if s <= self.redeliver_upto {
            counters.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        if self.awaiting_first {
            self.awaiting_first = false;
            if let Some(marker_us) = self.marker {
                self.file(
                    ctx,
                    Kind::Start {
                        marker_us,
                        first: s,
                    },
                );
            }
        } else if s > self.last + 1 {
            self.file(
                ctx,
                Kind::SeqGap {
                    lo: self.last,
                    hi: s,
                },
            );
        }
        self.last = s;
    }

    /// The stream ended by the client's choice: acknowledged messages
    /// before `until_us` must have arrived.
    pub fn end(&mut self, ctx: &Ctx, until_us: u64) {
        let Some(marker_us) = self.marker else {
            return;
        };
        if self.awaiting_first {
            self.file(
                ctx,
                Kind::Window {
                    marker_us,
                    until_us,
                },
            );
        } else {
            self.file(
                ctx,
                Kind::Tail {
                    last: self.last,
                    until_us,
                },
            );
        }
    }
}
