//! RFC 6455 framing.
//!
//! Server frames are never masked, so a frame's bytes are the same for every
//! client: the gateway encodes each message once and writes the same buffer to
//! every subscriber. Client frames are decoded here with the configured frame and
//! message size limits checked *before* the payload is buffered. On a
//! connection that negotiated permessage-deflate (`super::deflate`), a data
//! message may be compressed (RSV1 on its first frame): it is inflated here,
//! with the message limit applying to what it inflates to.
//!
//! The client side, for the load generator (`bench/`): [`encode_masked_into`]
//! masks what a client sends, and [`parse_server_frame`] finds a server's
//! unmasked frame in place in a read buffer, with the header parser the
//! [`Decoder`] uses.

use bytes::{BufMut, Bytes, BytesMut};

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Encodes one complete (FIN) unmasked frame.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    encode_into(&mut out, opcode, payload);
    out.freeze()
}

/// Encodes one complete unmasked frame of a compressed message (RSV1 set):
/// `payload` is the message compressed by [`super::deflate::compress`].
pub fn encode_compressed(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    put_frame(&mut out, 0x80 | 0x40 | opcode.bits(), payload);
    out.freeze()
}

/// Appends one complete (FIN) unmasked frame to `out`.
pub fn encode_into(out: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    put_frame(out, 0x80 | opcode.bits(), payload);
}

/// Appends one complete (FIN) frame masked with `mask`, as a client must send
/// every frame (RFC 6455 §5.3: a fresh, unpredictable mask per frame).
pub fn encode_masked_into(out: &mut BytesMut, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
    put_head(out, 0x80 | opcode.bits(), 0x80, payload.len());
    out.put_slice(&mask);
    let start = out.len();
    out.put_slice(payload);
    unmask(&mut out[start..], mask);
}

fn put_frame(out: &mut BytesMut, first: u8, payload: &[u8]) {
    put_head(out, first, 0, payload.len());
    out.put_slice(payload);
}

/// The first byte and the length, with `mask_bit` (0x80 or 0).
#[inline(always)]
fn put_head(out: &mut BytesMut, first: u8, mask_bit: u8, len: usize) {
    out.put_u8(first);
    match len {
        n if n < 126 => out.put_u8(mask_bit | n as u8),
        n if n <= u16::MAX as usize => {
            out.put_u8(mask_bit | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(mask_bit | 127);
            out.put_u64(n as u64);
        }
    }
}

/// Whether a frame built by this module carries a compressed message (RSV1).
pub fn is_compressed(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x40 != 0)
}

/// The payload of a complete unmasked frame built by this module.
pub fn payload(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(header..).unwrap_or(&[])
}

/// A text frame carrying `text`.
pub fn text(text: &str) -> Bytes {
    encode(OpCode::Text, text.as_bytes())
}

/// A close frame with a status code and a short reason (truncated to fit 125 bytes).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Close, &payload)
}

/// Size limits on what a client may send.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest single frame payload, in bytes.
    pub max_frame: usize,
    /// Largest message (all fragments together), in bytes.
    pub max_message: usize,
}

/// One complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// A close frame, with the peer's status code if it sent one.
    Close(Option<u16>),
}

/// Why a client's byte stream is not acceptable; each maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("frame or message larger than {limit} bytes")]
    TooBig { limit: usize },
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error("compressed message: {0}")]
    Inflate(#[from] super::deflate::InflateError),
}

impl FrameError {
    /// The close code RFC 6455 prescribes for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Protocol(_) => 1002,
            Self::TooBig { .. } => 1009,
            Self::InvalidUtf8 => 1007,
            Self::Inflate(super::deflate::InflateError::TooBig { .. }) => 1009,
            Self::Inflate(super::deflate::InflateError::Corrupt) => 1007,
        }
    }
}

/// Incremental decoder of client frames; holds only a fragmented message in progress.
#[derive(Debug)]
pub struct Decoder {
    limits: DecodeLimits,
    /// The connection negotiated permessage-deflate: RSV1 marks a compressed message.
    deflate: bool,
    /// A fragmented message in progress: its opcode, whether it is compressed, its bytes.
    fragments: Option<(OpCode, bool, BytesMut)>,
}

impl Decoder {
    pub fn new(limits: DecodeLimits) -> Self {
        Self {
            limits,
            deflate: false,
            fragments: None,
        }
    }

    /// A decoder for a connection that negotiated permessage-deflate.
    pub fn with_deflate(mut self, deflate: bool) -> Self {
        self.deflate = deflate;
        self
    }

    /// Decodes the next message from the front of `buf`, consuming its bytes.
    /// Returns `Ok(None)` when `buf` holds no complete frame yet.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        loop {
            let Some(header) = parse_header::<true>(buf, self.deflate)? else {
                return Ok(None);
            };
            if header.payload_len > self.limits.max_frame as u64 {
                return Err(FrameError::TooBig {
                    limit: self.limits.max_frame,
                });
            }
            let total = header.header_len + header.payload_len as usize;
            if buf.len() < total {
                return Ok(None);
            }
            let mut frame = buf.split_to(total);
            let mut payload = frame.split_off(header.header_len);
            unmask(&mut payload, header.mask);
            if let Some(message) = self.assemble(header, payload)? {
                return Ok(Some(message));
            }
        }
    }

    fn assemble(
        &mut self,
        header: Header,
        payload: BytesMut,
    ) -> Result<Option<Incoming>, FrameError> {
        if header.opcode.is_control() {
            if !header.fin {
                return Err(FrameError::Protocol("fragmented control frame"));
            }
            if payload.len() > 125 {
                return Err(FrameError::Protocol("control frame longer than 125 bytes"));
            }
            return Ok(Some(match header.opcode {
                OpCode::Ping => Incoming::Ping(payload.freeze()),
                OpCode::Pong => Incoming::Pong(payload.freeze()),
                _ => Incoming::Close(close_code(&payload)?),
            }));
        }
        let (opcode, compressed, data) = match (header.opcode, self.fragments.take()) {
            (OpCode::Continuation, None) => {
                return Err(FrameError::Protocol("continuation frame without a start"));
            }
            (OpCode::Continuation, Some((opcode, compressed, mut data))) => {
                if data.len() + payload.len() > self.limits.max_message {
                    return Err(FrameError::TooBig {
                        limit: self.limits.max_message,
                    });
                }
                data.extend_from_slice(&payload);
                (opcode, compressed, data)
            }
            (_, Some(_)) => {
                return Err(FrameError::Protocol(
                    "new data frame before the fragmented message ended",
                ));
            }
            (opcode, None) => {
                if payload.len() > self.limits.max_message {
                    return Err(FrameError::TooBig {
                        limit: self.limits.max_message,
                    });
                }
                (opcode, header.rsv1, payload)
            }
        };
        if !header.fin {
            self.fragments = Some((opcode, compressed, data));
            return Ok(None);
        }
        let data = if compressed {
            // Inflated on its own (client_no_context_takeover): the inflater
            // exists only for this message.
            Bytes::from(super::deflate::inflate(&data, self.limits.max_message)?)
        } else {
            data.freeze()
        };
        Ok(Some(match opcode {
            OpCode::Text => {
                if std::str::from_utf8(&data).is_err() {
                    return Err(FrameError::InvalidUtf8);
                }
                Incoming::Text(data)
            }
            _ => Incoming::Binary(data),
        }))
    }

    /// Whether a fragmented message is being assembled (so the read buffer must stay).
    pub fn in_message(&self) -> bool {
        self.fragments.is_some()
    }
}

#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    /// The first frame of a compressed message (permessage-deflate).
    rsv1: bool,
    opcode: OpCode,
    mask: [u8; 4],
    header_len: usize,
    payload_len: u64,
}

/// A frame's header at the front of `buf`: a client's (`MASKED`, read by the
/// server) or a server's (unmasked, read by a client); RSV1 only where
/// permessage-deflate was negotiated (`deflate`). `None` until complete.
/// Always inlined: into the load client's per-frame loop (where `deflate` is
/// a constant) across the crate boundary, and into `Decoder::decode`.
#[inline(always)]
fn parse_header<const MASKED: bool>(
    buf: &[u8],
    deflate: bool,
) -> Result<Option<Header>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !deflate) {
        return Err(FrameError::Protocol(
            "reserved bits set (no extension negotiated)",
        ));
    }
    if rsv1 && !matches!(opcode, OpCode::Text | OpCode::Binary) {
        return Err(FrameError::Protocol(
            "RSV1 on a control or continuation frame",
        ));
    }
    if MASKED && b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("client frame is not masked"));
    }
    if !MASKED && b1 & 0x80 != 0 {
        return Err(FrameError::Protocol("server frame is masked"));
    }
    let (payload_len, len_bytes) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 2)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(n), 8)
        }
        n => (u64::from(n), 0),
    };
    let header_len = 2 + len_bytes + if MASKED { 4 } else { 0 };
    if buf.len() < header_len {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    if MASKED {
        mask.copy_from_slice(&buf[2 + len_bytes..header_len]);
    }
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        rsv1,
        opcode,
        mask,
        header_len,
        payload_len,
    }))
}

/// A server's frame found in place at the front of a client's read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerFrame {
    /// The last frame of its message.
    pub fin: bool,
    pub opcode: OpCode,
    /// Where the payload starts in the buffer (the header's length).
    pub start: usize,
    /// The payload's length; the frame ends at `start + len`.
    pub len: usize,
    /// RSV1: the first frame of a compressed message (only where
    /// permessage-deflate was negotiated).
    pub compressed: bool,
}

/// Finds the unmasked server frame at the start of `buf` without copying or
/// consuming it (the client side): `Ok(None)` until all of it is in `buf`. A
/// masked frame, reserved bits (RSV1 where permessage-deflate was not
/// negotiated: `deflate`) or an unknown opcode are protocol errors; size
/// limits, fragments, inflating and control frames are the caller's.
#[inline]
pub fn parse_server_frame(buf: &[u8], deflate: bool) -> Result<Option<ServerFrame>, FrameError> {
    let Some(header) = parse_header::<false>(buf, deflate)? else {
        return Ok(None);
    };
    let len = usize::try_from(header.payload_len)
        .map_err(|_| FrameError::TooBig { limit: usize::MAX })?;
    if buf.len() - header.header_len < len {
        return Ok(None);
    }
    Ok(Some(ServerFrame {
        fin: header.fin,
        opcode: header.opcode,
        start: header.header_len,
        len,
        compressed: header.rsv1,
    }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

fn close_code(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::Protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !sendable_close_code(code) {
                return Err(FrameError::Protocol(
                    "close code that may not be sent in a close frame",
                ));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(FrameError::InvalidUtf8);
            }
            Ok(Some(code))
        }
    }
}

/// Whether a peer may put `code` in a close frame (RFC 6455 §7.4 and the IANA
/// registry): 1000–1003 and 1007–1014 are defined, 3000–4999 are for
/// libraries and applications. 1004 is reserved, 1005, 1006 and 1015 must
/// never be sent, the rest of 0–2999 is unassigned and 5000+ out of range: a
/// close frame with one of those is a protocol error (answered with 1002).
pub fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_frame: 1024,
        max_message: 2048,
    };

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn decodes_a_text_frame_split_across_reads() {
        let bytes = client_frame(true, 1, b"hello");
        let mut d = Decoder::new(LIMITS);
        let mut buf = BytesMut::new();
        for b in &bytes[..bytes.len() - 1] {
            buf.put_u8(*b);
            assert_eq!(d.decode(&mut buf).unwrap(), None);
        }
        buf.put_u8(bytes[bytes.len() - 1]);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Incoming::Text(Bytes::from_static(b"hello")))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn reassembles_fragments_with_interleaved_ping() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&client_frame(false, 1, b"hel"));
        buf.extend_from_slice(&client_frame(true, 9, b"p"));
        buf.extend_from_slice(&client_frame(true, 0, b"lo"));
        let mut d = Decoder::new(LIMITS);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Incoming::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Incoming::Text(Bytes::from_static(b"hello")))
        );
    }

    #[test]
    fn rejects_oversized_frame_from_its_header_alone() {
        let bytes = client_frame(true, 1, &vec![b'a'; 5000]);
        let mut buf = BytesMut::from(&bytes[..20]);
        let err = Decoder::new(LIMITS).decode(&mut buf).unwrap_err();
        assert_eq!(err.close_code(), 1009);
    }

    #[test]
    fn rejects_oversized_message_across_fragments() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&client_frame(false, 1, &[b'a'; 1000]));
        buf.extend_from_slice(&client_frame(false, 0, &[b'a'; 1000]));
        buf.extend_from_slice(&client_frame(true, 0, &[b'a'; 1000]));
        let mut d = Decoder::new(LIMITS);
        assert_eq!(
            d.decode(&mut buf).unwrap_err(),
            FrameError::TooBig { limit: 2048 }
        );
    }

    #[test]
    fn protocol_violations_map_to_1002_and_bad_utf8_to_1007() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x00], 1002),            // unmasked
            (client_frame(true, 3, b""), 1002),  // reserved opcode
            (client_frame(true, 0, b"x"), 1002), // continuation without start
            (client_frame(false, 9, b""), 1002), // fragmented ping
            (client_frame(true, 1, &[0xff]), 1007),
            (vec![0xC1, 0x80, 0, 0, 0, 0], 1002), // RSV1
        ];
        for (bytes, code) in cases {
            let mut buf = BytesMut::from(&bytes[..]);
            let err = Decoder::new(LIMITS).decode(&mut buf).unwrap_err();
            assert_eq!(err.close_code(), code, "{bytes:?}");
        }
    }

    #[test]
    fn close_frame_carries_code() {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let mut buf = BytesMut::from(&client_frame(true, 8, &payload)[..]);
        assert_eq!(
            Decoder::new(LIMITS).decode(&mut buf).unwrap(),
            Some(Incoming::Close(Some(1000)))
        );
    }

    #[test]
    fn a_close_code_that_may_not_be_sent_is_a_protocol_error() {
        let decode = |code: u16| {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(b"bye");
            let mut buf = BytesMut::from(&client_frame(true, 8, &payload)[..]);
            Decoder::new(LIMITS).decode(&mut buf)
        };
        for code in [
            1000, 1001, 1002, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4000, 4999,
        ] {
            assert_eq!(
                decode(code),
                Ok(Some(Incoming::Close(Some(code)))),
                "{code}"
            );
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let err = decode(code).unwrap_err();
            assert_eq!(err.close_code(), 1002, "{code}");
        }
    }

    #[test]
    fn encodes_all_three_length_forms() {
        assert_eq!(&encode(OpCode::Text, b"hi")[..], &[0x81, 2, b'h', b'i']);
        let mid = encode(OpCode::Text, &[0u8; 300]);
        assert_eq!(&mid[..4], &[0x81, 126, 1, 44]);
        let big = encode(OpCode::Binary, &vec![0u8; 70_000]);
        assert_eq!(big[1], 127);
        assert_eq!(big.len(), 70_000 + 10);
        let c = close(4000, "slow consumer");
        assert_eq!(&c[..4], &[0x88, 15, 0x0f, 0xa0]);
    }

    #[test]
    fn masked_client_frames_decode_on_the_server_side() {
        let limits = DecodeLimits {
            max_frame: 100_000,
            max_message: 100_000,
        };
        for len in [0, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut buf = BytesMut::new();
            encode_masked_into(&mut buf, OpCode::Text, &payload, [0x12, 0x34, 0x56, 0x78]);
            assert_eq!(buf[1] & 0x80, 0x80, "{len}: mask bit");
            if len >= 4 {
                assert_ne!(&buf[buf.len() - len..], &payload[..], "{len}: masked");
            }
            let got = Decoder::new(limits).decode(&mut buf).unwrap();
            assert_eq!(got, Some(Incoming::Text(Bytes::from(payload))), "{len}");
            assert!(buf.is_empty());
        }
        let mut buf = BytesMut::new();
        encode_masked_into(&mut buf, OpCode::Pong, b"p", rand_mask());
        encode_masked_into(&mut buf, OpCode::Close, &1000u16.to_be_bytes(), rand_mask());
        let mut d = Decoder::new(limits);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Incoming::Pong(Bytes::from_static(b"p")))
        );
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Incoming::Close(Some(1000)))
        );
    }

    fn rand_mask() -> [u8; 4] {
        rand::random()
    }

    #[test]
    fn server_frames_are_found_in_place() {
        let mut buf = BytesMut::new();
        encode_into(&mut buf, OpCode::Text, b"abc");
        encode_into(&mut buf, OpCode::Ping, b"");
        encode_into(&mut buf, OpCode::Binary, &[7u8; 300]);
        encode_into(&mut buf, OpCode::Text, &vec![b'x'; 70_000]);
        let mut pos = 0;
        let mut seen = Vec::new();
        while let Some(f) = parse_server_frame(&buf[pos..], false).unwrap() {
            seen.push((f.fin, f.opcode, f.start, f.len));
            pos += f.start + f.len;
        }
        assert_eq!(pos, buf.len());
        assert_eq!(
            seen,
            [
                (true, OpCode::Text, 2, 3),
                (true, OpCode::Ping, 2, 0),
                (true, OpCode::Binary, 4, 300),
                (true, OpCode::Text, 10, 70_000),
            ]
        );
        // Every prefix of a frame waits for more.
        let whole = encode(OpCode::Text, &[b'y'; 200]);
        for cut in 0..whole.len() {
            assert_eq!(
                parse_server_frame(&whole[..cut], false).unwrap(),
                None,
                "{cut}"
            );
        }
        // A fragment is found as it is; reassembly is the caller's.
        let f = parse_server_frame(&[0x01, 1, b'h'], false)
            .unwrap()
            .unwrap();
        assert_eq!((f.fin, f.opcode), (false, OpCode::Text));
        let cases: [&[u8]; 3] = [
            &[0x81, 0x81, 1, 2, 3, 4, b'x'], // masked
            &[0xC1, 0],                      // RSV1 without an extension
            &[0x83, 0],                      // reserved opcode
        ];
        for bytes in cases {
            let err = parse_server_frame(bytes, false).unwrap_err();
            assert_eq!(err.close_code(), 1002, "{bytes:?}");
        }
        // Where the extension was negotiated, RSV1 marks a compressed message.
        let f = parse_server_frame(&[0xC1, 1, 0], true).unwrap().unwrap();
        assert!(f.compressed && f.fin);
        assert!(
            !parse_server_frame(&[0x81, 0], true)
                .unwrap()
                .unwrap()
                .compressed
        );
        assert!(parse_server_frame(&[0xC9, 0], true).is_err()); // RSV1 on a ping
    }

    #[test]
    fn compressed_messages_are_inflated_only_where_negotiated() {
        let json = br#"{"type":"subscribe","channel":"federation","filters":{"a":1}}"#.repeat(8);
        let deflated = crate::ws::deflate::compress(&json, 6);
        // RSV1 (0x40) on the first frame of a compressed text message.
        let mut frame = client_frame(true, 0x40 | 1, &deflated);
        let mut d = Decoder::new(LIMITS).with_deflate(true);
        let mut buf = BytesMut::from(&frame[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Incoming::Text(Bytes::from(json.clone())))
        );
        // Fragmented: RSV1 on the first frame only.
        let (a, b) = deflated.split_at(deflated.len() / 2);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&client_frame(false, 0x40 | 1, a));
        buf.extend_from_slice(&client_frame(true, 0, b));
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Incoming::Text(Bytes::from(json.clone())))
        );
        // Without the extension negotiated, RSV1 is a protocol error.
        let mut plain = Decoder::new(LIMITS);
        let mut buf = BytesMut::from(&frame[..]);
        assert_eq!(plain.decode(&mut buf).unwrap_err().close_code(), 1002);
        // RSV1 on a control frame, or a bomb beyond the message limit.
        let mut buf = BytesMut::from(&client_frame(true, 0x40 | 9, b"x")[..]);
        assert_eq!(d.decode(&mut buf).unwrap_err().close_code(), 1002);
        let bomb = crate::ws::deflate::compress(&vec![b'a'; 100_000], 9);
        frame = client_frame(true, 0x40 | 1, &bomb);
        let mut buf = BytesMut::from(&frame[..]);
        assert_eq!(d.decode(&mut buf).unwrap_err().close_code(), 1009);
        let mut buf = BytesMut::from(&client_frame(true, 0x40 | 1, &[0xff, 0x00, 0x12])[..]);
        assert!(d.decode(&mut buf).is_err());
    }

    #[test]
    fn a_compressed_server_frame_has_rsv1() {
        let f = encode_compressed(OpCode::Text, b"abc");
        assert_eq!(f[0], 0x80 | 0x40 | 0x1);
        assert_eq!(&f[2..], b"abc");
    }
}
