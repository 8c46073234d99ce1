//! One sharded pub/sub connection: a task owning a TCP connection to one
//! cluster master.
//!
//! It connects (and authenticates), writes the `SSUBSCRIBE`/`SUNSUBSCRIBE`
//! commands the coordinator sends it, and reads what the master pushes. Live
//! messages of channels go straight to the engine's event queue (the hot path
//! never passes the coordinator); confirmations, errors, probe messages and the
//! end of the connection are reported to the coordinator, tagged with the
//! connection's generation so that reports of a replaced connection are ignored.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::resp::{Decoder, Frame};
use super::topology::NodeAddr;
use crate::engine::EngineEvent;
use crate::engine::redis::Feed;

/// Credentials sent with `AUTH` after connecting.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub username: Option<String>,
    pub password: Option<String>,
}

/// What a connection reports to the coordinator.
#[derive(Debug)]
pub enum NodeEvent {
    /// Connected and authenticated: ready for commands.
    Connected,
    /// `ssubscribe` confirmation.
    Subscribed(String),
    /// `sunsubscribe`: the confirmation of ours, or the server dropping a shard
    /// channel whose slot left this node. `None`: nothing was subscribed.
    Unsubscribed(Option<String>),
    /// An error reply to the oldest command in flight.
    Error(String),
    /// A probe message arrived on this channel.
    Probe(String),
    /// The connection ended (or never started).
    Closed(String),
}

#[derive(Debug)]
pub struct Report {
    pub generation: u64,
    pub event: NodeEvent,
}

/// Settings of a node connection.
#[derive(Clone)]
pub struct NodeSettings {
    pub auth: Auth,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Pub/sub names starting with this are probes.
    pub probe_prefix: String,
    /// The control channel's pub/sub name.
    pub control: String,
}

/// The coordinator's handle on a connection task; dropping it ends the task.
pub struct NodeHandle {
    pub generation: u64,
    commands: mpsc::UnboundedSender<Bytes>,
    stop: CancellationToken,
}

impl NodeHandle {
    /// Queues one packed command for the connection.
    pub fn send(&self, packed: Vec<u8>) {
        let _ = self.commands.send(Bytes::from(packed));
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts the connection task for `addr`.
pub(crate) fn spawn(
    addr: NodeAddr,
    generation: u64,
    settings: Arc<NodeSettings>,
    feed: Arc<Feed>,
    reports: mpsc::Sender<Report>,
    shutdown: &CancellationToken,
) -> NodeHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = shutdown.child_token();
    let task = Connection {
        addr,
        generation,
        settings,
        feed,
        reports,
        commands: rx,
    };
    tokio::spawn(task.run(stop.clone()));
    NodeHandle {
        generation,
        commands: tx,
        stop,
    }
}

struct Connection {
    addr: NodeAddr,
    generation: u64,
    settings: Arc<NodeSettings>,
    feed: Arc<Feed>,
    reports: mpsc::Sender<Report>,
    commands: mpsc::UnboundedReceiver<Bytes>,
}

/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;

impl Connection {
    async fn run(mut self, stop: CancellationToken) {
        let why = tokio::select! {
            _ = stop.cancelled() => return,
            why = self.serve() => why,
        };
        self.report(NodeEvent::Closed(why)).await;
    }

    async fn report(&self, event: NodeEvent) -> bool {
        self.reports
            .send(Report {
                generation: self.generation,
                event,
            })
            .await
            .is_ok()
    }

    /// Runs the connection until it fails; returns why.
    async fn serve(&mut self) -> String {
        let target = (self.addr.host.as_str(), self.addr.port);
        let mut stream =
            match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(target))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return format!("connect: {e}"),
                Err(_) => return "connect timed out".into(),
            };
        let _ = stream.set_nodelay(true);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut decoder = Decoder;
        if let Err(why) = self.authenticate(&mut stream, &mut buf, &mut decoder).await {
            return why;
        }
        if !self.report(NodeEvent::Connected).await {
            return "shutting down".into();
        }
        let (mut reader, mut writer) = stream.into_split();
        loop {
            tokio::select! {
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return "closed by the engine".into() };
                    let write = tokio::time::timeout(self.settings.response_timeout, writer.write_all(&cmd));
                    match write.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return format!("write: {e}"),
                        Err(_) => return "write timed out".into(),
                    }
                }
                read = reader.read_buf(&mut buf) => {
                    match read {
                        Ok(0) => return "connection closed by Redis".into(),
                        Ok(_) => {}
                        Err(e) => return format!("read: {e}"),
                    }
                    loop {
                        match decoder.decode(&mut buf) {
                            Ok(Some(frame)) => {
                                if !self.handle(frame).await {
                                    return "shutting down".into();
                                }
                            }
                            Ok(None) => break,
                            Err(e) => return e.to_string(),
                        }
                    }
                    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                        buf.reserve(READ_CHUNK);
                    }
                }
            }
        }
    }

    async fn authenticate(
        &self,
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        decoder: &mut Decoder,
    ) -> Result<(), String> {
        let Some(password) = &self.settings.auth.password else {
            return Ok(());
        };
        let mut cmd = redis::cmd("AUTH");
        if let Some(user) = &self.settings.auth.username {
            cmd.arg(user);
        }
        cmd.arg(password);
        let exchange = async {
            stream
                .write_all(&cmd.get_packed_command())
                .await
                .map_err(|e| format!("write: {e}"))?;
            loop {
                if let Some(frame) = decoder.decode(buf).map_err(|e| e.to_string())? {
                    return Ok(frame);
                }
                match stream.read_buf(buf).await {
                    Ok(0) => return Err("connection closed during AUTH".to_string()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
        };
        match tokio::time::timeout(self.settings.response_timeout, exchange).await {
            Ok(Ok(Frame::Simple(_))) => Ok(()),
            Ok(Ok(Frame::Error(e))) => Err(format!("AUTH refused: {e}")),
            Ok(Ok(other)) => Err(format!("unexpected AUTH reply {other:?}")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("AUTH timed out".into()),
        }
    }

    /// Handles one frame; false once the engine has stopped listening.
    async fn handle(&self, frame: Frame) -> bool {
        let items = match frame {
            Frame::Array(Some(items)) => items,
            Frame::Error(e) => return self.report(NodeEvent::Error(e)).await,
            // `+OK`, a `pong`: nothing to do.
            _ => return true,
        };
        let mut items = items.into_iter();
        let (Some(Frame::Bulk(Some(kind))), Some(name), third) =
            (items.next(), items.next(), items.next())
        else {
            return true;
        };
        let name = match name {
            Frame::Bulk(Some(b)) => Some(b),
            _ => None,
        };
        match (kind.as_ref(), name, third) {
            (b"smessage", Some(channel), Some(Frame::Bulk(Some(payload)))) => {
                self.message(&channel, &payload).await
            }
            (b"ssubscribe", Some(channel), _) => {
                self.report(NodeEvent::Subscribed(text(&channel))).await
            }
            (b"sunsubscribe", channel, _) => {
                self.report(NodeEvent::Unsubscribed(channel.map(|c| text(&c))))
                    .await
            }
            _ => true,
        }
    }

    async fn message(&self, channel: &[u8], payload: &Bytes) -> bool {
        if channel.starts_with(self.settings.probe_prefix.as_bytes()) {
            return self.report(NodeEvent::Probe(text(channel))).await;
        }
        if channel == self.settings.control.as_bytes() {
            return match serde_json::from_slice(payload) {
                Ok(value) => self.feed.send(EngineEvent::Control(value)).await,
                Err(_) => true,
            };
        }
        let Ok(channel) = std::str::from_utf8(channel) else {
            return true;
        };
        match self.feed.decode(channel, payload) {
            Some(event) => self.feed.send(event).await,
            None => true,
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
