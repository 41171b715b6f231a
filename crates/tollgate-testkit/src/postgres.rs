//! A fresh PostgreSQL database for one test, on the machine's real server.
//!
//! The server is the one at `TOLLGATE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`; `.ci/run` makes sure it is up). Each
//! [`PostgresDb`] creates a database of its own with `psql` and drops it on drop, so tests never
//! see each other's rows.

use std::process::Command;

/// The admin URL of the test server.
pub fn postgres_admin_url() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database created for one test; dropped (connections and all) on drop.
#[derive(Debug)]
pub struct PostgresDb {
    admin: String,
    name: String,
}

impl PostgresDb {
    /// Creates `tollgate_test_<uuid>`. Panics with the fix when no server answers.
    pub fn create() -> Self {
        let admin = postgres_admin_url();
        let name = format!("tollgate_test_{}", uuid::Uuid::new_v4().simple());
        psql(&admin, &format!("CREATE DATABASE {name}"));
        PostgresDb { admin, name }
    }

    /// The database's URL.
    pub fn url(&self) -> String {
        match self.admin.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{}", self.name),
            None => format!("{}/{}", self.admin, self.name),
        }
    }

    /// Runs one SQL statement and returns its output (unaligned, tuples only).
    pub fn query(&self, sql: &str) -> String {
        psql(&self.url(), sql)
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([&self.admin, "-q", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args([
            url,
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs (Debian's postgresql-client; scripts/install-deps.sh installs it)");
    assert!(
        output.status.success(),
        "psql {url} -c {sql:?} failed (is PostgreSQL up? `.ci/run` starts it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A fresh database of a kind tollgate writes to: a SQLite file in a temp dir, or a
/// [`PostgresDb`]; gone on drop.
#[derive(Debug)]
pub enum TestDatabase {
    Sqlite(tempfile::TempDir),
    Postgres(PostgresDb),
}

impl TestDatabase {
    /// A SQLite file in a temp dir of its own.
    pub fn sqlite() -> Self {
        TestDatabase::Sqlite(tempfile::tempdir().expect("temp dir for SQLite"))
    }

    /// One of each kind, for tests that must hold on both.
    pub fn both() -> Vec<Self> {
        vec![
            TestDatabase::sqlite(),
            TestDatabase::Postgres(PostgresDb::create()),
        ]
    }

    /// The URL `TOLLGATE_DATABASE_URL` takes.
    pub fn url(&self) -> String {
        match self {
            TestDatabase::Sqlite(dir) => format!("sqlite:{}", dir.path().join("t.db").display()),
            TestDatabase::Postgres(db) => db.url(),
        }
    }
}
