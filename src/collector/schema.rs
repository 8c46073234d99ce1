//! The SQLite schema the memory sources read (documented in `docs/SOURCES.md`):
//! the DDL that `switchboard demo-data` and the tests create, and the tables
//! and columns the collector checks for before it trusts a database.
//!
//! Timestamps (`created_at`) are UTC text in SQLite's own format,
//! `YYYY-MM-DD HH:MM:SS` with optional fractional seconds — what
//! `DEFAULT CURRENT_TIMESTAMP` and `datetime('now')` write. The collector's time
//! windows compare them as text against `datetime('now', …)`, which is what
//! seed 001's queries do and what lets an index on `created_at` serve them.

/// `reasoning_logs.db`: one row per reasoning session, one per stage.
pub const REASONING_DDL: &str = "
CREATE TABLE IF NOT EXISTS reasoning_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT UNIQUE NOT NULL,
    agent_name TEXT NOT NULL,
    query TEXT NOT NULL,
    final_output TEXT,
    overall_confidence REAL,
    total_duration_ms REAL,
    timestamp TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now')),
    metadata TEXT,
    created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS reasoning_stages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    stage_name TEXT NOT NULL,
    stage_order INTEGER NOT NULL DEFAULT 0,
    input_data TEXT,
    output_data TEXT,
    confidence REAL,
    duration_ms REAL,
    traces TEXT,
    metadata TEXT,
    created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY (session_id) REFERENCES reasoning_sessions(session_id)
);
CREATE INDEX IF NOT EXISTS idx_reasoning_sessions_created ON reasoning_sessions(created_at);
CREATE INDEX IF NOT EXISTS idx_reasoning_stages_created ON reasoning_stages(created_at);
";

/// `ark.db`: indexed code with trust tiers, reusable patterns, sandbox runs.
pub const ARK_DDL: &str = "
CREATE TABLE IF NOT EXISTS code_index (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file_path TEXT NOT NULL,
    content_hash TEXT,
    trust_tier TEXT NOT NULL,
    indexed_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS code_patterns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pattern_type TEXT,
    code_snippet TEXT NOT NULL,
    usage_count INTEGER NOT NULL DEFAULT 1,
    created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS sandbox_executions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    code_hash TEXT,
    language TEXT,
    status TEXT NOT NULL,
    exit_code INTEGER,
    duration_ms REAL,
    error TEXT,
    created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_sandbox_executions_created ON sandbox_executions(created_at);
";

/// A table and the columns of it that the collector reads.
pub type Required = (&'static str, &'static [&'static str]);

/// What the reasoning section needs from `reasoning_logs.db`: the columns its
/// numbers (rates, confidence deltas) are computed from. Without one of them
/// the section is stale.
pub const REASONING_REQUIRED: &[Required] = &[
    ("reasoning_sessions", &["created_at"]),
    ("reasoning_stages", &["confidence", "created_at"]),
];

/// Columns of `reasoning_logs.db` that only feed the log's text. Without one,
/// the section stays live, its log lines leave that part out, and its
/// `sources` entry lists it in `missing_columns`.
pub const REASONING_LOG_COLUMNS: &[Required] = &[
    (
        "reasoning_sessions",
        &["session_id", "agent_name", "overall_confidence"],
    ),
    ("reasoning_stages", &["session_id", "stage_name"]),
];

/// What the ark section needs from `ark.db` (as [`REASONING_REQUIRED`]).
pub const ARK_REQUIRED: &[Required] = &[
    ("code_index", &["trust_tier"]),
    ("code_patterns", &["code_snippet", "usage_count"]),
    ("sandbox_executions", &["status", "created_at"]),
];

/// Columns of `ark.db` that only feed the log's text (as [`REASONING_LOG_COLUMNS`]).
pub const ARK_LOG_COLUMNS: &[Required] = &[("sandbox_executions", &["error"])];

/// The columns of `columns` that the database lacks, as `table.column`, in
/// the order given.
pub fn missing_columns(
    conn: &rusqlite::Connection,
    columns: &[Required],
) -> rusqlite::Result<Vec<String>> {
    let mut missing = Vec::new();
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
    for (table, wanted) in columns {
        let have = stmt
            .query_map([table], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        for column in *wanted {
            if !have.iter().any(|h| h == column) {
                missing.push(format!("{table}.{column}"));
            }
        }
    }
    Ok(missing)
}

/// `column` when the read found it, else `NULL` (for a `SELECT` list).
pub fn column_or_null(missing: &[String], table: &str, column: &'static str) -> &'static str {
    if missing
        .iter()
        .any(|m| m.split_once('.') == Some((table, column)))
    {
        "NULL"
    } else {
        column
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DDL creates every table and column the collector reads.
    #[test]
    fn ddl_satisfies_the_required_columns() {
        for (ddl, required) in [
            (REASONING_DDL, REASONING_REQUIRED),
            (REASONING_DDL, REASONING_LOG_COLUMNS),
            (ARK_DDL, ARK_REQUIRED),
            (ARK_DDL, ARK_LOG_COLUMNS),
        ] {
            let conn = rusqlite::Connection::open_in_memory().unwrap();
            conn.execute_batch(ddl).unwrap();
            for (table, columns) in required {
                let mut stmt = conn
                    .prepare(&format!("PRAGMA table_info({table})"))
                    .unwrap();
                let have: Vec<String> = stmt
                    .query_map([], |r| r.get::<_, String>(1))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                for c in *columns {
                    assert!(have.iter().any(|h| h == c), "{table}.{c} missing");
                }
            }
        }
    }

    #[test]
    fn missing_log_columns_are_named() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE reasoning_sessions (created_at TEXT, agent_name TEXT);
             CREATE TABLE reasoning_stages (confidence REAL, created_at TEXT, stage_name TEXT);",
        )
        .unwrap();
        let missing = missing_columns(&conn, REASONING_LOG_COLUMNS).unwrap();
        assert_eq!(
            missing,
            [
                "reasoning_sessions.session_id",
                "reasoning_sessions.overall_confidence",
                "reasoning_stages.session_id"
            ]
        );
        assert_eq!(
            column_or_null(&missing, "reasoning_stages", "session_id"),
            "NULL"
        );
        assert_eq!(
            column_or_null(&missing, "reasoning_sessions", "agent_name"),
            "agent_name"
        );
    }
}
