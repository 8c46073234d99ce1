//! Request bodies of the REST endpoints, bounded without breaking the
//! connection: a body over the endpoint's limit is read and thrown away (up to
//! `--discard-body-bytes`) before the 413 goes out. Answering before the body
//! is read would close the socket with the body unread, which resets the
//! connection: a proxy in front (nginx) then loses the answer and reports 502.
//! A body larger than the discard bound still gets 413 at once, and the
//! connection is closed.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::{Filter, Rejection};

/// The body was over the endpoint's limit (and was read and discarded).
#[derive(Debug)]
pub struct BodyTooLarge;

impl warp::reject::Reject for BodyTooLarge {}

/// The body could not be read (the client went away, or sent less than it
/// announced).
#[derive(Debug)]
pub struct BodyUnreadable;

impl warp::reject::Reject for BodyUnreadable {}

/// The request body, at most `limit` bytes; a `Content-Length` is required
/// (411 without). Over `limit`, up to `discard` bytes are read and dropped
/// before the rejection ([`BodyTooLarge`], answered 413); over `discard` too,
/// warp's own 413 comes at once.
pub fn bounded(
    limit: u64,
    discard: u64,
) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::body::content_length_limit(limit.max(discard))
        .and(warp::header::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(move |length: u64, body| async move {
            if length <= limit {
                collect(body, length).await
            } else {
                discard_all(body).await;
                Err(warp::reject::custom(BodyTooLarge))
            }
        })
}

async fn collect<S, B>(body: S, length: u64) -> Result<Bytes, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    // `length` is at most the endpoint's limit, already checked.
    let mut out = BytesMut::with_capacity(length as usize);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| warp::reject::custom(BodyUnreadable))?;
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(out.freeze())
}

/// Reads the body to its end (its length was bounded by `Content-Length`,
/// which hyper enforces), keeping nothing.
async fn discard_all<S, B>(body: S)
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        if chunk.is_err() {
            return;
        }
    }
}
