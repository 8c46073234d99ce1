//! WebSocket transport: the opening handshake over hyper's upgrade, RFC 6455
//! framing, and each socket's outbound queue. No protocol knowledge lives here.

pub mod conn;
pub mod frame;
pub mod handshake;
