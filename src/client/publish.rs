//! `switchboard publish CHANNEL [JSON | -]`: publishes through a gateway's
//! `POST /api/v1/publish`, one message from the command line or one per line of
//! standard input, in order, over one kept-alive connection. A gateway that
//! cannot be reached is skipped for the next `--url`; any refusal stops with
//! one line saying why (nothing is retried that might publish twice).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::{ClientConfig, ClientError, Target, error_chain, refusal_of};
use crate::channel::{ChannelName, DEFAULT_MAX_CHANNEL_LEN};

/// Largest answer read from the gateway.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// What `switchboard publish` publishes, where, and how.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    /// The channel to publish on.
    pub channel: String,
    /// The message, a JSON value; `None`: one message per non-empty line of
    /// standard input, in order.
    pub data: Option<String>,
    /// The gateways and the token.
    pub client: ClientConfig,
    /// Also store each message as the channel's snapshot.
    pub snapshot: bool,
    /// Print nothing on success (else the gateway's answer per message).
    pub quiet: bool,
    /// Limit on one publish request, from connecting to the answer.
    pub timeout: Duration,
    /// Longest line read from standard input, in bytes.
    pub max_line_bytes: usize,
}

struct Publisher {
    client: Client<HttpConnector, Full<Bytes>>,
    targets: Vec<Target>,
    /// The target that answered last (tried first).
    current: usize,
    token: Option<String>,
    channel: String,
    snapshot: bool,
    timeout: Duration,
}

/// Runs `switchboard publish`.
pub async fn run(config: PublishConfig, shutdown: CancellationToken) -> Result<(), ClientError> {
    let targets = Target::parse_all(&config.client.urls)?;
    let channel = ChannelName::parse(&config.channel, DEFAULT_MAX_CHANNEL_LEN)
        .map_err(|e| ClientError::Usage(format!("bad channel {:?}: {e}", config.channel)))?;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.client.connect_timeout));
    connector.set_nodelay(true);
    let mut publisher = Publisher {
        client: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(connector),
        targets,
        current: 0,
        token: config.client.token.clone().filter(|t| !t.is_empty()),
        channel: channel.as_str().to_string(),
        snapshot: config.snapshot,
        timeout: config.timeout,
    };
    if let Some(data) = &config.data {
        let data = parse_data(data).map_err(|e| {
            ClientError::Usage(format!(
                "the message is not JSON ({e}); a string needs quotes: '\"text\"'"
            ))
        })?;
        let answer = publisher.publish(data.get()).await?;
        if !config.quiet {
            println!("{answer}");
        }
        return Ok(());
    }
    let mut lines = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let (mut number, mut published) = (0u64, 0u64);
    loop {
        line.clear();
        let mut limited = (&mut lines).take(config.max_line_bytes as u64 + 1);
        let read = tokio::select! {
            _ = shutdown.cancelled() => break,
            read = limited.read_until(b'\n', &mut line) => read,
        };
        let n = read.map_err(|e| ClientError::Io(format!("reading standard input: {e}")))?;
        if n == 0 {
            break;
        }
        number += 1;
        if line.len() > config.max_line_bytes && line.last() != Some(&b'\n') {
            return Err(ClientError::Usage(format!(
                "line {number} is longer than --max-line-bytes ({}); {published} messages published before it",
                config.max_line_bytes
            )));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let data = parse_data(text).map_err(|e| {
            ClientError::Usage(format!(
                "line {number} is not JSON ({e}); {published} messages published before it"
            ))
        })?;
        let answer = publisher.publish(data.get()).await.map_err(|e| match e {
            ClientError::Refused { .. } | ClientError::Unreachable { .. } => ClientError::Io(
                format!("line {number}: {e}; {published} messages published before it"),
            ),
            other => other,
        })?;
        published += 1;
        if !config.quiet {
            println!("{answer}");
        }
    }
    Ok(())
}

fn parse_data(text: &str) -> Result<Box<RawValue>, serde_json::Error> {
    serde_json::from_str::<Box<RawValue>>(text)
}

impl Publisher {
    /// Publishes one message; returns the gateway's answer.
    async fn publish(&mut self, data: &str) -> Result<String, ClientError> {
        let channel = serde_json::to_string(&self.channel).unwrap_or_default();
        let body = Bytes::from(format!(
            "{{\"channel\":{channel},\"data\":{data},\"snapshot\":{}}}",
            self.snapshot
        ));
        let mut reasons = Vec::new();
        for i in 0..self.targets.len() {
            let index = (self.current + i) % self.targets.len();
            let target = self.targets[index].clone();
            match self.send(&target, body.clone()).await {
                Ok(answer) => {
                    self.current = index;
                    return Ok(answer);
                }
                Err(Attempt::Unreachable(why)) => reasons.push(format!("{target}: {why}")),
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        Err(ClientError::Unreachable {
            reasons: reasons.join("; "),
        })
    }

    async fn send(&self, target: &Target, body: Bytes) -> Result<String, Attempt> {
        let mut request = http::Request::post(target.http("/api/v1/publish"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, body.len());
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| Attempt::Failed(ClientError::Usage(format!("{target}: {e}"))))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    Attempt::Unreachable(error_chain(&e))
                } else {
                    Attempt::Failed(ClientError::Io(format!(
                        "{target}: the publish request failed ({}); it may or may not have been published",
                        error_chain(&e)
                    )))
                }
            })?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                Attempt::Failed(ClientError::Io(format!(
                    "{target}: no answer within --timeout {:?}; the message may or may not have been published",
                    self.timeout
                )))
            })??;
        if status == 200 {
            return Ok(String::from_utf8_lossy(&body).trim().to_string());
        }
        let (code, message) = refusal_of(&body);
        Err(Attempt::Failed(ClientError::refused(
            target,
            "the publish",
            status,
            &code,
            &message,
        )))
    }
}

enum Attempt {
    /// Nothing was sent: try another gateway.
    Unreachable(String),
    Failed(ClientError),
}
