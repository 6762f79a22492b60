//! A prepared statement that binds its parameters without copying them.
//!
//! rusqlite binds every text value with `SQLITE_TRANSIENT`, so SQLite allocates a copy of
//! each one and frees it when the next row is bound. On the mailbox upsert (23 parameters
//! a row) that allocation, copy and release was a quarter of all instructions executed
//! (callgrind, 100,000 rows). rusqlite offers no way to bind with `SQLITE_STATIC`, so this
//! module does it through the C API (`rusqlite::ffi`) on the connection rusqlite owns. It
//! is the crate's main unsafe code (the others, each allowed by name: `malloc_trim` in
//! `memory`, and the process's ids and passwd lookups in `paths::strict`); its soundness
//! rests on one rule, kept by the API shape:
//! [`RawStatement::execute`] binds, steps, resets and clears the bindings in one call, so
//! no pointer SQLite was given outlives the borrowed values it points into.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_int};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use rusqlite::{Connection, ffi};

/// One parameter value, borrowed for the duration of one [`RawStatement::execute`].
#[derive(Debug, Clone, Copy)]
pub(super) enum Param<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
}

impl<'a> From<&'a Option<String>> for Param<'a> {
    fn from(v: &'a Option<String>) -> Self {
        match v {
            Some(s) => Param::Text(s),
            None => Param::Null,
        }
    }
}

impl From<Option<i64>> for Param<'_> {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Param::Null, Param::Int)
    }
}

impl From<Option<f64>> for Param<'_> {
    fn from(v: Option<f64>) -> Self {
        v.map_or(Param::Null, Param::Real)
    }
}

impl From<Option<bool>> for Param<'_> {
    fn from(v: Option<bool>) -> Self {
        v.map_or(Param::Null, |b| Param::Int(i64::from(b)))
    }
}

/// A statement prepared on a borrowed connection, finalized when dropped.
pub(super) struct RawStatement<'conn> {
    db: *mut ffi::sqlite3,
    stmt: NonNull<ffi::sqlite3_stmt>,
    params: usize,
    _conn: PhantomData<&'conn Connection>,
}

impl<'conn> RawStatement<'conn> {
    /// Prepares `sql` (one statement) on `conn`.
    pub(super) fn prepare(conn: &'conn Connection, sql: &str) -> rusqlite::Result<Self> {
        // SAFETY: the handle belongs to `conn`, which this statement borrows, so it stays
        // open while the statement exists; rusqlite's own statements on it are unaffected.
        let db = unsafe { conn.handle() };
        let mut stmt = ptr::null_mut();
        let len = c_int::try_from(sql.len()).map_err(|_| rusqlite::Error::InvalidQuery)?;
        // SAFETY: `sql` is valid for `len` bytes; SQLite writes the new statement to `stmt`.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db,
                sql.as_ptr().cast(),
                len,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(error(db, rc));
        }
        let stmt = NonNull::new(stmt).ok_or(rusqlite::Error::InvalidQuery)?;
        // SAFETY: `stmt` was just prepared and is finalized only by `drop`.
        let params = unsafe { ffi::sqlite3_bind_parameter_count(stmt.as_ptr()) } as usize;
        Ok(RawStatement {
            db,
            stmt,
            params,
            _conn: PhantomData,
        })
    }

    /// Binds `values` to the statement's parameters in order, runs it to completion and
    /// resets it. `values` must hold exactly one value per parameter.
    pub(super) fn execute(&mut self, values: &[Param<'_>]) -> rusqlite::Result<()> {
        if values.len() != self.params {
            return Err(rusqlite::Error::InvalidParameterCount(
                values.len(),
                self.params,
            ));
        }
        let st = self.stmt.as_ptr();
        let mut result = Ok(());
        for (i, v) in values.iter().enumerate() {
            let i = i as c_int + 1;
            // SAFETY: `st` is a live statement and `i` one of its parameters. Text is bound
            // without a copy (`SQLITE_STATIC`); the borrow of `values` outlives this call,
            // and the bindings are cleared below before it returns.
            let rc = unsafe {
                match *v {
                    Param::Null => ffi::sqlite3_bind_null(st, i),
                    Param::Int(n) => ffi::sqlite3_bind_int64(st, i, n),
                    Param::Real(x) => ffi::sqlite3_bind_double(st, i, x),
                    Param::Text(s) => ffi::sqlite3_bind_text64(
                        st,
                        i,
                        s.as_ptr().cast(),
                        s.len() as u64,
                        ffi::SQLITE_STATIC(),
                        ffi::SQLITE_UTF8 as u8,
                    ),
                }
            };
            if rc != ffi::SQLITE_OK {
                result = Err(error(self.db, rc));
                break;
            }
        }
        if result.is_ok() {
            // SAFETY: `st` is live and every parameter is bound.
            let rc = unsafe { ffi::sqlite3_step(st) };
            if rc == ffi::SQLITE_ROW {
                result = Err(rusqlite::Error::ExecuteReturnedResults);
            } else if rc != ffi::SQLITE_DONE {
                result = Err(error(self.db, rc));
            }
        }
        // SAFETY: `st` is live. Resetting returns the error of the last step again, which
        // is already in `result`; clearing drops every pointer into `values`.
        unsafe {
            ffi::sqlite3_reset(st);
            ffi::sqlite3_clear_bindings(st);
        }
        result
    }
}

impl Drop for RawStatement<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement is live and never used again.
        unsafe {
            ffi::sqlite3_finalize(self.stmt.as_ptr());
        }
    }
}

/// The error SQLite reports for `rc` on `db`, as rusqlite would report it.
fn error(db: *mut ffi::sqlite3, rc: c_int) -> rusqlite::Error {
    // SAFETY: `db` is an open connection; the message is copied before any other call.
    let (code, message) = unsafe {
        let code = ffi::sqlite3_extended_errcode(db);
        let msg = ffi::sqlite3_errmsg(db);
        let message = (!msg.is_null()).then(|| CStr::from_ptr(msg).to_string_lossy().into_owned());
        (code, message)
    };
    let code = if code == ffi::SQLITE_OK { rc } else { code };
    rusqlite::Error::SqliteFailure(ffi::Error::new(code), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (a TEXT PRIMARY KEY, b INTEGER, c REAL, d TEXT NOT NULL)",
        )
        .unwrap();
        conn
    }

    #[test]
    fn binds_every_kind_and_the_text_survives_the_borrow() {
        let conn = conn();
        {
            let mut st = RawStatement::prepare(&conn, "INSERT INTO t VALUES (?, ?, ?, ?)").unwrap();
            for i in 0..3 {
                // A fresh buffer each row: SQLite must have finished with the last one.
                let key = format!("key-{i}");
                let text = "ünïcödé".repeat(i + 1);
                st.execute(&[
                    Param::Text(&key),
                    if i == 1 {
                        Param::Null
                    } else {
                        Param::Int(i as i64)
                    },
                    Param::Real(i as f64 + 0.5),
                    Param::Text(&text),
                ])
                .unwrap();
            }
        }
        let rows: Vec<(String, Option<i64>, f64, String)> = conn
            .prepare("SELECT a, b, c, d FROM t ORDER BY a")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[1],
            ("key-1".into(), None, 1.5, "ünïcödéünïcödé".into())
        );
        assert_eq!(rows[2].1, Some(2));
    }

    #[test]
    fn errors_name_the_constraint_and_leave_the_statement_usable() {
        let conn = conn();
        let mut st = RawStatement::prepare(&conn, "INSERT INTO t VALUES (?, ?, ?, ?)").unwrap();
        st.execute(&[Param::Text("a"), Param::Null, Param::Null, Param::Text("x")])
            .unwrap();
        let dup = st
            .execute(&[Param::Text("a"), Param::Null, Param::Null, Param::Text("x")])
            .unwrap_err();
        assert_eq!(
            dup.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation),
            "{dup}"
        );
        assert!(
            dup.to_string().contains("UNIQUE constraint failed: t.a"),
            "{dup}"
        );
        let null = st
            .execute(&[Param::Text("b"), Param::Null, Param::Null, Param::Null])
            .unwrap_err();
        assert!(
            null.to_string().contains("NOT NULL constraint failed: t.d"),
            "{null}"
        );
        assert!(matches!(
            st.execute(&[Param::Text("c")]),
            Err(rusqlite::Error::InvalidParameterCount(1, 4))
        ));
        st.execute(&[
            Param::Text("c"),
            Param::Int(1),
            Param::Real(1.0),
            Param::Text("y"),
        ])
        .unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn a_bad_statement_is_an_error() {
        let conn = conn();
        let err = RawStatement::prepare(&conn, "INSERT INTO nowhere VALUES (?)")
            .err()
            .expect("prepare fails");
        assert!(err.to_string().contains("no such table: nowhere"), "{err}");
    }
}
