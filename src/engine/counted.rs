//! Failed Redis commands, counted at the one door every command goes through.
//!
//! The engine, sessions, presence and the collector's lease get their command
//! connections from [`RedisEngine::connection`](super::redis::RedisEngine::connection)
//! and send batches through [`RedisEngine::run_batch`](super::redis::RedisEngine::run_batch),
//! each naming what the commands are for ([`RedisOp`]). [`Counted`] wraps such
//! a connection and counts, in `switchboard_redis_errors_total{op}`, every
//! command or pipeline on it that fails: a transport error, a timeout, or an
//! error reply. `NOSCRIPT` is not a failure: the script helpers answer it by
//! sending the script. A connection that cannot be had at all counts too
//! ([`count`]).

use std::sync::Arc;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, RedisFuture, RedisResult, ServerErrorKind, Value};

use super::connection::RedisConnection;
use crate::metrics::{EngineMetrics, RedisOp};

/// A command connection whose failures are counted under one `op`.
pub struct Counted {
    inner: RedisConnection,
    op: RedisOp,
    metrics: Arc<EngineMetrics>,
}

impl Counted {
    pub fn new(inner: RedisConnection, op: RedisOp, metrics: Arc<EngineMetrics>) -> Self {
        Self { inner, op, metrics }
    }
}

/// Counts one failed operation and hands the error back (for `map_err`).
pub fn count<E>(metrics: &EngineMetrics, op: RedisOp) -> impl FnOnce(E) -> E + '_ {
    move |e| {
        metrics.redis_errors.inc(op);
        e
    }
}

fn is_noscript_reply(value: &Value) -> bool {
    matches!(value, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
}

/// Did this reply fail (other than with `NOSCRIPT`)?
fn failed(reply: &RedisResult<Value>) -> bool {
    match reply {
        Err(e) => e.kind() != ErrorKind::Server(ServerErrorKind::NoScript),
        Ok(v @ Value::ServerError(_)) => !is_noscript_reply(v),
        Ok(_) => false,
    }
}

/// Did this pipeline fail, or any of its commands (other than with `NOSCRIPT`)?
fn pipeline_failed(reply: &RedisResult<Vec<Value>>) -> bool {
    match reply {
        Err(e) => e.kind() != ErrorKind::Server(ServerErrorKind::NoScript),
        Ok(values) => values
            .iter()
            .any(|v| matches!(v, Value::ServerError(_)) && !is_noscript_reply(v)),
    }
}

impl ConnectionLike for Counted {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let Self { inner, op, metrics } = self;
        let reply = inner.req_packed_command(cmd);
        Box::pin(async move {
            let reply = reply.await;
            if failed(&reply) {
                metrics.redis_errors.inc(*op);
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let Self { inner, op, metrics } = self;
        let reply = inner.req_packed_commands(cmd, offset, count);
        Box::pin(async move {
            let reply = reply.await;
            if pipeline_failed(&reply) {
                metrics.redis_errors.inc(*op);
            }
            reply
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}
