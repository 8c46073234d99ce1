//! The reasoning section of the memory dashboard, from `reasoning_logs.db`
//! (seed 001): ingestion and consolidation rates, confidence deltas, and the
//! ingestion/consolidation events of the log.

use std::time::Duration;

use rusqlite::Connection;

use super::formulas::{CONFIDENCE_DELTAS, confidence_deltas, per_second};
use super::snapshot::LogEvent;

/// Log events each section contributes (seed 000 shows a 10-event log).
pub const LOG_EVENTS: usize = 10;

/// Parameters of the reasoning queries.
#[derive(Debug, Clone, Copy)]
pub struct ReasoningParams {
    /// Rates count rows newer than this (seed 001: one minute).
    pub window: Duration,
    /// A stage at or above this confidence is consolidated (seed 001: 0.7).
    pub threshold: f64,
}

/// What the reasoning section shows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReasoningValues {
    pub ingestion_rate: f64,
    pub consolidation_rate: f64,
    pub confidence_deltas: Vec<f64>,
    /// Newest last.
    pub logs: Vec<LogEvent>,
}

/// SQLite's `datetime()` modifier for "this long ago".
pub fn ago(window: Duration) -> String {
    format!("-{:.3} seconds", window.as_secs_f64())
}

/// `created_at` as RFC 3339 (UTC, seconds), or as stored if SQLite cannot read it.
pub const RFC3339: &str = "COALESCE(strftime('%Y-%m-%dT%H:%M:%SZ', created_at), created_at)";

/// Runs the reasoning queries (inside the caller's read transaction).
pub fn query(conn: &Connection, p: &ReasoningParams) -> rusqlite::Result<ReasoningValues> {
    let since = ago(p.window);
    let sessions: i64 = conn.query_row(
        "SELECT COUNT(*) FROM reasoning_sessions WHERE created_at > datetime('now', ?1)",
        [&since],
        |r| r.get(0),
    )?;
    let consolidated: i64 = conn.query_row(
        "SELECT COUNT(*) FROM reasoning_stages
         WHERE created_at > datetime('now', ?1) AND confidence >= ?2",
        rusqlite::params![since, p.threshold],
        |r| r.get(0),
    )?;
    let mut stmt = conn.prepare(
        "SELECT confidence FROM reasoning_stages WHERE confidence IS NOT NULL
         ORDER BY created_at DESC, rowid DESC LIMIT ?1",
    )?;
    let confidences = stmt
        .query_map([CONFIDENCE_DELTAS as i64 + 1], |r| r.get::<_, f64>(0))?
        .collect::<Result<Vec<_>, _>>()?;

    let mut logs = Vec::new();
    let mut stmt = conn.prepare(&format!(
        "SELECT session_id, agent_name, overall_confidence, {RFC3339}
         FROM reasoning_sessions ORDER BY created_at DESC, rowid DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([LOG_EVENTS as i64], |r| {
        let session: String = r.get(0)?;
        let agent: String = r.get(1)?;
        let confidence: Option<f64> = r.get(2)?;
        let at: String = r.get(3)?;
        Ok(LogEvent {
            timestamp: at,
            kind: "ingestion".into(),
            message: match confidence {
                Some(c) => {
                    format!("Ingested reasoning session {session} from {agent} (confidence {c:.2})")
                }
                None => format!("Ingested reasoning session {session} from {agent}"),
            },
            severity: "info".into(),
        })
    })?;
    for row in rows {
        logs.push(row?);
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT session_id, stage_name, confidence, {RFC3339}
         FROM reasoning_stages WHERE confidence >= ?1
         ORDER BY created_at DESC, rowid DESC LIMIT ?2"
    ))?;
    let rows = stmt.query_map(rusqlite::params![p.threshold, LOG_EVENTS as i64], |r| {
        let session: String = r.get(0)?;
        let stage: String = r.get(1)?;
        let confidence: f64 = r.get(2)?;
        let at: String = r.get(3)?;
        Ok(LogEvent {
            timestamp: at,
            kind: "consolidation".into(),
            message: format!(
                "Consolidated stage {stage} of session {session} (confidence {confidence:.2})"
            ),
            severity: "info".into(),
        })
    })?;
    for row in rows {
        logs.push(row?);
    }
    Ok(ReasoningValues {
        ingestion_rate: per_second(sessions.max(0) as u64, p.window),
        consolidation_rate: per_second(consolidated.max(0) as u64, p.window),
        confidence_deltas: confidence_deltas(&confidences),
        logs: newest(logs, LOG_EVENTS),
    })
}

/// The `n` newest events (by timestamp text, RFC 3339 UTC sorts by time), newest last.
pub fn newest(mut logs: Vec<LogEvent>, n: usize) -> Vec<LogEvent> {
    logs.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
    let skip = logs.len().saturating_sub(n);
    logs.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::schema::REASONING_DDL;

    #[test]
    fn reasoning_numbers_by_hand() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(REASONING_DDL).unwrap();
        // 6 sessions in the last minute, 2 older.
        for (i, ago) in [5, 10, 15, 20, 25, 30, 300, 600].iter().enumerate() {
            conn.execute(
                "INSERT INTO reasoning_sessions (session_id, agent_name, query, overall_confidence, created_at)
                 VALUES (?1, 'kyle', 'q', 0.85, datetime('now', ?2))",
                rusqlite::params![format!("s{i}"), format!("-{ago} seconds")],
            )
            .unwrap();
        }
        // Stages, oldest first: confidences 0.5, 0.75, 0.9 (recent), 0.95 (old).
        for (conf, ago) in [(0.95, 600), (0.5, 20), (0.75, 10), (0.9, 5)] {
            conn.execute(
                "INSERT INTO reasoning_stages (session_id, stage_name, confidence, created_at)
                 VALUES ('s0', 'analysis', ?1, datetime('now', ?2))",
                rusqlite::params![conf, format!("-{ago} seconds")],
            )
            .unwrap();
        }
        let v = query(
            &conn,
            &ReasoningParams {
                window: Duration::from_secs(60),
                threshold: 0.7,
            },
        )
        .unwrap();
        // 6 / 60 = 0.1 per second; 2 recent stages ≥ 0.7 → 2 / 60 = 0.0333 → 0.03.
        assert_eq!(v.ingestion_rate, 0.1);
        assert_eq!(v.consolidation_rate, 0.03);
        // Chronological 0.95, 0.5, 0.75, 0.9 → −0.45, 0.25, 0.15.
        assert_eq!(v.confidence_deltas, vec![-0.45, 0.25, 0.15]);
        assert_eq!(v.logs.len(), LOG_EVENTS);
        assert!(v.logs.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
        let last = v.logs.last().unwrap();
        assert!(last.timestamp.ends_with('Z') && last.timestamp.contains('T'));
    }
}
