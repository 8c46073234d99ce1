//! The validated plan of one benchmark run: built once from the command line,
//! and sent as JSON to each worker process of a multi-process run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How clients talk to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// `/ws`: the native protocol (`subscribe`, then `message` frames with offsets).
    Native,
    /// `/api/ws/{channel}`: the relay route (each message exactly as published).
    Relay,
    /// The URL exactly as given, nothing sent after the handshake: any server that
    /// relays a Redis channel as is (the floor and peers of the benchmark kit).
    Raw,
}

/// How messages are published into Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PublisherKind {
    #[default]
    /// switchboard's publish script through the Redis engine: offset, history and
    /// PUBLISH in one atomic step, as the publish API and the collector do.
    Script,
    /// A plain `PUBLISH` of the JSON (no offset, no history), as a producer that
    /// bypasses switchboard would, and as the benchmark kit's `wsfan` does.
    Plain,
}

/// How lost and duplicated messages are recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossBasis {
    /// The native protocol's offsets, counted from the offset in `subscribed`.
    Offset,
    /// The publisher's per-channel sequence number inside `data`.
    Seq,
}

/// How long the measured part of a run lasts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Length {
    Messages(u64),
    Duration(Duration),
}

/// One server to connect clients to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    pub addr: SocketAddr,
    /// `host[:port]` for the `Host` header.
    pub host: String,
    /// The URL's path (without a trailing `/`), or `/` for the raw route.
    pub path: String,
}

/// Everything a run needs (`cli.rs` builds it from `switchboard bench`'s flags,
/// named here in parentheses).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Name of the run in the report (`--label`).
    pub label: Option<String>,
    /// Servers to spread clients over, round-robin (`--url`).
    pub targets: Vec<Target>,
    /// How clients talk to the servers (`--route`).
    pub route: Route,
    /// WebSocket clients to open (`--clients`).
    pub clients: usize,
    /// Channels; client k subscribes to channel k mod `channels` (`--channels`).
    pub channels: usize,
    /// The channel's name with one channel, else the prefix of `PREFIX-i`
    /// (`--channel-prefix`).
    pub channel_prefix: String,
    /// The channels by name, instead of the prefix (`--channel-names`): as many
    /// as `channels`, or none.
    pub channel_names: Vec<String>,
    /// Messages per second over all channels; 0 holds the clients idle (`--rate`).
    pub rate: f64,
    /// Measured messages, or the measured run's length (`--messages`, `--duration`).
    pub length: Length,
    /// Publishing before the measured run (`--warmup`).
    pub warmup: Duration,
    /// Longest wait after the last publish for every delivery (`--drain`).
    pub drain: Duration,
    /// Pause after the last client connected, before publishing (`--settle`).
    pub settle: Duration,
    /// How messages are published (`--publisher`).
    pub publisher: PublisherKind,
    /// The Redis the publisher writes to (`--redis-url`).
    pub redis_url: String,
    /// Trust for a `rediss://` `redis_url` (the publisher runs in the main
    /// process; workers get none).
    #[serde(skip)]
    pub redis_tls: Option<crate::engine::tls::RedisTls>,
    /// The servers' Redis key prefix (`--redis-prefix`).
    pub redis_prefix: String,
    /// Exact pub/sub channel for the plain publisher with one channel (`--pubsub-name`).
    pub pubsub_name: Option<String>,
    /// Size of each message's `data`, in bytes (`--payload-bytes`).
    pub payload_bytes: usize,
    /// Source addresses of client connections, round-robin (`--src-ips`).
    pub src_ips: Vec<IpAddr>,
    /// New connections per second; 0 = as fast as `connect_concurrency` allows.
    pub connect_rate: f64,
    /// Connections being opened at once (`--connect-concurrency`).
    pub connect_concurrency: usize,
    /// Longest a client may take to connect and subscribe (`--connect-timeout`).
    pub connect_timeout: Duration,
    /// Publishes awaiting Redis's reply at once (`--max-in-flight`).
    pub max_in_flight: usize,
    /// Server processes whose CPU and memory are reported (`--server-pid`).
    pub server_pids: Vec<u32>,
    /// Client processes (`--workers`).
    pub workers: usize,
    /// Bearer token sent with every upgrade (`--token`).
    pub token: Option<String>,
    /// Offer permessage-deflate in every upgrade (`--compression`).
    pub compression: bool,
    /// Subscribe with `"delta": "fossil"` (native route; `--delta`).
    pub delta: bool,
}

/// Why the command line does not describe a runnable plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("bad --url {url:?}: {why}")]
    Url { url: String, why: String },
    #[error(
        "bad --src-ips {0:?}: expected addresses or ranges such as 127.0.0.1-127.0.0.20,127.0.1.1"
    )]
    SrcIps(String),
    #[error("{0}")]
    Invalid(String),
}

impl Plan {
    /// The name of channel `i`: the prefix itself when there is one channel.
    pub fn channel_name(&self, i: usize) -> String {
        if let Some(name) = self.channel_names.get(i) {
            name.clone()
        } else if self.channels == 1 {
            self.channel_prefix.clone()
        } else {
            format!("{}-{i}", self.channel_prefix)
        }
    }

    /// Channel index of client `k`.
    pub fn channel_of(&self, client: usize) -> usize {
        client % self.channels
    }

    /// How this run recognises losses and duplicates.
    pub fn loss_basis(&self) -> LossBasis {
        if self.route == Route::Native && self.publisher == PublisherKind::Script {
            LossBasis::Offset
        } else {
            LossBasis::Seq
        }
    }

    /// The Redis pub/sub name of channel `i` (for the plain publisher).
    pub fn pubsub_channel(&self, i: usize) -> String {
        match &self.pubsub_name {
            Some(name) => name.clone(),
            None => format!("{}{{{}}}", self.redis_prefix, self.channel_name(i)),
        }
    }

    /// The request path of client `k`.
    pub fn path_of(&self, target: &Target, client: usize) -> String {
        match self.route {
            Route::Native => format!("{}/ws", target.path),
            Route::Relay => format!(
                "{}/api/ws/{}",
                target.path,
                self.channel_name(self.channel_of(client))
            ),
            Route::Raw => target.path.clone(),
        }
    }

    /// Checks the combination of settings.
    pub fn validate(&self) -> Result<(), PlanError> {
        let invalid = |s: &str| Err(PlanError::Invalid(s.into()));
        if self.targets.is_empty() {
            return invalid("give at least one --url");
        }
        if self.clients == 0 {
            return invalid("--clients must be at least 1");
        }
        if self.channels == 0 || self.channels > self.clients {
            return invalid("--channels must be between 1 and --clients");
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return invalid("--rate must be a number of messages per second, 0 or more");
        }
        if self.rate == 0.0 && matches!(self.length, Length::Messages(_)) {
            return invalid(
                "--messages needs a --rate above 0 (use --duration to hold clients idle)",
            );
        }
        if self.pubsub_name.is_some()
            && (self.publisher != PublisherKind::Plain || self.channels != 1)
        {
            return invalid("--pubsub-name needs --publisher plain and --channels 1");
        }
        if self.workers == 0 || self.workers > self.clients {
            return invalid("--workers must be between 1 and --clients");
        }
        if self.connect_concurrency == 0 || self.max_in_flight == 0 {
            return invalid("--connect-concurrency and --max-in-flight must be at least 1");
        }
        if !(self.connect_rate >= 0.0 && self.connect_rate.is_finite()) {
            return invalid("--connect-rate must be 0 (unlimited) or a positive number");
        }
        if !self.channel_names.is_empty() && self.channel_names.len() != self.channels {
            return invalid("--channel-names gives the channels: leave --channels out");
        }
        if self.delta && self.route != Route::Native {
            return invalid("--delta needs --route native (deltas are a native subscription's)");
        }
        let checked: Vec<usize> = if self.channel_names.is_empty() {
            vec![0, self.channels - 1]
        } else {
            (0..self.channels).collect()
        };
        for i in checked {
            crate::channel::ChannelName::parse(
                &self.channel_name(i),
                crate::channel::DEFAULT_MAX_CHANNEL_LEN,
            )
            .map_err(|e| {
                PlanError::Invalid(format!("bad --channel-prefix or --channel-names: {e}"))
            })?;
        }
        Ok(())
    }
}

/// Parses `ws://host:port[/path]`; `http://` is the same gateway (as `tail`
/// and `publish` name it, so `SWITCHBOARD_URL` serves all three).
pub fn parse_target(url: &str, route: Route) -> Result<Target, PlanError> {
    let err = |why: &str| PlanError::Url {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| {
            err("only ws:// (or http://) URLs are supported (terminate TLS elsewhere)")
        })?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err(err("no host"));
    }
    let with_port = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| err(&e.to_string()))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| err("the host has no IPv4 address"))?;
    let path = match route {
        Route::Raw if path.is_empty() => "/".to_owned(),
        Route::Raw => path.to_owned(),
        _ => path.trim_end_matches('/').to_owned(),
    };
    Ok(Target {
        url: url.to_owned(),
        addr,
        host: host.to_owned(),
        path,
    })
}

/// Parses `127.0.0.1-127.0.0.20,127.0.1.1`: addresses and inclusive IPv4 ranges.
pub fn parse_src_ips(s: &str) -> Result<Vec<IpAddr>, PlanError> {
    let bad = || PlanError::SrcIps(s.to_owned());
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            None => out.push(part.parse::<IpAddr>().map_err(|_| bad())?),
            Some((a, b)) => {
                let a: u32 = a.trim().parse::<Ipv4Addr>().map_err(|_| bad())?.into();
                let b: u32 = b.trim().parse::<Ipv4Addr>().map_err(|_| bad())?.into();
                if b < a || b - a > 65_535 {
                    return Err(bad());
                }
                out.extend((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
            }
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn src_ip_ranges_and_lists() {
        let ips = parse_src_ips("127.0.0.1-127.0.0.3, 127.0.1.1").unwrap();
        assert_eq!(ips.len(), 4);
        assert_eq!(ips[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(ips[3], "127.0.1.1".parse::<IpAddr>().unwrap());
        assert!(parse_src_ips("127.0.0.5-127.0.0.1").is_err());
        assert!(parse_src_ips("nope").is_err());
        assert!(parse_src_ips("").is_err());
    }

    #[test]
    fn targets_keep_host_and_path() {
        let t = parse_target("ws://127.0.0.1:8080", Route::Native).unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "");
        let t = parse_target("ws://127.0.0.1:9/sb/", Route::Relay).unwrap();
        assert_eq!(t.path, "/sb");
        let t = parse_target("ws://127.0.0.1:9/ws?channel=x", Route::Raw).unwrap();
        assert_eq!(t.path, "/ws?channel=x");
        let t = parse_target("http://127.0.0.1:9/sb", Route::Native).unwrap();
        assert_eq!(
            (t.addr, t.path.as_str()),
            ("127.0.0.1:9".parse().unwrap(), "/sb")
        );
        assert!(parse_target("https://127.0.0.1:9", Route::Raw).is_err());
        assert!(parse_target("wss://127.0.0.1:9", Route::Raw).is_err());
    }
}
