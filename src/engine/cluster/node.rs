//! One sharded pub/sub connection: a task owning a TCP (or TLS) connection to
//! one cluster master.
//!
//! It connects (TLS handshake on a `rediss://` cluster, the certificate checked
//! against the master's address as the cluster announces it; then `AUTH`), writes the `SSUBSCRIBE`/`SUNSUBSCRIBE`
//! commands the coordinator sends it, and reads what the master pushes. Live
//! messages of channels go straight to the engine's event queue (the hot path
//! never passes the coordinator); confirmations, errors, probe messages and the
//! end of the connection are reported to the coordinator, tagged with the
//! connection's generation so that reports of a replaced connection are ignored.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::resp::{Decoder, Frame};
use super::topology::NodeAddr;
use crate::engine::EngineEvent;
use crate::engine::feed::FeedWriter;
use crate::engine::tls;

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
    /// TLS on a `rediss://` cluster.
    pub tls: Option<TlsConnector>,
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
    feed: Arc<FeedWriter>,
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
    feed: Arc<FeedWriter>,
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
        self.report(NodeEvent::Closed(why.to_string())).await;
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
    async fn serve(&mut self) -> NodeError {
        let mut stream = match open(&self.addr, &self.settings).await {
            Ok(stream) => stream,
            Err(why) => return why,
        };
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut decoder = Decoder;
        if let Err(why) = authenticate(&self.settings, &mut stream, &mut buf, &mut decoder).await {
            return why;
        }
        if !self.report(NodeEvent::Connected).await {
            return NodeError::ShuttingDown;
        }
        loop {
            tokio::select! {
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return NodeError::ShuttingDown };
                    // TLS buffers what it encrypts: flush sends it.
                    let write = async {
                        stream.write_all(&cmd).await?;
                        stream.flush().await
                    };
                    match tokio::time::timeout(self.settings.response_timeout, write).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return NodeError::Write(e),
                        Err(_) => return NodeError::WriteTimeout,
                    }
                }
                read = stream.read_buf(&mut buf) => {
                    match read {
                        Ok(0) => return NodeError::Closed,
                        Ok(_) => {}
                        Err(e) => return NodeError::Read(tls::explain(e)),
                    }
                    loop {
                        match decoder.decode(&mut buf) {
                            Ok(Some(frame)) => {
                                if !self.handle(frame).await {
                                    return NodeError::ShuttingDown;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => return e.into(),
                        }
                    }
                    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                        buf.reserve(READ_CHUNK);
                    }
                }
            }
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

/// Why a connection of our own to one cluster node failed, or ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NodeError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("TLS handshake timed out")]
    TlsTimeout,
    #[error("TLS: {0}")]
    ServerName(#[from] tls::ServerNameError),
    #[error("write: {0}")]
    Write(std::io::Error),
    #[error("write timed out")]
    WriteTimeout,
    #[error("read: {0}")]
    Read(String),
    #[error("connection closed by Redis")]
    Closed,
    #[error("no reply in time")]
    NoReply,
    #[error("{0}")]
    Resp(#[from] super::resp::RespError),
    #[error("{command} refused: {message}")]
    Refused {
        command: &'static str,
        message: String,
    },
    #[error("unexpected {command} reply {reply}")]
    Unexpected {
        command: &'static str,
        reply: String,
    },
    #[error("shutting down")]
    ShuttingDown,
}

/// Connects to `addr` (TLS handshake too, on a `rediss://` cluster) within
/// the connect timeout.
async fn open(addr: &NodeAddr, settings: &NodeSettings) -> Result<NodeStream, NodeError> {
    let deadline = tokio::time::Instant::now() + settings.connect_timeout;
    let connect = TcpStream::connect((addr.host.as_str(), addr.port));
    let tcp = match tokio::time::timeout_at(deadline, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(NodeError::Connect(e)),
        Err(_) => return Err(NodeError::ConnectTimeout),
    };
    let _ = tcp.set_nodelay(true);
    let Some(connector) = &settings.tls else {
        return Ok(NodeStream::Plain(tcp));
    };
    let name = tls::server_name(&addr.host)?;
    match tokio::time::timeout_at(deadline, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(NodeStream::Tls(Box::new(stream))),
        Ok(Err(e)) => Err(NodeError::Tls(format!("handshake: {}", tls::explain(e)))),
        Err(_) => Err(NodeError::TlsTimeout),
    }
}

/// Connects to `addr` as a pub/sub connection would and sends `PING`: why
/// that fails, to say more than "timed out" when the cluster is unreadable.
pub(crate) async fn check(addr: &NodeAddr, settings: &NodeSettings) -> Result<(), NodeError> {
    match query(addr, settings, &redis::cmd("PING")).await? {
        Frame::Simple(_) => Ok(()),
        Frame::Error(message) => Err(NodeError::Refused {
            command: "PING",
            message,
        }),
        other => Err(NodeError::Unexpected {
            command: "PING",
            reply: format!("{other:?}"),
        }),
    }
}

/// Sends one command to `addr` on a connection of its own (connected and
/// authenticated as a pub/sub connection would be, closed after the reply):
/// what the node says, whatever state the cluster command client is in.
pub(crate) async fn query(
    addr: &NodeAddr,
    settings: &NodeSettings,
    cmd: &redis::Cmd,
) -> Result<Frame, NodeError> {
    let mut stream = open(addr, settings).await?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut decoder = Decoder;
    authenticate(settings, &mut stream, &mut buf, &mut decoder).await?;
    exchange(settings, &mut stream, &mut buf, &mut decoder, cmd).await
}

/// Sends `AUTH` when the URLs carry credentials.
async fn authenticate(
    settings: &NodeSettings,
    stream: &mut NodeStream,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
) -> Result<(), NodeError> {
    let Some(password) = &settings.auth.password else {
        return Ok(());
    };
    let mut cmd = redis::cmd("AUTH");
    if let Some(user) = &settings.auth.username {
        cmd.arg(user);
    }
    cmd.arg(password);
    match exchange(settings, stream, buf, decoder, &cmd).await {
        Ok(Frame::Simple(_)) => Ok(()),
        Ok(Frame::Error(message)) => Err(NodeError::Refused {
            command: "AUTH",
            message,
        }),
        Ok(other) => Err(NodeError::Unexpected {
            command: "AUTH",
            reply: format!("{other:?}"),
        }),
        Err(e) => Err(e),
    }
}

/// One command and its reply, within the response timeout.
async fn exchange(
    settings: &NodeSettings,
    stream: &mut NodeStream,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    cmd: &redis::Cmd,
) -> Result<Frame, NodeError> {
    let exchange = async {
        stream
            .write_all(&cmd.get_packed_command())
            .await
            .map_err(NodeError::Write)?;
        stream.flush().await.map_err(NodeError::Write)?;
        loop {
            if let Some(frame) = decoder.decode(buf)? {
                return Ok(frame);
            }
            match stream.read_buf(buf).await {
                Ok(0) => return Err(NodeError::Closed),
                Ok(_) => {}
                Err(e) => return Err(NodeError::Read(tls::explain(e))),
            }
        }
    };
    tokio::time::timeout(settings.response_timeout, exchange)
        .await
        .map_err(|_| NodeError::NoReply)?
}

/// A connection to a master: plain TCP, or TLS on a `rediss://` cluster.
enum NodeStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for NodeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NodeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
