//! switchboard: a horizontally scaled real-time gateway.
//!
//! `docs/ARCHITECTURE.md` maps these modules and the path a message takes
//! through them. In short: the [`engine`] (in-memory or Redis) carries channels,
//! history and snapshots; the [`hub`] fans each live message out to local
//! subscribers through fan-out shards that write shared [`ws`] frames; the
//! [`gateway`] terminates WebSockets and speaks the [`protocol`]; the
//! [`collector`] publishes the dashboard snapshots; [`admin`] serves metrics
//! and health on their own port; [`web`] serves the dashboard page and
//! [`client`] is the `tail` / `publish` command-line client; [`bench`] is the
//! load generator that measures all of it.

pub mod admin;
pub mod allocator;
pub mod app;
pub mod auth;
pub mod backoff;
pub mod bench;
pub mod channel;
pub mod cli;
pub mod client;
pub mod collector;
pub mod config;
pub mod engine;
pub mod filter;
pub mod gateway;
pub mod hub;
pub mod json;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod time;
pub mod web;
pub mod ws;
