//! Read-only access to one SQLite file, off the async runtime.
//!
//! The file is opened with `SQLITE_OPEN_READ_ONLY` (never created, never
//! written), with a busy timeout so that a writer holding the lock delays a
//! read by at most that long. Before a connection is trusted its schema is
//! checked against the tables and columns the collector reads. Each read runs in
//! one read transaction (one consistent view) on a blocking thread, bounded by a
//! query timeout after which it is interrupted.
//!
//! Every read first looks at the file itself: if it is gone the read fails
//! (an open connection to an unlinked file would otherwise keep answering with
//! old data), and if it was replaced (another inode) the connection is reopened.
//! Any failure drops the connection, so the next read starts afresh.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, InterruptHandle, OpenFlags, TransactionBehavior};

use super::schema::Required;

/// Where and how to read one database.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    pub path: PathBuf,
    /// How long a read waits for a writer's lock before it fails as locked.
    pub busy_timeout: Duration,
    /// Longest a read may take in all; it is interrupted after that.
    pub query_timeout: Duration,
}

/// Why a read failed. The texts are stable (no timings or counters) because
/// the collector logs a failure again only when its text changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqliteError {
    #[error("{0}: no such file")]
    Missing(String),
    #[error("{path}: cannot open: {reason}")]
    Open { path: String, reason: String },
    #[error("{0}: database is locked by a writer (still busy after the busy timeout)")]
    Locked(String),
    #[error("{path}: unexpected schema: {reason} (see docs/SOURCES.md)")]
    Schema { path: String, reason: String },
    #[error("{path}: query failed: {reason}")]
    Query { path: String, reason: String },
    #[error("{0}: query took longer than the source timeout and was interrupted")]
    Timeout(String),
    #[error("{0}: the previous read has not finished yet")]
    StillRunning(String),
}

/// Identity of the file a connection was opened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

struct Open {
    conn: Connection,
    file: FileId,
}

/// One database, opened lazily and reopened as needed.
pub struct Database {
    config: SqliteConfig,
    required: &'static [Required],
    slot: Arc<Mutex<Option<Open>>>,
    interrupt: Arc<Mutex<Option<InterruptHandle>>>,
    running: Arc<AtomicBool>,
}

impl Database {
    pub fn new(config: SqliteConfig, required: &'static [Required]) -> Self {
        Self {
            config,
            required,
            slot: Arc::new(Mutex::new(None)),
            interrupt: Arc::new(Mutex::new(None)),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Runs `query` in one read transaction on a blocking thread.
    pub async fn read<T, F>(&self, query: F) -> Result<T, SqliteError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let shown = self.config.path.display().to_string();
        if self.running.swap(true, Ordering::AcqRel) {
            return Err(SqliteError::StillRunning(shown));
        }
        let slot = self.slot.clone();
        let interrupt = self.interrupt.clone();
        let running = self.running.clone();
        let config = self.config.clone();
        let required = self.required;
        let task = tokio::task::spawn_blocking(move || {
            let _done = ClearOnDrop(running);
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            let result = read_blocking(&mut slot, &interrupt, &config, required, query);
            if result.is_err() {
                *slot = None;
                *interrupt.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            result
        });
        match tokio::time::timeout(self.config.query_timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(SqliteError::Query {
                path: shown,
                reason: format!("reader thread failed: {join}"),
            }),
            Err(_) => {
                if let Some(handle) = self
                    .interrupt
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                {
                    handle.interrupt();
                }
                Err(SqliteError::Timeout(shown))
            }
        }
    }
}

struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn read_blocking<T>(
    slot: &mut Option<Open>,
    interrupt: &Mutex<Option<InterruptHandle>>,
    config: &SqliteConfig,
    required: &[Required],
    query: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> Result<T, SqliteError> {
    let shown = config.path.display().to_string();
    let file = file_id(&config.path)?;
    if slot.as_ref().is_some_and(|o| o.file != file) {
        *slot = None;
    }
    if slot.is_none() {
        let conn = open(config)?;
        *interrupt.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.get_interrupt_handle());
        check_schema(&conn, required).map_err(|e| classify(&shown, e))?;
        *slot = Some(Open { conn, file });
    }
    let Some(open) = slot.as_mut() else {
        return Err(SqliteError::Open {
            path: shown,
            reason: "no connection".into(),
        });
    };
    let tx = open
        .conn
        .transaction_with_behavior(TransactionBehavior::Deferred)
        .map_err(|e| classify(&shown, SchemaOr::Sqlite(e)))?;
    let value = query(&tx).map_err(|e| classify(&shown, SchemaOr::Sqlite(e)))?;
    tx.commit()
        .map_err(|e| classify(&shown, SchemaOr::Sqlite(e)))?;
    Ok(value)
}

fn file_id(path: &Path) -> Result<FileId, SqliteError> {
    let shown = path.display().to_string();
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(id_of(&meta)),
        Ok(_) => Err(SqliteError::Open {
            path: shown,
            reason: "not a regular file".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SqliteError::Missing(shown)),
        Err(e) => Err(SqliteError::Open {
            path: shown,
            reason: e.to_string(),
        }),
    }
}

#[cfg(unix)]
fn id_of(meta: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

#[cfg(not(unix))]
fn id_of(_meta: &std::fs::Metadata) -> FileId {
    FileId { dev: 0, ino: 0 }
}

fn open(config: &SqliteConfig) -> Result<Connection, SqliteError> {
    let shown = config.path.display().to_string();
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&config.path, flags).map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::CannotOpen => {
            if config.path.exists() {
                SqliteError::Open {
                    path: shown.clone(),
                    reason: "permission denied or not a database".into(),
                }
            } else {
                SqliteError::Missing(shown.clone())
            }
        }
        other => SqliteError::Open {
            path: shown.clone(),
            reason: other.to_string(),
        },
    })?;
    conn.busy_timeout(config.busy_timeout)
        .map_err(|e| SqliteError::Open {
            path: shown,
            reason: e.to_string(),
        })?;
    Ok(conn)
}

enum SchemaOr {
    Schema(String),
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for SchemaOr {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

/// Fails unless every required table has every required column.
fn check_schema(conn: &Connection, required: &[Required]) -> Result<(), SchemaOr> {
    for (table, columns) in required {
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
        let have = stmt
            .query_map([table], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        if have.is_empty() {
            return Err(SchemaOr::Schema(format!("no table {table}")));
        }
        if let Some(missing) = columns.iter().find(|c| !have.iter().any(|h| h == *c)) {
            return Err(SchemaOr::Schema(format!(
                "table {table} has no column {missing}"
            )));
        }
    }
    Ok(())
}

fn classify(path: &str, e: SchemaOr) -> SqliteError {
    let path = path.to_string();
    match e {
        SchemaOr::Schema(reason) => SqliteError::Schema { path, reason },
        SchemaOr::Sqlite(rusqlite::Error::SqliteFailure(f, message)) => match f.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => SqliteError::Locked(path),
            ErrorCode::OperationInterrupted => SqliteError::Timeout(path),
            ErrorCode::NotADatabase => SqliteError::Open {
                path,
                reason: "not a SQLite database".into(),
            },
            _ => SqliteError::Query {
                path,
                reason: message.unwrap_or_else(|| f.to_string()),
            },
        },
        SchemaOr::Sqlite(other) => SqliteError::Query {
            path,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::schema;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sb-sqlite-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn database(path: &Path) -> Database {
        Database::new(
            SqliteConfig {
                path: path.to_path_buf(),
                busy_timeout: Duration::from_millis(100),
                query_timeout: Duration::from_secs(5),
            },
            schema::ARK_REQUIRED,
        )
    }

    fn count(conn: &Connection) -> rusqlite::Result<i64> {
        conn.query_row("SELECT COUNT(*) FROM code_index", [], |r| r.get(0))
    }

    #[tokio::test]
    async fn missing_schema_less_locked_replaced_and_back() {
        let path = temp_path("ark.db");
        let db = database(&path);
        assert!(matches!(db.read(count).await, Err(SqliteError::Missing(_))));

        std::fs::write(&path, b"").unwrap();
        let err = db.read(count).await.unwrap_err();
        assert!(
            matches!(&err, SqliteError::Schema { reason, .. } if reason == "no table code_index"),
            "{err}"
        );

        let writer = Connection::open(&path).unwrap();
        writer.execute_batch(schema::ARK_DDL).unwrap();
        writer
            .execute(
                "INSERT INTO code_index (file_path, trust_tier) VALUES ('a', 'core')",
                [],
            )
            .unwrap();
        assert_eq!(db.read(count).await, Ok(1));

        writer.execute_batch("BEGIN EXCLUSIVE").unwrap();
        assert!(matches!(db.read(count).await, Err(SqliteError::Locked(_))));
        writer.execute_batch("COMMIT").unwrap();
        assert_eq!(db.read(count).await, Ok(1));

        // Replaced by another file with other contents: reopened, not stale.
        let other = path.with_file_name("ark2.db");
        let w2 = Connection::open(&other).unwrap();
        w2.execute_batch(schema::ARK_DDL).unwrap();
        drop(w2);
        std::fs::rename(&other, &path).unwrap();
        assert_eq!(db.read(count).await, Ok(0));

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(db.read(count).await, Err(SqliteError::Missing(_))));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn opening_never_creates_the_file() {
        let path = temp_path("none.db");
        let db = database(&path);
        assert!(db.read(count).await.is_err());
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
