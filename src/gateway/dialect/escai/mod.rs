//! The ESCAI monitors' route `/ws/monitor/{session_id}` (seed 003).
//!
//! An ESCAI client subscribes to an event family of an agent
//! (`{"type":"subscribe","data":{"type":"epistemic_updates","agent_id":"a1","filters":{…}}}`).
//! On the core that is channel `agents:{agent_id}`, where producers publish
//! `{"type":"epistemic_update","data":{…}}`, with a filter that passes the
//! followed families' events whose `data` meets each family's conditions: one
//! core subscription per agent, its filter rebuilt (in place, in order with
//! deliveries) as families are added and removed. Every connection also
//! receives the channel `alerts` (system alerts) until it unsubscribes
//! `system_alerts`. Events go out in the ESCAI form the hub encodes once per
//! message per replica; subscribing needs `websocket:subscribe` and
//! `agent:{agent_id}:monitor` (or `websocket:admin`), as in the seed.

pub mod rest;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::Dialect;
use crate::auth::AuthKind;
use crate::channel::ChannelName;
use crate::filter::Filter;
use crate::gateway::core::{Core, Plan};
use crate::protocol::escai::{self, Code, Family, Request};
use crate::protocol::{CloseCode, ErrorCode};

/// The channel of system alerts every ESCAI connection receives.
pub const ALERTS_CHANNEL: &str = "alerts";

/// The channel of an agent's events.
pub fn agent_channel(agent: &str, max_len: usize) -> Option<ChannelName> {
    ChannelName::parse(&format!("agents:{agent}"), max_len).ok()
}

/// Live messages from now on: ESCAI has no replay.
const PLAN: Plan = Plan::Resume {
    since: None,
    snapshot: false,
};

/// An ESCAI connection's subscriptions.
pub(crate) struct EscaiDialect {
    session_id: String,
    /// Per agent, the families followed with the filters as the client wrote them.
    agents: BTreeMap<String, BTreeMap<Family, Option<Map<String, Value>>>>,
    /// Whether system alerts are delivered (until `unsubscribe system_alerts`).
    alerts: bool,
}

impl EscaiDialect {
    pub(crate) fn new(session_id: String) -> Self {
        Self {
            session_id,
            agents: BTreeMap::new(),
            alerts: false,
        }
    }

    fn send(core: &Core, code: Code, message: &str) {
        core.count_error(code.core());
        core.send_text(&escai::error(code, message));
    }

    /// The filter of one agent's subscription: any followed family, each with its conditions.
    fn agent_filter(
        families: &BTreeMap<Family, Option<Map<String, Value>>>,
        core: &Core,
    ) -> Result<Option<Arc<Filter>>, crate::filter::FilterError> {
        let limits = &core.gw.config.limits.filter;
        let mut clauses = Vec::with_capacity(families.len());
        for (family, spec) in families {
            let kind = Value::String(family.event_type().to_owned());
            let clause = match spec {
                Some(spec) => Filter::scoped(spec, &["data"], limits)?.and_equal("type", kind),
                None => Filter::equal("type", kind),
            };
            clauses.push(clause);
        }
        Ok(Filter::any_of(clauses).map(Arc::new))
    }

    /// Mirrors the subscriptions into the connection list (`/ws/connections`).
    fn publish_detail(&self, core: &Core) {
        let detail = json!({
            "session_id": self.session_id,
            "subscriptions": self.listing(),
        });
        if let Some(change) = core.gw.registry.set_detail(core.conn.id(), detail) {
            core.gw.presence.record(change);
        }
    }

    /// The subscriptions as the seed lists them: `{type, agent_id, filters}`.
    fn listing(&self) -> Vec<Value> {
        let mut list: Vec<Value> = self
            .agents
            .iter()
            .flat_map(|(agent, families)| {
                families.iter().map(move |(family, filters)| {
                    json!({"type": family.subscription_type(), "agent_id": agent, "filters": filters})
                })
            })
            .collect();
        if self.alerts {
            list.push(json!({"type": "system_alerts", "agent_id": null, "filters": null}));
        }
        list
    }

    async fn follow_alerts(&mut self, core: &mut Core) -> bool {
        let Ok(channel) = ChannelName::parse(ALERTS_CHANNEL, usize::MAX) else {
            return false;
        };
        if core.is_subscribed(&channel) {
            self.alerts = true;
            return true;
        }
        let mode = core.mode_with(None);
        match core.begin(channel, mode, PLAN).await {
            Ok(pending) => {
                core.go_live(pending).await;
                self.alerts = true;
                true
            }
            Err(refused) => {
                Self::send(core, Code::from_core(refused.code), &refused.message);
                false
            }
        }
    }

    async fn subscribe(
        &mut self,
        core: &mut Core,
        family: Family,
        agent_id: Option<String>,
        filters: Option<Map<String, Value>>,
    ) {
        if !core.identity.can_subscribe_any() {
            return Self::send(
                core,
                Code::PermissionDenied,
                "Insufficient permissions to subscribe",
            );
        }
        let Some(agent) = agent_id else {
            // System alerts: every connection has them unless it left them.
            let allowed = core.identity.auth_kind() != AuthKind::Anonymous
                || ChannelName::parse(ALERTS_CHANNEL, usize::MAX)
                    .is_ok_and(|c| core.identity.can_subscribe(&c));
            if !allowed {
                return Self::send(
                    core,
                    Code::PermissionDenied,
                    "system alerts need a token (\"alerts\" is not among the gateway's --anonymous-subscribe channels)",
                );
            }
            if self.alerts {
                return Self::send(
                    core,
                    Code::SubscriptionExists,
                    "Subscription already exists",
                );
            }
            if self.follow_alerts(core).await {
                core.send_text(&escai::subscription_confirmed(family, None, None));
                self.publish_detail(core);
            }
            return;
        };
        if !core.identity.can_monitor_agent(&agent) {
            return Self::send(
                core,
                Code::AgentAccessDenied,
                &format!("No permission to monitor agent {agent}"),
            );
        }
        let max_len = core.gw.config.limits.max_channel_len;
        let Some(channel) = agent_channel(&agent, max_len) else {
            return Self::send(
                core,
                Code::ValidationError,
                &format!(
                    "Invalid subscription request: agent_id {agent:?} is not a valid agent name (letters, digits, _ - . @, at most {max_len} bytes with \"agents:\")"
                ),
            );
        };
        let mut families = self.agents.get(&agent).cloned().unwrap_or_default();
        if families.contains_key(&family) {
            return Self::send(
                core,
                Code::SubscriptionExists,
                "Subscription already exists",
            );
        }
        families.insert(family, filters.clone());
        let filter = match Self::agent_filter(&families, core) {
            Ok(f) => f,
            Err(e) => {
                return Self::send(
                    core,
                    Code::ValidationError,
                    &format!("Invalid subscription request: {e}"),
                );
            }
        };
        let mode = core.mode_with(filter);
        if core.is_subscribed(&channel) {
            core.set_mode(&channel, mode).await;
        } else {
            if let Err(r) = core.room_for_one_more() {
                return Self::send(core, Code::from_core(r.code), &r.message);
            }
            match core.begin(channel, mode, PLAN).await {
                Ok(pending) => {
                    core.go_live(pending).await;
                }
                Err(r) => return Self::send(core, Code::from_core(r.code), &r.message),
            }
        }
        self.agents.insert(agent.clone(), families);
        core.send_text(&escai::subscription_confirmed(
            family,
            Some(&agent),
            filters.as_ref(),
        ));
        self.publish_detail(core);
    }

    async fn unsubscribe(&mut self, core: &mut Core, family: Family, agent_id: Option<String>) {
        let Some(agent) = agent_id else {
            if family == Family::SystemAlerts && self.alerts {
                if let Ok(channel) = ChannelName::parse(ALERTS_CHANNEL, usize::MAX) {
                    core.end_subscription(&channel).await;
                }
                self.alerts = false;
                core.send_text(&escai::unsubscription_confirmed(family, None));
                self.publish_detail(core);
            } else {
                Self::send(core, Code::SubscriptionNotFound, "Subscription not found");
            }
            return;
        };
        let Some(families) = self.agents.get_mut(&agent) else {
            return Self::send(core, Code::SubscriptionNotFound, "Subscription not found");
        };
        if families.remove(&family).is_none() {
            return Self::send(core, Code::SubscriptionNotFound, "Subscription not found");
        }
        let max_len = core.gw.config.limits.max_channel_len;
        if let Some(channel) = agent_channel(&agent, max_len) {
            if families.is_empty() {
                self.agents.remove(&agent);
                core.end_subscription(&channel).await;
            } else {
                // The remaining families compiled before: their filter still does.
                let filter = Self::agent_filter(families, core).ok().flatten();
                let mode = core.mode_with(filter);
                core.set_mode(&channel, mode).await;
            }
        }
        core.send_text(&escai::unsubscription_confirmed(family, Some(&agent)));
        self.publish_detail(core);
    }

    fn stats(&self, core: &Core) -> Value {
        let m = &core.gw.metrics;
        json!({
            "replica": core.gw.config.replica_id,
            "active_connections": m.route_connections("escai"),
            "total_connections_ever": m.route_connections_opened("escai"),
            "gateway_connections": core.gw.open_connections(),
            "max_connections": core.gw.config.limits.max_connections,
            "total_subscriptions": m.subscriptions.get(),
            "messages_sent": m.messages_out.get(),
            "messages_received": m.client_messages.get(),
        })
    }
}

impl Dialect for EscaiDialect {
    async fn open(&mut self, core: &mut Core) {
        let user = core
            .identity
            .user
            .clone()
            .unwrap_or_else(|| "anonymous".into());
        core.send_text(&escai::connection_established(escai::Established {
            connection_id: &core.connection_id,
            session_id: &self.session_id,
            user_id: &user,
            heartbeat_interval: core.gw.config.dialects.escai.ping_interval.as_secs(),
        }));
        // Alerts reach every connection admitted with a token; one without a
        // token only if `alerts` is among its --anonymous-subscribe channels.
        let alerts_allowed = core.identity.auth_kind() != AuthKind::Anonymous
            || ChannelName::parse(ALERTS_CHANNEL, usize::MAX)
                .is_ok_and(|c| core.identity.can_subscribe(&c));
        if alerts_allowed && !self.follow_alerts(core).await {
            tracing::warn!(connection = %core.connection_id, "could not subscribe system alerts; closing so the client retries");
            core.conn.close(CloseCode::TryAgainLater);
            return;
        }
        self.publish_detail(core);
    }

    async fn on_text(&mut self, core: &mut Core, text: Bytes) {
        if !core.admit() {
            return;
        }
        let request = match escai::parse(&text, core.gw.config.limits.max_json_depth) {
            Ok(r) => r,
            Err(e) => return Self::send(core, e.code, &e.message),
        };
        match request {
            Request::Subscribe {
                family,
                agent_id,
                filters,
            } => Box::pin(self.subscribe(core, family, agent_id, filters)).await,
            Request::Unsubscribe { family, agent_id } => {
                Box::pin(self.unsubscribe(core, family, agent_id)).await
            }
            Request::Ping => core.send_text(&escai::pong()),
            Request::Pong => core.conn.pong_received(),
            Request::GetSubscriptions => {
                core.send_text(&escai::subscriptions_list(self.listing()));
            }
            Request::GetStats => {
                if core.identity.is_admin() {
                    core.send_text(&escai::stats(self.stats(core)));
                } else {
                    core.count_error(ErrorCode::Forbidden);
                    core.send_text(&escai::error(
                        Code::PermissionDenied,
                        "Admin permission required",
                    ));
                }
            }
        }
    }

    /// The history was lost: ESCAI clients have no replay, so the
    /// subscription continues with the new history's live events.
    async fn resync(&mut self, core: &mut Core, channel: ChannelName) {
        let Some(start) = core.restart(&channel, &PLAN).await else {
            return;
        };
        core.release(&channel, start.live_after()).await;
    }
}
