//! The SQLite database: connection settings, schema migrations and every SQL statement.
//!
//! WAL journal, a busy timeout so concurrent processes wait instead of failing, foreign
//! keys on. The schema version lives in `PRAGMA user_version`; a database written by a
//! newer imm-daemon is refused before anything is written to it. Migrations are a short
//! hand-written list rather than `rusqlite_migration`, whose releases are pinned to
//! particular rusqlite versions, because one of them runs Rust code (sealing existing
//! audit rows into the hash chain) and the newer-version check must come before any
//! write, including the switch to WAL.
//!
//! Writes go through [`Store::write`], one `BEGIN IMMEDIATE` transaction in which the
//! operation and its audit rows commit together or not at all.
//!
//! Checkpoints (copying the WAL back into the database file) are kept off the write path:
//! SQLite's default runs one inside whichever commit takes the WAL past 1,000 pages (4
//! MiB with 4 KiB pages), so a 10,000-mailbox import paid for writing every page twice
//! and three fsyncs instead of one. Here the automatic checkpoint waits for 64 MiB, which
//! bounds the WAL when nobody else checkpoints; closing the last connection checkpoints
//! (every CLI command), and a long-running process calls [`Store::checkpoint`] at quiet
//! moments, as SQLite's documentation on application-initiated checkpoints suggests.
//! Repeated syncs that rewrite the same pages then copy each page once per checkpoint
//! rather than once per sync. `journal_size_limit` truncates a WAL that grew past 64 MiB.

pub mod audit_head;
mod audit_log;
mod cycles;
mod import;
mod jobs;
mod mail_queue;
mod mailboxes;
mod raw;
mod sign_in;
mod sync;
pub use mail_queue::{AttachmentInfo, Attempt, Enqueued, QueueCounts, QueuedMail};
pub use sign_in::SignInRow;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

pub use audit_log::{AuditFilter, PruneOutcome};
pub use cycles::CycleRow;
pub use mailboxes::{CachedSummary, MailboxFilter, StoreStats, TallyCache};
pub use sync::{
    ChangeKind, MailboxChange, Snapshot, Staged, StatisticsDue, StatisticsResult, SyncRun,
    SyncRunRow,
};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 12;

/// `PRAGMA application_id` of an imm-daemon database ("IMMD").
const APPLICATION_ID: i64 = 0x494d_4d44;

/// How far beyond this build's schema version a newer imm-daemon's can plausibly be;
/// a header claiming more is damaged, not newer.
const MAX_NEWER: i64 = 1_000;

/// The page size of new databases.
const PAGE_SIZE: i64 = 16_384;

/// The WAL size in bytes past which a commit checkpoints, and to which a checkpoint
/// truncates the WAL file.
const WAL_BOUND: i64 = 64 << 20;

/// What queries run with: sorts in memory, a 64 MiB page cache, reads through a 256 MiB
/// memory map. A sync trades them for bounded memory while it runs
/// ([`Store::begin_bulk`]).
const READ_SETTINGS: &str = "PRAGMA temp_store = MEMORY;
     PRAGMA cache_size = -65536;
     PRAGMA mmap_size = 268435456;";

/// What the daemon's queries run with: [`READ_SETTINGS`] without the memory map. Pages
/// read through the map stay mapped, and counted in the process's resident memory, for
/// as long as the connection is open: after a sync of 100,000 mailboxes the idle daemon
/// kept 192 KiB of the database mapped (its few reads a cycle gain nothing from the map).
/// Pages read into SQLite's own cache are let go at every idle
/// ([`Store::release_memory`]).
const LONG_RUNNING_SETTINGS: &str = "PRAGMA temp_store = MEMORY;
     PRAGMA cache_size = -65536;
     PRAGMA mmap_size = 0;";

/// How long a statement waits for another process's write lock, in the daemon (which
/// must not stall its control socket for long; a step that gives up runs again next
/// cycle) and wherever nothing else was set.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "database {path} was written by a newer imm-daemon (schema version {found}; this build understands up to {supported}); it was left untouched, upgrade imm-daemon to use it"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("{path} is not an imm-daemon database (application id {found:#x})")]
    Foreign { path: PathBuf, found: i64 },
    #[error("migrating database {path} to schema version {version} failed")]
    Migrate {
        path: PathBuf,
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database error")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot read database file size of {path}")]
    Metadata {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Paths(#[from] crate::paths::PathsError),
    #[error("the audit chain is broken at row {id}: {reason}; nothing was pruned")]
    AuditBroken { id: i64, reason: String },
    #[error(
        "database {path} is damaged: {why}; move it aside and restore a backup, or remove it to start an empty one (the mail queue and the audit log are in it)"
    )]
    Damaged { path: PathBuf, why: String },
    #[error(
        "the audit head file {path} cannot be used: {message}; restore it, or remove it (the next audit row writes a new one)"
    )]
    AuditHead { path: PathBuf, message: String },
}

/// An open database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Where the audit chain's head is kept outside the database, if anywhere.
    audit_head: Option<PathBuf>,
    /// Set by SQLite (an update hook) whenever this connection changes a row of
    /// `inactive_mailboxes`, by any statement or trigger; [`Store::write`] turns it into
    /// a new generation of the cached `stats` tallies before it commits.
    mailboxes_changed: Arc<AtomicBool>,
    /// The settings queries run with: [`READ_SETTINGS`], or [`LONG_RUNNING_SETTINGS`]
    /// once [`Store::for_long_running`] chose them. A bulk load returns to them.
    settings: &'static str,
}

/// A write transaction; commits when the closure given to [`Store::write`] succeeds.
pub struct Tx<'a> {
    tx: rusqlite::Transaction<'a>,
    user: &'a str,
    /// Whether this transaction (or this connection outside one) changed a cached
    /// mailbox so far: tallies counted before may not be kept in it.
    mailboxes_changed: &'a AtomicBool,
    /// The newest audit row this transaction added: id and hash.
    last_audit: Option<(i64, String)>,
}

impl Store {
    /// Opens an existing database for reading only: nothing is created, migrated or
    /// changed (for `status`, which may run beside a daemon of another version). A
    /// foreign database is refused; one of another schema version is read as far as the
    /// columns in question exist.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let app_id: i64 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(open_err)?;
        if app_id != 0 && app_id != APPLICATION_ID {
            return Err(StoreError::Foreign {
                path: path.to_path_buf(),
                found: app_id,
            });
        }
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            audit_head: None,
            mailboxes_changed: Arc::new(AtomicBool::new(false)),
            settings: READ_SETTINGS,
        })
    }

    /// Opens (creating it 0600 when missing) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_waiting(path, BUSY_TIMEOUT)
    }

    /// [`Store::open`], waiting up to `busy` for other processes' writes (from the open
    /// on: a migration waits too).
    pub fn open_waiting(path: &Path, busy: Duration) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::paths::ensure_private_dir(dir)?;
        }
        crate::paths::ensure_private_file(path)?;
        check_header(path)?;
        #[cfg(unix)]
        {
            // A database adopted from elsewhere (the original tool) may be readable by others.
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
            }
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            audit_head: None,
            mailboxes_changed: Arc::new(AtomicBool::new(false)),
            settings: READ_SETTINGS,
        };
        store.watch_mailboxes().map_err(open_err)?;
        store.prepare(busy).map_err(|e| match e {
            StoreError::Sql(source) => open_err(source),
            other => other,
        })?;
        Ok(store)
    }

    /// Has SQLite tell this store when its connection changes a cached mailbox: each
    /// row written, by our statements or their triggers, sets `mailboxes_changed`. Only
    /// a `DELETE` without a `WHERE` that SQLite carries out by truncating the table would
    /// not be seen, and the table's triggers rule that out.
    fn watch_mailboxes(&mut self) -> rusqlite::Result<()> {
        let changed = Arc::clone(&self.mailboxes_changed);
        self.conn
            .update_hook(Some(move |_, db: &str, table: &str, _| {
                if table == "inactive_mailboxes" && db == "main" {
                    changed.store(true, Ordering::Relaxed);
                }
            }))
    }

    /// Begins a read transaction: every read on this store until the guard drops sees one
    /// snapshot of the database, and takes the read lock once instead of once a statement.
    /// Dropping the guard ends it. Only for reads: a write in it would be rolled back.
    pub fn read_snapshot(&self) -> Result<rusqlite::Transaction<'_>, StoreError> {
        Ok(self.conn.unchecked_transaction()?)
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn prepare(&mut self, busy: Duration) -> Result<(), StoreError> {
        self.conn.busy_timeout(busy)?;
        // Closing a connection checkpoints the WAL into the main file; a database that is
        // about to be refused must not be changed even that way.
        self.conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        // Reading the header is the first thing done: a newer or foreign database must be
        // refused before anything (even the journal mode) is written to it.
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let app_id: i64 = self
            .conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))?;
        if app_id != 0 && app_id != APPLICATION_ID {
            return Err(StoreError::Foreign {
                path: self.path.clone(),
                found: app_id,
            });
        }
        // Versions no imm-daemon writes: below zero, far beyond this one, or none at all
        // on a database that carries imm-daemon's application id.
        let damaged = |why: String| StoreError::Damaged {
            path: self.path.clone(),
            why,
        };
        if version < 0 {
            return Err(damaged(format!(
                "its header's schema version is {version}, which no imm-daemon writes"
            )));
        }
        if version > SCHEMA_VERSION + MAX_NEWER {
            return Err(damaged(format!(
                "its header's schema version is {version}, far beyond any imm-daemon (this one writes {SCHEMA_VERSION})"
            )));
        }
        if version == 0 && app_id == APPLICATION_ID {
            return Err(damaged(
                "its header carries imm-daemon's application id but no schema version".into(),
            ));
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        self.conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)?;
        // A new database gets 16 KiB pages (SQLite's default is 4 KiB): a quarter of the
        // page writes, splits and WAL frames on imports (10% faster for 10,000 mailboxes,
        // 15% for a million, on disk); one row of the few a cycle writes costs 16 KiB of
        // WAL instead of 4. An existing database keeps the page size it has.
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        if pages == 0 {
            self.conn
                .execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE}"))?;
        }
        self.conn
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        self.conn.execute_batch(&format!(
            "PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             {READ_SETTINGS}"
        ))?;
        // The automatic checkpoint's threshold is counted in pages.
        let page_size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        self.conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = {};
             PRAGMA journal_size_limit = {WAL_BOUND};",
            WAL_BOUND / page_size.max(512)
        ))?;
        self.migrate(version)
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    fn migrate(&mut self, from: i64) -> Result<(), StoreError> {
        for version in (from + 1)..=SCHEMA_VERSION {
            let path = self.path.clone();
            let fail = |source| StoreError::Migrate {
                path: path.clone(),
                version,
                source,
            };
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(fail)?;
            // Another process may have migrated while this one waited for the lock.
            let current: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(fail)?;
            if current >= version {
                tx.commit().map_err(fail)?;
                continue;
            }
            match version {
                1 => {
                    tx.execute_batch(MIGRATION_1).map_err(fail)?;
                    tx.execute_batch(MAILBOX_INDEXES).map_err(fail)?;
                }
                2 => {
                    tx.execute_batch(MIGRATION_2).map_err(fail)?;
                    audit_log::seal_unhashed(&tx).map_err(fail)?;
                }
                3 => tx.execute_batch(MIGRATION_3).map_err(fail)?,
                4 => tx.execute_batch(MIGRATION_4).map_err(fail)?,
                5 => tx.execute_batch(MIGRATION_5).map_err(fail)?,
                6 => tx.execute_batch(MIGRATION_6).map_err(fail)?,
                7 => tx.execute_batch(MIGRATION_7).map_err(fail)?,
                8 => tx.execute_batch(MIGRATION_8).map_err(fail)?,
                9 => {
                    tx.execute_batch(MIGRATION_9).map_err(fail)?;
                    build_mailbox_derived(&tx).map_err(fail)?;
                }
                10 => {
                    // The search index's triggers now queue their changes.
                    tx.execute_batch(
                        "DROP TRIGGER IF EXISTS mailbox_search_insert;
                         DROP TRIGGER IF EXISTS mailbox_search_delete;
                         DROP TRIGGER IF EXISTS mailbox_search_update;",
                    )
                    .map_err(fail)?;
                    build_mailbox_derived(&tx).map_err(fail)?;
                    tx.execute_batch(MIGRATION_10).map_err(fail)?;
                }
                11 => tx.execute_batch(MIGRATION_11).map_err(fail)?,
                12 => tx.execute_batch(MIGRATION_12).map_err(fail)?,
                _ => {
                    return Err(StoreError::Damaged {
                        path: self.path.clone(),
                        why: format!("no migration leads to schema version {version}"),
                    });
                }
            }
            tx.execute_batch(&format!(
                "PRAGMA user_version = {version}; PRAGMA application_id = {APPLICATION_ID};"
            ))
            .map_err(fail)?;
            tx.commit().map_err(fail)?;
        }
        Ok(())
    }

    /// Runs `f` in one immediate transaction; the OS user is recorded on audit rows.
    pub fn write<T, E>(&mut self, f: impl FnOnce(&mut Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let user = crate::audit::os_user();
        let changed = Arc::clone(&self.mailboxes_changed);
        let (value, last_audit) = {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::from)?;
            let mut tx = Tx {
                tx,
                user: &user,
                mailboxes_changed: &changed,
                last_audit: None,
            };
            let value = f(&mut tx)?;
            let last_audit = tx.last_audit.take();
            if self.mailboxes_changed.swap(false, Ordering::Relaxed) {
                apply_search_changes(&tx.tx).map_err(StoreError::from)?;
                // A new generation of the table, which the kept tallies follow when the
                // changes they were told of are all they need.
                mailboxes::carry_kept_tallies(&tx.tx).map_err(StoreError::from)?;
            }
            tx.tx.commit().map_err(StoreError::from)?;
            (value, last_audit)
        };
        if let Some((id, hash)) = last_audit {
            self.advance_audit_head(id, &hash);
        }
        Ok(value)
    }

    /// Writes one audit row in a transaction of its own.
    pub fn audit(
        &mut self,
        event: &crate::audit::AuditEvent,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<i64, StoreError> {
        self.write(|tx| tx.audit(event, now))
    }

    /// Copies the WAL's committed pages into the database file, as far as readers allow,
    /// and returns how many pages the WAL held and how many were copied. Never waits for
    /// readers or writers (a passive checkpoint): what cannot be copied now is copied by a
    /// later one.
    pub fn checkpoint(&self) -> Result<(u64, u64), StoreError> {
        let (log, copied): (i64, i64) =
            self.conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(1)?, r.get(2)?))
                })?;
        Ok((log.max(0) as u64, copied.max(0) as u64))
    }

    /// Sets this connection up for a process that stays running (the daemon): reads go
    /// through SQLite's own cache, which [`Store::release_memory`] empties, instead of a
    /// memory map of the file ([`LONG_RUNNING_SETTINGS`]); bulk loads return to this.
    pub fn for_long_running(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch(LONG_RUNNING_SETTINGS)?;
        self.settings = LONG_RUNNING_SETTINGS;
        Ok(())
    }

    /// Frees the pages SQLite keeps cached for this connection (its own database and the
    /// temporary one a sync stages into), for an idle process; the next statement reads
    /// what it needs again, from the system's file cache. Pages in use stay.
    pub fn release_memory(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("PRAGMA shrink_memory")?;
        Ok(())
    }

    /// The size of the database file in bytes (the WAL not included).
    pub fn file_size(&self) -> Result<u64, StoreError> {
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|source| StoreError::Metadata {
                path: self.path.clone(),
                source,
            })
    }
}

/// Refuses a file whose SQLite header SQLite would open in a way nobody wants: file
/// format version bytes it only reads (so every write fails later as "read-only"). What
/// else a header can say wrong, SQLite reports itself as "not a database" or corrupt.
fn check_header(path: &Path) -> Result<(), StoreError> {
    use std::io::Read;
    let mut header = [0u8; 100];
    let Ok(mut f) = std::fs::File::open(path) else {
        return Ok(());
    };
    if f.read_exact(&mut header).is_err() || &header[..16] != b"SQLite format 3\0" {
        return Ok(());
    }
    let (write, read) = (header[18], header[19]);
    if !(1..=2).contains(&write) || !(1..=2).contains(&read) {
        return Err(StoreError::Damaged {
            path: path.to_path_buf(),
            why: format!(
                "its header's file format versions are {write} (write) and {read} (read), where SQLite writes 1 or 2"
            ),
        });
    }
    Ok(())
}

/// The original design's indexes on `inactive_mailboxes` (part of [`MAILBOX_DERIVED`]
/// since).
const MAILBOX_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS idx_mailboxes_smtp ON inactive_mailboxes(primary_smtp);
CREATE INDEX IF NOT EXISTS idx_mailboxes_deleted ON inactive_mailboxes(when_soft_deleted);
";

/// What is derived from `inactive_mailboxes` rows and rebuilt whole after a bulk load
/// ([`drop_mailbox_derived`]): the original design's indexes, the indexes that let
/// `status` count without reading the table (update times, statistics times, and the
/// few rows marked stale or without a size) and the substring search index.
const MAILBOX_DERIVED: &str = "
CREATE INDEX IF NOT EXISTS idx_mailboxes_smtp ON inactive_mailboxes(primary_smtp);
CREATE INDEX IF NOT EXISTS idx_mailboxes_deleted ON inactive_mailboxes(when_soft_deleted);
CREATE INDEX IF NOT EXISTS idx_mailboxes_updated ON inactive_mailboxes(last_updated);
CREATE INDEX IF NOT EXISTS idx_mailboxes_stats_at ON inactive_mailboxes(stats_at);
CREATE INDEX IF NOT EXISTS idx_mailboxes_stats_stale ON inactive_mailboxes(stats_at)
    WHERE stats_stale = 1;
CREATE INDEX IF NOT EXISTS idx_mailboxes_size_unknown ON inactive_mailboxes(size_bytes)
    WHERE size_bytes IS NULL;
INSERT INTO mailbox_search(mailbox_search) VALUES ('rebuild');
CREATE TABLE IF NOT EXISTS mailbox_search_pending (
    seq INTEGER PRIMARY KEY,
    op INTEGER NOT NULL,
    rid INTEGER NOT NULL,
    search_key TEXT,
    primary_smtp TEXT
);
DELETE FROM mailbox_search_pending;
CREATE TRIGGER IF NOT EXISTS mailbox_search_insert AFTER INSERT ON inactive_mailboxes
BEGIN
    INSERT INTO mailbox_search_pending (op, rid, search_key, primary_smtp)
    VALUES (1, new.rowid, new.search_key, new.primary_smtp);
END;
CREATE TRIGGER IF NOT EXISTS mailbox_search_delete AFTER DELETE ON inactive_mailboxes
BEGIN
    INSERT INTO mailbox_search_pending (op, rid, search_key, primary_smtp)
    VALUES (0, old.rowid, old.search_key, old.primary_smtp);
END;
CREATE TRIGGER IF NOT EXISTS mailbox_search_update
AFTER UPDATE OF search_key, primary_smtp ON inactive_mailboxes
WHEN old.search_key IS NOT new.search_key OR old.primary_smtp IS NOT new.primary_smtp
BEGIN
    INSERT INTO mailbox_search_pending (op, rid, search_key, primary_smtp)
    VALUES (0, old.rowid, old.search_key, old.primary_smtp);
    INSERT INTO mailbox_search_pending (op, rid, search_key, primary_smtp)
    VALUES (1, new.rowid, new.search_key, new.primary_smtp);
END;
";

/// Applies the search index changes the triggers of [`MAILBOX_DERIVED`] queued, in the
/// order they were made, in one statement. The triggers queue rather than write the index
/// themselves because FTS5 writes its pending terms out as a new segment at the start of
/// every statement that may need undoing: with the index written by the triggers, a
/// transaction of 10,000 one-row statements left 10,000 segments to merge, and took
/// fifteen times as long as without the index. [`Store::write`] runs this before it
/// commits, so no transaction ever commits a queue, and the index never lags its table
/// outside a transaction.
fn apply_search_changes(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "INSERT INTO mailbox_search (mailbox_search, rowid, search_key, primary_smtp)
         SELECT CASE WHEN op = 0 THEN 'delete' END, rid, search_key, primary_smtp
         FROM mailbox_search_pending ORDER BY seq;
         DELETE FROM mailbox_search_pending;",
    )
}

/// Builds (or completes) [`MAILBOX_DERIVED`].
fn build_mailbox_derived(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(MAILBOX_DERIVED)
}

/// Drops what [`build_mailbox_derived`] builds, before a bulk load: rebuilding an index
/// (a sort) or the search index (one pass) is several times faster than updating it row
/// by row, and the load and the rebuild are one transaction, so readers never see the
/// table without them. The kept tallies are set aside too: counting the table again is
/// faster than following half of it or more row by row, and with none kept, the triggers
/// of [`MIGRATION_12`] queue nothing during the load.
fn drop_mailbox_derived(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "DROP INDEX IF EXISTS idx_mailboxes_smtp;
         DROP INDEX IF EXISTS idx_mailboxes_deleted;
         DROP INDEX IF EXISTS idx_mailboxes_updated;
         DROP INDEX IF EXISTS idx_mailboxes_stats_at;
         DROP INDEX IF EXISTS idx_mailboxes_stats_stale;
         DROP INDEX IF EXISTS idx_mailboxes_size_unknown;
         DROP TRIGGER IF EXISTS mailbox_search_insert;
         DROP TRIGGER IF EXISTS mailbox_search_delete;
         DROP TRIGGER IF EXISTS mailbox_search_update;",
    )?;
    set_kept_tallies_aside(tx)
}

/// Sets the kept `stats` tallies aside ahead of a write that changes much of the table:
/// following each change costs more than counting again at the next `stats`, and with
/// none kept, the triggers of [`MIGRATION_12`] queue nothing.
fn set_kept_tallies_aside(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE mailbox_tally_state SET cached_generation = NULL",
        [],
    )
    .map(drop)
}

/// Version 1: the original design's tables, columns and indexes. `IF NOT EXISTS` adopts a
/// database made by the original tool, which never set a schema version.
const MIGRATION_1: &str = "
CREATE TABLE IF NOT EXISTS inactive_mailboxes (
    identity TEXT PRIMARY KEY,
    display_name TEXT,
    primary_smtp TEXT,
    when_soft_deleted TEXT,
    age_days INTEGER,
    size_mb REAL,
    item_count INTEGER,
    license_type TEXT,
    monthly_cost REAL,
    hold_types TEXT,
    recovery_eligible INTEGER,
    recovery_blockers TEXT,
    operating_company TEXT,
    department TEXT,
    last_updated TEXT
);
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    operation TEXT NOT NULL,
    identity TEXT,
    user TEXT,
    details TEXT,
    result TEXT,
    error_message TEXT
);
CREATE INDEX IF NOT EXISTS idx_audit_timestamp ON audit_log(timestamp);
";

/// Version 2: what imm-daemon adds: the facts recovery eligibility is recomputed from, a
/// case-folded search key, the audit hash chain and its prune anchor, and a guard that
/// keeps audit rows from being updated in place.
const MIGRATION_2: &str = "
ALTER TABLE inactive_mailboxes ADD COLUMN user_principal_name TEXT;
ALTER TABLE inactive_mailboxes ADD COLUMN size_bytes INTEGER;
ALTER TABLE inactive_mailboxes ADD COLUMN in_place_holds TEXT NOT NULL DEFAULT '[]';
ALTER TABLE inactive_mailboxes ADD COLUMN is_inactive INTEGER;
ALTER TABLE inactive_mailboxes ADD COLUMN auto_expanding_archive INTEGER NOT NULL DEFAULT 0;
ALTER TABLE inactive_mailboxes ADD COLUMN archive_status TEXT;
ALTER TABLE inactive_mailboxes ADD COLUMN external_directory_object_id TEXT;
ALTER TABLE inactive_mailboxes ADD COLUMN search_key TEXT NOT NULL DEFAULT '';
UPDATE inactive_mailboxes
   SET search_key = lower(coalesce(display_name, '')),
       primary_smtp = lower(primary_smtp);
ALTER TABLE audit_log ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_log ADD COLUMN hash TEXT;
CREATE TABLE audit_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_id INTEGER NOT NULL,
    last_hash TEXT NOT NULL,
    pruned_rows INTEGER NOT NULL,
    pruned_at TEXT NOT NULL
);
CREATE TRIGGER audit_log_append_only BEFORE UPDATE ON audit_log
WHEN OLD.hash IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'audit rows are append-only');
END;
";

/// Version 3: the daemon's cycle history.
const MIGRATION_3: &str = "
CREATE TABLE cycles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    trigger TEXT NOT NULL,
    ok INTEGER NOT NULL,
    steps TEXT NOT NULL
);
";

/// Each scheduled job's last run.
const MIGRATION_4: &str = "
CREATE TABLE job_runs (
    job TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    ok INTEGER NOT NULL,
    summary TEXT,
    error TEXT,
    last_ok_at TEXT,
    failures INTEGER NOT NULL
);
";

/// The sign-in's public record (never token material): one row per account slot.
const MIGRATION_5: &str = "
CREATE TABLE sign_in (
    slot TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    record TEXT NOT NULL
);
";

/// The outgoing mail queue and its attachments.
const MIGRATION_6: &str = "
CREATE TABLE mail_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    sender TEXT,
    to_addrs TEXT NOT NULL,
    cc_addrs TEXT NOT NULL,
    bcc_addrs TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    body_type TEXT NOT NULL CHECK (body_type IN ('text', 'html')),
    idempotency_key TEXT UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'failed', 'cancelled')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error TEXT,
    graph_message_id TEXT,
    internet_message_id TEXT,
    sent_at TEXT
);
CREATE INDEX mail_queue_due ON mail_queue (state, next_attempt_at, id);
CREATE TABLE mail_attachments (
    mail_id INTEGER NOT NULL REFERENCES mail_queue (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (mail_id, position)
);
";

/// When a mail's send was last requested (until it shows in Sent Items, a send whose
/// answer was lost may still be on its way), and indexes for the day's counts of sent
/// and requested mails, which `status` and the send bucket read.
const MIGRATION_7: &str = "
ALTER TABLE mail_queue ADD COLUMN send_requested_at TEXT;
CREATE INDEX mail_queue_sent ON mail_queue (sent_at) WHERE state = 'sent';
CREATE INDEX mail_queue_requested ON mail_queue (send_requested_at)
    WHERE send_requested_at IS NOT NULL;
";

/// The live sync: when each mailbox last changed in Exchange and when its statistics were
/// fetched, the change history, and each sync's record.
const MIGRATION_8: &str = "
ALTER TABLE inactive_mailboxes ADD COLUMN when_changed TEXT;
ALTER TABLE inactive_mailboxes ADD COLUMN stats_at TEXT;
ALTER TABLE inactive_mailboxes ADD COLUMN stats_stale INTEGER NOT NULL DEFAULT 0;
CREATE TABLE mailbox_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sync_id INTEGER NOT NULL,
    at TEXT NOT NULL,
    identity TEXT NOT NULL,
    change TEXT NOT NULL CHECK (change IN
        ('added', 'removed', 'holds_added', 'holds_removed', 'eligibility_changed')),
    display_name TEXT,
    primary_smtp TEXT,
    details TEXT NOT NULL
);
CREATE INDEX mailbox_changes_at ON mailbox_changes (at);
CREATE TABLE syncs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    ok INTEGER NOT NULL,
    figures TEXT NOT NULL,
    error TEXT
);
";

/// Substring search (`mailboxes search`): a trigram index of the case-folded display
/// name and the primary SMTP address. It only finds candidates, every trigram of the
/// search text present in the row; the exact case-insensitive substring test runs on
/// them, so results are what a scan gives. The rows are folded before indexing (the
/// tokenizer's own folding differs from Rust's `to_lowercase` for some letters), and
/// `detail=none` keeps no positions: a third of the size and half the build time of a
/// full index, with the same lookups, since the exact test follows anyway. Kept by the
/// triggers of [`MAILBOX_DERIVED`].
const MIGRATION_9: &str = "
CREATE VIRTUAL TABLE mailbox_search USING fts5(
    search_key, primary_smtp,
    content = 'inactive_mailboxes', content_rowid = 'rowid',
    tokenize = 'trigram case_sensitive 1', detail = none
);
";

/// Version 10 (with the search index's triggers queueing their changes, see
/// [`apply_search_changes`]): the tallies `mailboxes stats` sums, kept between runs. They
/// are kept as of an instant (`as_of`) for one generation of the mailbox table; every
/// transaction that changes a cached mailbox starts a new generation ([`Store::write`]),
/// which the kept tallies then no longer answer for. Rows are the groups of
/// `crate::store::mailboxes::Groups`: company, licence, hold types as a bit set, age band.
const MIGRATION_10: &str = "
CREATE TABLE mailbox_tally_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL,
    cached_generation INTEGER,
    as_of TEXT
);
INSERT INTO mailbox_tally_state (id, generation) VALUES (1, 0);
CREATE TABLE mailbox_tally_cache (
    company TEXT,
    license TEXT,
    holds INTEGER NOT NULL,
    band INTEGER NOT NULL,
    count INTEGER NOT NULL,
    recovery_eligible INTEGER NOT NULL,
    size_mb REAL NOT NULL,
    size_unknown INTEGER NOT NULL
);
";

/// Version 11: the summary `mailboxes stats` made of the kept tallies (JSON), and in
/// `summary_prices` the key it answers for (its form, the tallies' generation and instant,
/// and the price table: `store::mailboxes::summary_key`), kept beside them so that the
/// next `stats` on the same tallies and prices reads it instead of the groups.
const MIGRATION_11: &str = "
ALTER TABLE mailbox_tally_state ADD COLUMN summary TEXT;
ALTER TABLE mailbox_tally_state ADD COLUMN summary_prices TEXT;
";

/// Version 12: the kept tallies follow every write instead of being counted again after
/// it. While tallies are kept for the table's current generation, triggers queue each
/// changed row's old and new tally columns (a sign, -1 for what left its group and 1 for
/// what joined one) in `mailbox_tally_pending`; [`Store::write`] folds the queue into the
/// kept groups before it commits (`store::mailboxes::carry_kept_tallies`) and empties it.
/// Only the columns the tallies read start a change: a sync that rewrites update times
/// queues nothing. With no tallies kept (none counted yet, or set aside by a bulk load)
/// the triggers queue nothing. The index finds a group by its key when a change is folded
/// in.
const MIGRATION_12: &str = "
CREATE TABLE mailbox_tally_pending (
    sign INTEGER NOT NULL,
    operating_company TEXT,
    license_type TEXT,
    hold_types TEXT,
    when_soft_deleted TEXT,
    size_mb REAL,
    is_inactive INTEGER,
    auto_expanding_archive INTEGER,
    external_directory_object_id TEXT
);
CREATE INDEX mailbox_tally_groups ON mailbox_tally_cache(company, license, holds, band);
CREATE TRIGGER mailbox_tally_insert AFTER INSERT ON inactive_mailboxes
WHEN (SELECT cached_generation = generation FROM mailbox_tally_state)
BEGIN
    INSERT INTO mailbox_tally_pending VALUES (1, new.operating_company, new.license_type,
        new.hold_types, new.when_soft_deleted, new.size_mb, new.is_inactive,
        new.auto_expanding_archive, new.external_directory_object_id);
END;
CREATE TRIGGER mailbox_tally_delete AFTER DELETE ON inactive_mailboxes
WHEN (SELECT cached_generation = generation FROM mailbox_tally_state)
BEGIN
    INSERT INTO mailbox_tally_pending VALUES (-1, old.operating_company, old.license_type,
        old.hold_types, old.when_soft_deleted, old.size_mb, old.is_inactive,
        old.auto_expanding_archive, old.external_directory_object_id);
END;
CREATE TRIGGER mailbox_tally_update AFTER UPDATE OF operating_company, license_type,
    hold_types, when_soft_deleted, size_mb, is_inactive, auto_expanding_archive,
    external_directory_object_id ON inactive_mailboxes
WHEN (old.operating_company IS NOT new.operating_company
      OR old.license_type IS NOT new.license_type
      OR old.hold_types IS NOT new.hold_types
      OR old.when_soft_deleted IS NOT new.when_soft_deleted
      OR old.size_mb IS NOT new.size_mb
      OR old.is_inactive IS NOT new.is_inactive
      OR old.auto_expanding_archive IS NOT new.auto_expanding_archive
      OR old.external_directory_object_id IS NOT new.external_directory_object_id)
    AND (SELECT cached_generation = generation FROM mailbox_tally_state)
BEGIN
    INSERT INTO mailbox_tally_pending VALUES (-1, old.operating_company, old.license_type,
        old.hold_types, old.when_soft_deleted, old.size_mb, old.is_inactive,
        old.auto_expanding_archive, old.external_directory_object_id);
    INSERT INTO mailbox_tally_pending VALUES (1, new.operating_company, new.license_type,
        new.hold_types, new.when_soft_deleted, new.size_mb, new.is_inactive,
        new.auto_expanding_archive, new.external_directory_object_id);
END;
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_database_is_current_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db/imm.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let mode: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let page_size = |conn: &Connection| -> i64 {
            conn.query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(page_size(&store.conn), PAGE_SIZE);
        let wal_bound = |conn: &Connection| -> i64 {
            let pages: i64 = conn
                .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
                .unwrap();
            pages * page_size(conn)
        };
        assert_eq!(wal_bound(&store.conn), WAL_BOUND);
        drop(store);
        // Reopening an up-to-date database is a no-op.
        assert_eq!(
            Store::open(&path).unwrap().schema_version().unwrap(),
            SCHEMA_VERSION
        );
        // A database made elsewhere keeps its page size.
        let old = dir.path().join("old.db");
        let conn = Connection::open(&old).unwrap();
        conn.execute_batch(MIGRATION_1).unwrap();
        assert_eq!(page_size(&conn), 4096);
        drop(conn);
        let store = Store::open(&old).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(page_size(&store.conn), 4096);
        assert_eq!(wal_bound(&store.conn), WAL_BOUND);
    }

    #[test]
    fn a_long_running_connection_reads_without_the_memory_map_after_a_bulk_load_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imm.db");
        let settings = |store: &Store| -> (i64, i64, i64) {
            let get = |pragma: &str| -> i64 {
                store
                    .conn
                    .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
                    .unwrap()
            };
            (get("mmap_size"), get("cache_size"), get("temp_store"))
        };
        let mut command = Store::open(&path).unwrap();
        let mut daemon = Store::open(&path).unwrap();
        daemon.for_long_running().unwrap();
        assert_eq!(settings(&command), (268_435_456, -65_536, 2));
        assert_eq!(settings(&daemon), (0, -65_536, 2));
        for store in [&mut command, &mut daemon] {
            store.begin_bulk().unwrap();
            assert_eq!(settings(store), (0, -8_192, 1));
            store.end_bulk().unwrap();
        }
        assert_eq!(settings(&command), (268_435_456, -65_536, 2));
        assert_eq!(settings(&daemon), (0, -65_536, 2));
    }
}
