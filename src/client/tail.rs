//! `switchboard tail CHANNEL…`: follows channels over the native protocol and
//! prints one JSON line per message, `{"channel", "offset", "data"}` (the
//! snapshot first, with `"snapshot": true`).
//!
//! It is the reconnect algorithm of docs/PROTOCOL.md written out: it
//! remembers, per channel, the epoch and the last offset it printed; when the
//! connection is lost it moves to the next `--url` after a full-jitter backoff
//! and subscribes with `since: {offset, epoch}`, so the output continues with
//! no gap and no duplicate (messages at or below the last offset are dropped).
//! A resume the gateway cannot honour (`recovered: false`) is said on standard
//! error. `--since N` without a known epoch first subscribes to learn it, then
//! subscribes again from N on the same connection.

use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};
use tokio_util::sync::CancellationToken;

use super::ClientConfig;
use super::{ClientError, Target, error_chain, refusal_of};
use crate::channel::{ChannelName, DEFAULT_MAX_CHANNEL_LEN};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Reconnect backoff (docs/PROTOCOL.md): full jitter, base and cap.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A connection up this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Attempt number used after a 1008 (flood): start near the cap.
const FLOOD_ATTEMPT: u32 = 6;

/// What `switchboard tail` follows, and how.
#[derive(Debug, Clone)]
pub struct TailConfig {
    /// Channels to follow (at least one; repeats are followed once).
    pub channels: Vec<String>,
    /// The gateways and the token.
    pub client: ClientConfig,
    /// Start after this offset on every channel (0: all the history still
    /// holds) instead of at the newest message.
    pub since: Option<u64>,
    /// Subscription filter, a JSON object (docs/PROTOCOL.md, Filters).
    pub filter: Option<String>,
    /// Print each channel's snapshot first (with `"snapshot": true`).
    pub snapshots: bool,
    /// How long to keep reconnecting after the connection is lost.
    pub retry_for: Duration,
    /// Interval of pings to the gateway; three without any frame back mean the
    /// connection is lost (at least 100 ms).
    pub keepalive: Duration,
    /// Largest message accepted from the gateway, in bytes.
    pub max_message_bytes: usize,
}

/// Where a followed channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `subscribe` sent, `subscribed` not yet received.
    Starting,
    /// Subscribed only to learn the epoch for `--since`; output is ignored.
    Probing,
    /// `unsubscribe` of the probe sent.
    Unsubscribing,
    /// Printing.
    Live,
}

#[derive(Debug)]
struct Follow {
    channel: String,
    /// Epoch of `last`.
    epoch: Option<String>,
    /// The last offset printed (or passed over: a skipped snapshot).
    last: u64,
    /// `--since` not yet applied (the epoch is not known yet).
    since_pending: Option<u64>,
    phase: Phase,
}

impl Follow {
    /// The `since` to resume with, once the epoch is known.
    fn since(&self) -> Option<serde_json::Value> {
        self.epoch
            .as_ref()
            .map(|e| json!({"offset": self.last, "epoch": e}))
    }
}

/// A server frame, as much as tail reads of it.
#[derive(Debug, Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    replica: Option<String>,
}

/// How one connection ended.
enum Ending {
    /// Ctrl-C, or the reader of standard output went away.
    Stop,
    /// Do not reconnect.
    Fatal(ClientError),
    /// Reconnect (elsewhere).
    Lost { why: String, slow_down: bool },
}

/// Standard output, one flushed line per message.
struct Output {
    out: std::io::StdoutLock<'static>,
}

impl Output {
    /// Writes one line; `false` when standard output is closed.
    fn line(&mut self, text: &str) -> bool {
        writeln!(self.out, "{text}")
            .and_then(|()| self.out.flush())
            .is_ok()
    }
}

struct Tail {
    targets: Vec<Target>,
    token: Option<HeaderValue>,
    filter: Option<serde_json::Value>,
    snapshots: bool,
    connect_timeout: Duration,
    keepalive: Duration,
    config: WebSocketConfig,
    follows: Vec<Follow>,
    output: Output,
}

/// Runs `switchboard tail`.
pub async fn run(config: TailConfig, shutdown: CancellationToken) -> Result<(), ClientError> {
    let targets = Target::parse_all(&config.client.urls)?;
    let mut follows = Vec::new();
    for name in &config.channels {
        let channel = ChannelName::parse(name, DEFAULT_MAX_CHANNEL_LEN)
            .map_err(|e| ClientError::Usage(format!("bad channel {name:?}: {e}")))?;
        if follows
            .iter()
            .any(|f: &Follow| f.channel == channel.as_str())
        {
            continue;
        }
        follows.push(Follow {
            channel: channel.as_str().to_string(),
            epoch: None,
            last: 0,
            since_pending: config.since,
            phase: Phase::Starting,
        });
    }
    let filter = config
        .filter
        .as_deref()
        .map(|f| match serde_json::from_str::<serde_json::Value>(f) {
            Ok(v) if v.is_object() => Ok(v),
            Ok(_) => Err(ClientError::Usage(
                "--filter must be a JSON object, e.g. '{\"status\":\"running\"}'".into(),
            )),
            Err(e) => Err(ClientError::Usage(format!("--filter is not JSON: {e}"))),
        })
        .transpose()?;
    let token = config
        .client
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|t| HeaderValue::from_str(&format!("Bearer {}", t.trim())))
        .transpose()
        .map_err(|_| {
            ClientError::Usage("the token contains characters a token cannot have".into())
        })?;
    let mut tail = Tail {
        targets,
        token,
        filter,
        snapshots: config.snapshots,
        connect_timeout: config.client.connect_timeout,
        keepalive: config.keepalive.max(Duration::from_millis(100)),
        config: WebSocketConfig::default()
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes)),
        follows,
        output: Output {
            out: std::io::stdout().lock(),
        },
    };
    tail.follow(config.retry_for, shutdown).await
}

/// `random(0, min(cap, base × 2^attempt))`.
fn full_jitter(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    let millis = ceiling.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

impl Tail {
    async fn follow(
        &mut self,
        retry_for: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), ClientError> {
        let mut index = 0;
        let mut attempt = 0u32;
        let mut ever_connected = false;
        let mut failures: Vec<String> = Vec::new();
        let mut down_since = Instant::now();
        loop {
            let target = self.targets[index % self.targets.len()].clone();
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                c = self.connect(&target) => c,
            };
            let why = match connected {
                Ok(ws) => {
                    let started = Instant::now();
                    let ending = self.session(ws, &target, &shutdown).await;
                    match ending {
                        Ending::Stop => return Ok(()),
                        Ending::Fatal(e) => return Err(e),
                        Ending::Lost { why, slow_down } => {
                            ever_connected = true;
                            if started.elapsed() >= STABLE_AFTER {
                                attempt = 0;
                            }
                            if slow_down {
                                attempt = attempt.max(FLOOD_ATTEMPT);
                            }
                            down_since = Instant::now();
                            why
                        }
                    }
                }
                Err(Ending::Fatal(e)) => return Err(e),
                Err(Ending::Stop) => return Ok(()),
                Err(Ending::Lost { why, .. }) => {
                    if !ever_connected {
                        failures.push(format!("{target}: {why}"));
                        if failures.len() >= self.targets.len() {
                            return Err(ClientError::Unreachable {
                                reasons: failures.join("; "),
                            });
                        }
                    }
                    why
                }
            };
            if ever_connected && down_since.elapsed() >= retry_for {
                return Err(ClientError::GaveUp {
                    seconds: retry_for.as_secs(),
                    last: why,
                });
            }
            index += 1;
            let next = &self.targets[index % self.targets.len()];
            let delay = if ever_connected {
                full_jitter(attempt)
            } else {
                Duration::ZERO
            };
            attempt = attempt.saturating_add(1);
            if ever_connected {
                eprintln!(
                    "switchboard tail: {target}: {why}; reconnecting to {next} in {:.1} s",
                    delay.as_secs_f64()
                );
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect(&self, target: &Target) -> Result<Ws, Ending> {
        let lost = |why: String| Ending::Lost {
            why,
            slow_down: false,
        };
        let mut request = target
            .websocket()
            .into_client_request()
            .map_err(|e| Ending::Fatal(ClientError::Usage(format!("{target}: {e}"))))?;
        if let Some(token) = &self.token {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, token.clone());
        }
        let connecting = connect_async_with_config(request, Some(self.config), true);
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Err(_) => Err(lost(format!(
                "no answer within --connect-timeout {:?}",
                self.connect_timeout
            ))),
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(tungstenite::Error::Http(response))) => {
                let status = response.status().as_u16();
                let body = response.body().as_deref().unwrap_or_default();
                let (code, message) = refusal_of(body);
                match status {
                    400 | 401 | 403 | 404 => Err(Ending::Fatal(ClientError::refused(
                        target,
                        "the connection",
                        status,
                        &code,
                        &message,
                    ))),
                    _ => Err(lost(format!(
                        "refused with HTTP {status} {code}: {message}"
                    ))),
                }
            }
            Ok(Err(e)) => Err(lost(error_chain(&e))),
        }
    }

    fn subscribe_request(&self, i: usize, since: Option<serde_json::Value>) -> Message {
        let mut request = json!({"type": "subscribe", "channel": self.follows[i].channel, "id": i});
        if let Some(since) = since {
            request["since"] = since;
        }
        if let Some(filter) = &self.filter {
            request["filters"] = filter.clone();
        }
        Message::text(request.to_string())
    }

    /// One connection: greet, subscribe every channel, print until it ends.
    async fn session(
        &mut self,
        mut ws: Ws,
        target: &Target,
        shutdown: &CancellationToken,
    ) -> Ending {
        let lost = |why: String| Ending::Lost {
            why,
            slow_down: false,
        };
        // The greeting.
        let greeting = tokio::time::timeout(self.connect_timeout, ws.next()).await;
        let replica = match greeting {
            Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<Frame<'_>>(&text)
                .ok()
                .filter(|f| f.kind == "connection_established")
                .and_then(|f| f.replica)
                .unwrap_or_else(|| "?".into()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return self.closed(target, frame.map(|f| (f.code.into(), f.reason.to_string())));
            }
            Ok(Some(Err(e))) => return lost(error_chain(&e)),
            Ok(_) => return lost("the connection ended before the greeting".into()),
            Err(_) => return lost("no greeting from the gateway".into()),
        };
        // Said once every channel is subscribed (a refused one fails first).
        let mut announced = false;
        for i in 0..self.follows.len() {
            let since =
                if self.follows[i].since_pending.is_some() && self.follows[i].epoch.is_none() {
                    self.follows[i].phase = Phase::Probing;
                    None
                } else {
                    self.follows[i].phase = Phase::Starting;
                    self.follows[i].since()
                };
            let request = self.subscribe_request(i, since);
            if let Err(e) = ws.send(request).await {
                return lost(error_chain(&e));
            }
        }
        let mut ping = tokio::time::interval(self.keepalive);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let silence_limit = self.keepalive * 3;
        let mut last_frame = Instant::now();
        loop {
            let item = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = ws.close(None).await;
                    return Ending::Stop;
                }
                _ = ping.tick() => {
                    if last_frame.elapsed() >= silence_limit {
                        return lost(format!("nothing received for {:?}", last_frame.elapsed()));
                    }
                    if let Err(e) = ws.send(Message::text(r#"{"type":"ping"}"#)).await {
                        return lost(error_chain(&e));
                    }
                    continue;
                }
                item = ws.next() => item,
            };
            last_frame = Instant::now();
            let text = match item {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => {
                    return self
                        .closed(target, frame.map(|f| (f.code.into(), f.reason.to_string())));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return lost(error_chain(&e)),
                None => return lost("the connection ended".into()),
            };
            let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) else {
                eprintln!("switchboard tail: ignoring a frame that is not protocol JSON");
                continue;
            };
            let step = self.handle(&frame);
            if !announced && self.follows.iter().all(|f| f.phase == Phase::Live) {
                announced = true;
                eprintln!("switchboard tail: connected to {target} (replica {replica})");
            }
            match step {
                Step::Continue => {}
                Step::Send(message) => {
                    if let Err(e) = ws.send(message).await {
                        return lost(error_chain(&e));
                    }
                }
                Step::End(ending) => {
                    let _ = ws.close(None).await;
                    return ending;
                }
            }
        }
    }

    fn closed(&self, target: &Target, frame: Option<(u16, String)>) -> Ending {
        let (code, reason) = frame.unwrap_or((1005, String::new()));
        let fatal = |what: &str| {
            Ending::Fatal(ClientError::Closed {
                url: target.to_string(),
                message: format!("closed by the gateway with {code} ({reason}): {what}"),
            })
        };
        match code {
            4004 => fatal("an administrator disconnected this user; not reconnecting"),
            4001 => fatal("the token expired; get a new one"),
            1002 | 1007 | 1009 => fatal("the gateway refused this client's frames"),
            1008 => Ending::Lost {
                why: format!("closed with 1008 ({reason})"),
                slow_down: true,
            },
            _ => Ending::Lost {
                why: format!("closed with {code} ({reason})"),
                slow_down: false,
            },
        }
    }

    fn handle(&mut self, frame: &Frame<'_>) -> Step {
        let index = frame
            .channel
            .as_deref()
            .and_then(|c| self.follows.iter().position(|f| f.channel == c));
        match (frame.kind, index) {
            ("subscribed", Some(i)) => self.subscribed(i, frame),
            ("unsubscribed", Some(i)) => {
                if frame.reason.as_deref() == Some("forbidden") {
                    return Step::End(Ending::Fatal(ClientError::Channel {
                        channel: self.follows[i].channel.clone(),
                        code: "forbidden".into(),
                        message: "the token no longer allows this channel".into(),
                    }));
                }
                if self.follows[i].phase == Phase::Unsubscribing {
                    self.follows[i].phase = Phase::Starting;
                    let since = self.follows[i].since();
                    return Step::Send(self.subscribe_request(i, since));
                }
                Step::Continue
            }
            ("snapshot", Some(i)) => {
                let follow = &self.follows[i];
                if follow.phase != Phase::Live {
                    return Step::Continue;
                }
                let offset = frame.offset.unwrap_or(0);
                if offset <= follow.last {
                    return Step::Continue;
                }
                self.follows[i].last = offset;
                if self.snapshots {
                    return self.print(i, Some(offset), frame.data, true);
                }
                Step::Continue
            }
            ("message", Some(i)) => {
                let follow = &self.follows[i];
                if follow.phase != Phase::Live {
                    return Step::Continue;
                }
                if let Some(offset) = frame.offset {
                    if offset <= follow.last {
                        return Step::Continue;
                    }
                    self.follows[i].last = offset;
                }
                self.print(i, frame.offset, frame.data, false)
            }
            ("error", _) => self.error(frame),
            _ => Step::Continue,
        }
    }

    fn subscribed(&mut self, i: usize, frame: &Frame<'_>) -> Step {
        let epoch = frame.epoch.clone().unwrap_or_default();
        let follow = &mut self.follows[i];
        if follow.phase == Phase::Probing {
            follow.last = follow.since_pending.take().unwrap_or(0);
            follow.epoch = Some(epoch);
            follow.phase = Phase::Unsubscribing;
            let request = json!({"type": "unsubscribe", "channel": follow.channel});
            return Step::Send(Message::text(request.to_string()));
        }
        match frame.recovered {
            Some(false) => {
                let same = follow.epoch.as_deref() == Some(epoch.as_str());
                eprintln!(
                    "switchboard tail: {}: cannot resume after offset {}: {}; continuing from the channel's current state",
                    follow.channel,
                    follow.last,
                    if same {
                        "the history no longer reaches back that far (messages were missed)"
                    } else {
                        "the channel's history was lost (new epoch)"
                    }
                );
                if !same {
                    follow.last = 0;
                }
            }
            Some(true) => {}
            None => {
                if follow.epoch.as_deref() != Some(epoch.as_str()) {
                    follow.last = 0;
                }
            }
        }
        follow.epoch = Some(epoch);
        follow.phase = Phase::Live;
        Step::Continue
    }

    fn error(&mut self, frame: &Frame<'_>) -> Step {
        let code = frame.code.clone().unwrap_or_default();
        let message = frame.message.clone().unwrap_or_default();
        match code.as_str() {
            "unavailable" => Step::End(Ending::Lost {
                why: format!("the gateway cannot serve: {message}"),
                slow_down: false,
            }),
            "token_expired" => {
                eprintln!("switchboard tail: {message} (token_expired)");
                Step::Continue
            }
            "rate_limited" => Step::Continue,
            _ => Step::End(Ending::Fatal(ClientError::Channel {
                channel: frame.channel.clone().unwrap_or_else(|| "tail".into()),
                code,
                message,
            })),
        }
    }

    fn print(
        &mut self,
        i: usize,
        offset: Option<u64>,
        data: Option<&RawValue>,
        snapshot: bool,
    ) -> Step {
        let channel = serde_json::to_string(&self.follows[i].channel).unwrap_or_default();
        let offset = offset.map_or_else(|| "null".to_string(), |o| o.to_string());
        let data = data.map_or("null", RawValue::get);
        let line = if snapshot {
            format!(
                "{{\"channel\":{channel},\"offset\":{offset},\"snapshot\":true,\"data\":{data}}}"
            )
        } else {
            format!("{{\"channel\":{channel},\"offset\":{offset},\"data\":{data}}}")
        };
        if self.output.line(&line) {
            Step::Continue
        } else {
            Step::End(Ending::Stop)
        }
    }
}

/// What handling a frame asks of the connection.
enum Step {
    Continue,
    Send(Message),
    End(Ending),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_under_the_capped_ceiling() {
        for attempt in 0..40 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1u32 << attempt.min(16))
                .min(BACKOFF_CAP);
            assert!(full_jitter(attempt) <= ceiling);
        }
    }
}
