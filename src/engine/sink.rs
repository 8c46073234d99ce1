//! Where an engine's live feed goes.
//!
//! Every event can wait in a bounded queue for the consumer's task (the hub's
//! dispatcher). A consumer may also take events in place, on the producer's
//! task ([`InlineReceiver`]): a live message that needs no waiting (no gap to
//! fill, room in every queue it goes to) then skips one task hand-off, which
//! under load is a thread wake-up per message. Order is kept: while anything
//! is queued, or being handled from the queue, every later event queues too,
//! so the consumer sees each producer's events in the order they were sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::mpsc;

use super::EngineEvent;

/// A consumer that can take some events without waiting.
pub trait InlineReceiver: Send + Sync {
    /// Takes `event` in place, or gives it back to be queued. Called with the
    /// feed's gate held: it must not block or wait.
    fn offer(&self, event: EngineEvent) -> Option<EngineEvent>;
}

/// The consumer went away: the feed is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event feed is closed")]
pub struct FeedClosed;

/// What the producer and consumer sides share.
#[derive(Default)]
struct Shared {
    /// Serializes the in-place path against itself and against queuing, so
    /// that "nothing queued" holds while an event is taken in place.
    gate: Mutex<()>,
    /// Events queued and not yet handled by the consumer.
    queued: AtomicUsize,
    inline: OnceLock<Weak<dyn InlineReceiver>>,
}

/// The producer side, cloned into every task that feeds events.
#[derive(Clone)]
pub struct EventSink {
    queue: mpsc::Sender<EngineEvent>,
    shared: Arc<Shared>,
}

/// The consumer side: the queue, and the place to attach an inline receiver.
pub struct EventFeed {
    queue: mpsc::Receiver<EngineEvent>,
    shared: Arc<Shared>,
}

/// A feed whose queue holds up to `capacity` events before producers wait.
pub fn event_channel(capacity: usize) -> (EventSink, EventFeed) {
    let (tx, rx) = mpsc::channel(capacity);
    let shared = Arc::new(Shared::default());
    (
        EventSink {
            queue: tx,
            shared: shared.clone(),
        },
        EventFeed { queue: rx, shared },
    )
}

impl EventSink {
    /// Hands `event` to the consumer: in place if it takes it, else queued
    /// (waiting for room). Fails once the consumer is gone.
    pub async fn send(&self, event: EngineEvent) -> Result<(), FeedClosed> {
        let event = {
            let _gate = self.shared.gate.lock().unwrap_or_else(|e| e.into_inner());
            let inline = self.shared.inline.get().and_then(Weak::upgrade);
            let event = match inline {
                Some(receiver) if self.shared.queued.load(Ordering::Acquire) == 0 => {
                    match receiver.offer(event) {
                        None => return Ok(()),
                        Some(event) => event,
                    }
                }
                _ => event,
            };
            self.shared.queued.fetch_add(1, Ordering::AcqRel);
            event
        };
        if self.queue.send(event).await.is_err() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(FeedClosed);
        }
        Ok(())
    }

    /// Whether the consumer is gone.
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }
}

/// A plain queue (no inline receiver will attach): for engines whose feed is
/// drained elsewhere, and for tests that read the feed themselves.
impl From<mpsc::Sender<EngineEvent>> for EventSink {
    fn from(queue: mpsc::Sender<EngineEvent>) -> Self {
        Self {
            queue,
            shared: Arc::new(Shared::default()),
        }
    }
}

impl EventFeed {
    /// Lets `receiver` take events in place from now on. Once per feed; a
    /// second receiver is refused (returns false).
    pub fn attach(&self, receiver: Weak<dyn InlineReceiver>) -> bool {
        self.shared.inline.set(receiver).is_ok()
    }

    /// The next queued event. Call [`EventFeed::handled`] once it has been
    /// dealt with: until then, later events queue behind it.
    pub async fn recv(&mut self) -> Option<EngineEvent> {
        self.queue.recv().await
    }

    /// The event last received has been dealt with.
    pub fn handled(&self) {
        let _ = self
            .shared
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Takes events while `open`, recording the order it saw them in.
    struct Recorder {
        open: AtomicBool,
        seen: Mutex<Vec<String>>,
    }

    impl InlineReceiver for Recorder {
        fn offer(&self, event: EngineEvent) -> Option<EngineEvent> {
            if !self.open.load(Ordering::Relaxed) {
                return Some(event);
            }
            if let EngineEvent::Control(v) = &event {
                self.seen.lock().unwrap().push(v.to_string());
            }
            None
        }
    }

    fn control(n: u32) -> EngineEvent {
        EngineEvent::Control(serde_json::json!(n))
    }

    #[tokio::test]
    async fn events_queue_behind_queued_ones_until_handled() {
        let (sink, mut feed) = event_channel(16);
        let recorder = Arc::new(Recorder {
            open: AtomicBool::new(false),
            seen: Mutex::new(Vec::new()),
        });
        let weak: Weak<dyn InlineReceiver> = Arc::downgrade(&recorder) as _;
        assert!(feed.attach(weak.clone()));
        assert!(!feed.attach(weak), "one receiver per feed");

        sink.send(control(1)).await.unwrap(); // refused in place: queued
        recorder.open.store(true, Ordering::Relaxed);
        sink.send(control(2)).await.unwrap(); // 1 is still queued: 2 queues too
        assert!(recorder.seen.lock().unwrap().is_empty());

        assert!(matches!(feed.recv().await, Some(EngineEvent::Control(v)) if v == 1));
        feed.handled();
        sink.send(control(3)).await.unwrap(); // 2 is queued: 3 queues
        assert!(matches!(feed.recv().await, Some(EngineEvent::Control(v)) if v == 2));
        feed.handled();
        assert!(matches!(feed.recv().await, Some(EngineEvent::Control(v)) if v == 3));
        feed.handled();

        sink.send(control(4)).await.unwrap(); // nothing queued: taken in place
        assert_eq!(*recorder.seen.lock().unwrap(), vec!["4".to_string()]);
    }

    #[tokio::test]
    async fn a_closed_feed_is_an_error_and_counts_nothing() {
        let (sink, feed) = event_channel(1);
        drop(feed);
        assert_eq!(sink.send(control(1)).await, Err(FeedClosed));
        assert!(sink.is_closed());
        assert_eq!(sink.shared.queued.load(Ordering::Relaxed), 0);
    }
}
