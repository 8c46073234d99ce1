//! The reasoning section of the memory dashboard, from `reasoning_logs.db`
//! (seed 001): ingestion and consolidation rates, confidence deltas, and the
//! ingestion/consolidation events of the log.

use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row};

use super::formulas::{CONFIDENCE_DELTAS, confidence_deltas, per_second};
use super::schema::{REASONING_LOG_COLUMNS, column_or_null, missing_columns};
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
    /// Log-text columns the database lacks (`table.column`): the log lines
    /// leave them out; the numbers are unaffected.
    pub missing_columns: Vec<String>,
}

/// SQLite's `datetime()` modifier for "this long ago".
pub fn ago(window: Duration) -> String {
    format!("-{:.3} seconds", window.as_secs_f64())
}

/// `created_at` as RFC 3339 (UTC, seconds), or as stored if SQLite cannot read it.
pub const RFC3339: &str = "COALESCE(strftime('%Y-%m-%dT%H:%M:%SZ', created_at), created_at)";

/// A value as log text: numbers written out, empty text and blobs as absent.
pub fn text_of(row: &Row, i: usize) -> rusqlite::Result<Option<String>> {
    Ok(match row.get_ref(i)? {
        ValueRef::Null | ValueRef::Blob(_) => None,
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).trim().to_string()),
    }
    .filter(|t| !t.is_empty()))
}

/// A value as a number for log text, if it is one.
fn number_of(row: &Row, i: usize) -> rusqlite::Result<Option<f64>> {
    Ok(match row.get_ref(i)? {
        ValueRef::Integer(n) => Some(n as f64),
        ValueRef::Real(f) => Some(f),
        ValueRef::Text(t) => String::from_utf8_lossy(t).trim().parse().ok(),
        ValueRef::Null | ValueRef::Blob(_) => None,
    }
    .filter(|f: &f64| f.is_finite()))
}

/// `Ingested reasoning session <id> from <agent> (confidence 0.85)`, leaving out
/// what is unknown.
pub fn ingestion_message(
    session: Option<&str>,
    agent: Option<&str>,
    confidence: Option<f64>,
) -> String {
    let mut m = match session {
        Some(s) => format!("Ingested reasoning session {s}"),
        None => "Ingested a reasoning session".to_string(),
    };
    if let Some(a) = agent {
        m.push_str(&format!(" from {a}"));
    }
    if let Some(c) = confidence {
        m.push_str(&format!(" (confidence {c:.2})"));
    }
    m
}

/// `Consolidated stage <name> of session <id> (confidence 0.82)`, leaving out
/// what is unknown.
pub fn consolidation_message(
    stage: Option<&str>,
    session: Option<&str>,
    confidence: Option<f64>,
) -> String {
    let mut m = match stage {
        Some(s) => format!("Consolidated stage {s}"),
        None => "Consolidated a stage".to_string(),
    };
    if let Some(s) = session {
        m.push_str(&format!(" of session {s}"));
    }
    if let Some(c) = confidence {
        m.push_str(&format!(" (confidence {c:.2})"));
    }
    m
}

/// Runs the reasoning queries (inside the caller's read transaction).
pub fn query(conn: &Connection, p: &ReasoningParams) -> rusqlite::Result<ReasoningValues> {
    let missing = missing_columns(conn, REASONING_LOG_COLUMNS)?;
    let sessions_col = |c| column_or_null(&missing, "reasoning_sessions", c);
    let stages_col = |c| column_or_null(&missing, "reasoning_stages", c);
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
        "SELECT {}, {}, {}, {RFC3339}
         FROM reasoning_sessions ORDER BY created_at DESC, rowid DESC LIMIT ?1",
        sessions_col("session_id"),
        sessions_col("agent_name"),
        sessions_col("overall_confidence"),
    ))?;
    let rows = stmt.query_map([LOG_EVENTS as i64], |r| {
        let session = text_of(r, 0)?;
        let agent = text_of(r, 1)?;
        let confidence = number_of(r, 2)?;
        let at: String = r.get(3)?;
        Ok(LogEvent {
            timestamp: at,
            kind: "ingestion".into(),
            message: ingestion_message(session.as_deref(), agent.as_deref(), confidence),
            severity: "info".into(),
        })
    })?;
    for row in rows {
        logs.push(row?);
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT {}, {}, confidence, {RFC3339}
         FROM reasoning_stages WHERE confidence >= ?1
         ORDER BY created_at DESC, rowid DESC LIMIT ?2",
        stages_col("session_id"),
        stages_col("stage_name"),
    ))?;
    let rows = stmt.query_map(rusqlite::params![p.threshold, LOG_EVENTS as i64], |r| {
        let session = text_of(r, 0)?;
        let stage = text_of(r, 1)?;
        let confidence = number_of(r, 2)?;
        let at: String = r.get(3)?;
        Ok(LogEvent {
            timestamp: at,
            kind: "consolidation".into(),
            message: consolidation_message(stage.as_deref(), session.as_deref(), confidence),
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
        missing_columns: missing,
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
        assert!(v.missing_columns.is_empty());
    }

    #[test]
    fn log_text_leaves_out_what_is_unknown() {
        assert_eq!(
            ingestion_message(Some("s1"), Some("kyle"), Some(0.851)),
            "Ingested reasoning session s1 from kyle (confidence 0.85)"
        );
        assert_eq!(
            ingestion_message(None, Some("kyle"), None),
            "Ingested a reasoning session from kyle"
        );
        assert_eq!(
            ingestion_message(Some("s1"), None, Some(0.5)),
            "Ingested reasoning session s1 (confidence 0.50)"
        );
        assert_eq!(
            consolidation_message(None, Some("s1"), Some(0.82)),
            "Consolidated a stage of session s1 (confidence 0.82)"
        );
        assert_eq!(
            consolidation_message(Some("analysis"), None, Some(0.82)),
            "Consolidated stage analysis (confidence 0.82)"
        );
    }

    #[test]
    fn without_log_columns_the_numbers_stay_and_the_log_degrades() {
        let conn = Connection::open_in_memory().unwrap();
        // Only what the numbers need; a NULL and a number where text is expected.
        conn.execute_batch(
            "CREATE TABLE reasoning_sessions (agent_name TEXT, created_at TEXT);
             CREATE TABLE reasoning_stages (confidence REAL, created_at TEXT);
             INSERT INTO reasoning_sessions VALUES (NULL, datetime('now', '-5 seconds'));
             INSERT INTO reasoning_sessions VALUES (42, datetime('now', '-4 seconds'));
             INSERT INTO reasoning_stages VALUES (0.9, datetime('now', '-3 seconds'));
             INSERT INTO reasoning_stages VALUES (0.6, datetime('now', '-2 seconds'));",
        )
        .unwrap();
        let v = query(
            &conn,
            &ReasoningParams {
                window: Duration::from_secs(60),
                threshold: 0.7,
            },
        )
        .unwrap();
        assert_eq!(v.ingestion_rate, per_second(2, Duration::from_secs(60)));
        assert_eq!(v.consolidation_rate, per_second(1, Duration::from_secs(60)));
        assert_eq!(v.confidence_deltas, vec![-0.3]);
        assert_eq!(
            v.missing_columns,
            [
                "reasoning_sessions.session_id",
                "reasoning_sessions.overall_confidence",
                "reasoning_stages.session_id",
                "reasoning_stages.stage_name"
            ]
        );
        let messages: Vec<&str> = v.logs.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "Ingested a reasoning session",
                "Ingested a reasoning session from 42",
                "Consolidated a stage (confidence 0.90)"
            ]
        );
    }
}
