//! The ark section of the memory dashboard, from `ark.db` (seed 001):
//! deduplication efficiency, quarantine count, trust distribution, and the
//! quarantine events of the log.

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::Connection;

use super::formulas::dedup_rate;
use super::reasoning::{LOG_EVENTS, RFC3339, ago, text_of};
use super::schema::{ARK_LOG_COLUMNS, column_or_null, missing_columns};
use super::snapshot::LogEvent;

/// Parameters of the ark queries.
#[derive(Debug, Clone, Copy)]
pub struct ArkParams {
    /// Failed sandbox executions newer than this are in quarantine.
    pub quarantine_window: Duration,
}

/// The tiers `trust_distribution` always carries (seed 001: "count by tier
/// (core/trusted/sandbox/external)"), 0 when no row has them; the seed's
/// clients read them without checking that they exist.
pub const TRUST_TIERS: [&str; 4] = ["core", "trusted", "sandbox", "external"];

/// A trust distribution with every tier of [`TRUST_TIERS`] at 0.
pub fn empty_trust_distribution() -> BTreeMap<String, u64> {
    TRUST_TIERS.iter().map(|t| (t.to_string(), 0)).collect()
}

/// What the ark section shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ArkValues {
    pub dedup_rate: f64,
    pub quarantine_count: u64,
    /// Every tier of [`TRUST_TIERS`], and any other tier found.
    pub trust_distribution: BTreeMap<String, u64>,
    /// Newest last.
    pub logs: Vec<LogEvent>,
    /// Log-text columns the database lacks (`table.column`).
    pub missing_columns: Vec<String>,
}

impl Default for ArkValues {
    /// Nothing read yet: zeros, with the four tiers present.
    fn default() -> Self {
        Self {
            dedup_rate: 0.0,
            quarantine_count: 0,
            trust_distribution: empty_trust_distribution(),
            logs: Vec::new(),
            missing_columns: Vec::new(),
        }
    }
}

/// Longest error text quoted in a log message.
const MAX_ERROR_CHARS: usize = 160;

/// Runs the ark queries (inside the caller's read transaction).
pub fn query(conn: &Connection, p: &ArkParams) -> rusqlite::Result<ArkValues> {
    let missing = missing_columns(conn, ARK_LOG_COLUMNS)?;
    let (unique, total): (i64, f64) = conn.query_row(
        "SELECT COUNT(DISTINCT code_snippet), COALESCE(SUM(usage_count), 0) FROM code_patterns",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut stmt = conn.prepare(
        "SELECT COALESCE(NULLIF(lower(trim(trust_tier)), ''), 'unknown') AS tier, COUNT(*)
         FROM code_index GROUP BY tier",
    )?;
    let mut trust_distribution = empty_trust_distribution();
    for row in stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
    })? {
        let (tier, count) = row?;
        trust_distribution.insert(tier, count);
    }
    let quarantine_count: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sandbox_executions
         WHERE lower(status) <> 'success' AND created_at > datetime('now', ?1)",
        [ago(p.quarantine_window)],
        |r| r.get(0),
    )?;
    let mut stmt = conn.prepare(&format!(
        "SELECT rowid, status, {RFC3339}, {error}
         FROM sandbox_executions WHERE lower(status) <> 'success'
         ORDER BY created_at DESC, rowid DESC LIMIT ?1",
        error = column_or_null(&missing, "sandbox_executions", "error"),
    ))?;
    let logs = stmt
        .query_map([LOG_EVENTS as i64], |r| {
            let id: i64 = r.get(0)?;
            let status: String = r.get(1)?;
            let at: String = r.get(2)?;
            let error = text_of(r, 3)?;
            let message = match error {
                Some(e) => format!(
                    "Quarantined sandbox execution {id} ({status}): {}",
                    e.trim().chars().take(MAX_ERROR_CHARS).collect::<String>()
                ),
                None => format!("Quarantined sandbox execution {id} ({status})"),
            };
            Ok(LogEvent {
                timestamp: at,
                kind: "quarantine".into(),
                message,
                severity: "warning".into(),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ArkValues {
        dedup_rate: dedup_rate(unique.max(0) as u64, total),
        quarantine_count: quarantine_count.max(0) as u64,
        trust_distribution,
        logs: super::reasoning::newest(logs, LOG_EVENTS),
        missing_columns: missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::schema::ARK_DDL;

    #[test]
    fn ark_numbers_by_hand() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(ARK_DDL).unwrap();
        for tier in ["core", "core", " Core ", "sandbox", "external", ""] {
            conn.execute(
                "INSERT INTO code_index (file_path, trust_tier) VALUES ('f', ?1)",
                [tier],
            )
            .unwrap();
        }
        // Snippets a (used 5 + 3), b (2), c (2): 3 unique, 12 uses → 75 %.
        for (snippet, uses) in [("a", 5), ("a", 3), ("b", 2), ("c", 2)] {
            conn.execute(
                "INSERT INTO code_patterns (code_snippet, usage_count) VALUES (?1, ?2)",
                rusqlite::params![snippet, uses],
            )
            .unwrap();
        }
        // Two recent failures, one old failure, one success.
        for (status, ago) in [
            ("failed", 60),
            ("timeout", 120),
            ("failed", 3 * 86_400),
            ("success", 10),
        ] {
            conn.execute(
                "INSERT INTO sandbox_executions (status, error, created_at)
                 VALUES (?1, 'boom', datetime('now', ?2))",
                rusqlite::params![status, format!("-{ago} seconds")],
            )
            .unwrap();
        }
        let v = query(
            &conn,
            &ArkParams {
                quarantine_window: Duration::from_secs(86_400),
            },
        )
        .unwrap();
        assert_eq!(v.dedup_rate, 75.0);
        assert_eq!(v.quarantine_count, 2);
        assert_eq!(
            v.trust_distribution,
            // No trusted row: still there, at 0.
            BTreeMap::from([
                ("core".to_string(), 3),
                ("external".to_string(), 1),
                ("sandbox".to_string(), 1),
                ("trusted".to_string(), 0),
                ("unknown".to_string(), 1),
            ])
        );
        assert_eq!(v.logs.len(), 3);
        assert_eq!(
            ArkValues::default().trust_distribution,
            empty_trust_distribution()
        );
        assert_eq!(
            v.logs[2].message,
            "Quarantined sandbox execution 1 (failed): boom"
        );
        assert_eq!(v.logs[2].severity, "warning");
    }
}
