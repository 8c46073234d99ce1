//! WebSocket transport: the opening handshake over hyper's upgrade, RFC 6455
//! framing, the close codes the gateway sends, and each socket's outbound
//! queue. No protocol knowledge lives here: bytes and frames, never channels.

pub mod close;
pub mod conn;
pub mod deflate;
pub mod frame;
pub mod handshake;
