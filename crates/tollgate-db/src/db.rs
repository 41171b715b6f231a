//! The database: SQLite (a file in the data dir, the default) or PostgreSQL, one schema, one set
//! of statements. Migrations run at start, under an advisory lock on PostgreSQL so replicas
//! starting together do not race.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::records::{
    Record, ResponseRow, Served, SessionMessageRow, SessionRow, SpendRow, TimelineRow, UsageRow,
};
use crate::{Error, Result};

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The schema, in order. A migration is never edited once released; a change is a new one.
const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL, \
         version BIGINT NOT NULL, created_ms BIGINT NOT NULL, body TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, owner TEXT NOT NULL, \
         system TEXT, summary TEXT, summary_seq BIGINT NOT NULL, created_ms BIGINT NOT NULL, \
         version BIGINT NOT NULL, deleted BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS session_messages (session_id TEXT NOT NULL, \
         seq BIGINT NOT NULL, owner TEXT NOT NULL, created_ms BIGINT NOT NULL, \
         tokens BIGINT NOT NULL, message TEXT NOT NULL, PRIMARY KEY (session_id, seq))",
            "CREATE TABLE IF NOT EXISTS usage_records (id TEXT PRIMARY KEY, key_id TEXT NOT NULL, \
         tenant TEXT NOT NULL, model TEXT NOT NULL, prompt_tokens BIGINT NOT NULL, \
         completion_tokens BIGINT NOT NULL, cost_nanos BIGINT NOT NULL, cached BIGINT NOT NULL, \
         created_ms BIGINT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS usage_records_by_key ON usage_records (key_id, created_ms)",
        ],
    ),
    (
        2,
        &["CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"],
    ),
    (
        3,
        &["CREATE INDEX IF NOT EXISTS usage_records_by_time ON usage_records (created_ms)"],
    ),
];

/// Rows per INSERT statement (well under both databases' limits on bound parameters).
const ROWS_PER_STATEMENT: usize = 100;

/// A connection pool to the database.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    /// Set once the migrations ran (at connect, or at the first use of a lazy connection).
    migrated: std::sync::Arc<tokio::sync::OnceCell<()>>,
}

impl Database {
    /// Connects to `url` (`sqlite:PATH`, `sqlite://PATH`, `postgres://...`) and runs the
    /// migrations. A SQLite file is created if missing, in WAL mode.
    pub async fn connect(url: &str) -> Result<Self> {
        let db = Self::connect_lazy(url)?;
        db.ready().await?;
        Ok(db)
    }

    /// A database that connects, and runs its migrations, when first used (and again after a
    /// failure): a gateway starts while its database is away, and its records wait in the
    /// outbox. Only a malformed URL fails here.
    pub fn connect_lazy(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(Error::Config("a sqlite URL needs a file path".into()));
            }
            let path = path.split('?').next().unwrap_or(path);
            (Backend::Sqlite, format!("sqlite://{path}?mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(Error::Config(format!(
                "database URL must start with sqlite: or postgres:// (got {:?})",
                url.split(':').next().unwrap_or("")
            )));
        };
        let options = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(5));
        let options = if backend == Backend::Sqlite {
            options.after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = NORMAL",
                        "PRAGMA busy_timeout = 5000",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
        } else {
            options
        };
        let pool = options.connect_lazy(&url)?;
        Ok(Database {
            pool,
            backend,
            migrated: std::sync::Arc::default(),
        })
    }

    /// Connected and migrated (once; tried again on the next use after a failure).
    pub async fn ready(&self) -> Result<()> {
        self.migrated
            .get_or_try_init(|| self.migrate())
            .await
            .map(|_| ())
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for queries of the caller's own.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7243001)")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS tollgate_migrations (version BIGINT PRIMARY KEY, \
             applied_ms BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM tollgate_migrations")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<std::result::Result<_, _>>()?;
        for (version, statements) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            for statement in *statements {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO tollgate_migrations (version, applied_ms) VALUES ($1, $2)")
                .bind(*version)
                .bind(crate::now_ms())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes `records` in one transaction, idempotently (see [`crate::records`]).
    pub async fn write(&self, records: Vec<Record>) -> Result<()> {
        self.ready().await?;
        // A session's end takes the messages written before it even when the session's next
        // life is in the same batch (and so its row, newer, is the one kept below).
        let ended: Vec<(String, String, i64)> = records
            .iter()
            .filter_map(|r| match r {
                Record::Session(s) if s.deleted => Some((s.id.clone(), s.owner.clone(), s.version)),
                _ => None,
            })
            .collect();
        let records = Record::latest(records);
        let (mut responses, mut sessions, mut messages, mut usage) =
            (vec![], vec![], vec![], vec![]);
        for record in records {
            match record {
                Record::Response(r) => responses.push(r),
                Record::Session(s) => sessions.push(s),
                Record::SessionMessage(m) => messages.push(m),
                Record::Usage(u) => usage.push(u),
            }
        }
        let mut tx = self.pool.begin().await?;
        for chunk in pieces(&responses) {
            let sql = insert_sql(
                self.backend,
                "responses (id, owner, version, created_ms, body)",
                5,
                chunk.len(),
                "ON CONFLICT (id) DO UPDATE SET version = excluded.version, \
                 created_ms = excluded.created_ms, body = excluded.body \
                 WHERE responses.version < excluded.version AND responses.owner = excluded.owner",
            );
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(&r.id)
                    .bind(&r.owner)
                    .bind(r.version)
                    .bind(r.created_ms)
                    .bind(&r.body);
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in pieces(&sessions) {
            let sql = insert_sql(
                self.backend,
                "sessions (id, owner, system, summary, summary_seq, created_ms, version, deleted)",
                8,
                chunk.len(),
                "ON CONFLICT (id) DO UPDATE SET system = excluded.system, \
                 summary = excluded.summary, summary_seq = excluded.summary_seq, \
                 created_ms = excluded.created_ms, version = excluded.version, \
                 deleted = excluded.deleted \
                 WHERE sessions.version < excluded.version AND sessions.owner = excluded.owner",
            );
            let mut q = sqlx::query(&sql);
            for s in chunk {
                q = q
                    .bind(&s.id)
                    .bind(&s.owner)
                    .bind(s.system.clone())
                    .bind(s.summary.clone())
                    .bind(s.summary_seq)
                    .bind(s.created_ms)
                    .bind(s.version)
                    .bind(i64::from(s.deleted));
            }
            q.execute(&mut *tx).await?;
        }
        // A message is inserted once; at a place a message of the session's earlier life still
        // holds (deleted or ended, then started again and numbered from there, its deletion not
        // written yet), the newer one takes it.
        for chunk in pieces(&messages) {
            let sql = insert_sql(
                self.backend,
                "session_messages (session_id, seq, owner, created_ms, tokens, message)",
                6,
                chunk.len(),
                "ON CONFLICT (session_id, seq) DO UPDATE SET created_ms = excluded.created_ms, \
                 tokens = excluded.tokens, message = excluded.message \
                 WHERE session_messages.created_ms < excluded.created_ms \
                 AND session_messages.owner = excluded.owner",
            );
            let mut q = sqlx::query(&sql);
            for m in chunk {
                q = q
                    .bind(&m.session_id)
                    .bind(m.seq)
                    .bind(&m.owner)
                    .bind(m.created_ms)
                    .bind(m.tokens)
                    .bind(&m.message);
            }
            q.execute(&mut *tx).await?;
        }
        // A deleted session takes its messages with it (its owner's deletion only): those written
        // before it was deleted, after they are written, so that none of this batch stays.
        for (id, owner, version) in &ended {
            sqlx::query(
                "DELETE FROM session_messages WHERE session_id = $1 AND created_ms <= $2 \
                 AND owner = $3",
            )
            .bind(id)
            .bind(*version)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        }
        // And a message written after its session's deletion (by a slower writer) goes too.
        let mut written: Vec<&str> = messages.iter().map(|m| m.session_id.as_str()).collect();
        written.sort_unstable();
        written.dedup();
        for chunk in pieces(&written) {
            let sql = format!(
                "DELETE FROM session_messages WHERE session_id IN ({}) AND EXISTS (SELECT 1 FROM \
                 sessions WHERE sessions.id = session_messages.session_id AND sessions.deleted = 1 \
                 AND sessions.owner = session_messages.owner \
                 AND sessions.version >= session_messages.created_ms)",
                placeholders(self.backend, 0, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in pieces(&usage) {
            let sql = insert_sql(
                self.backend,
                "usage_records (id, key_id, tenant, model, prompt_tokens, completion_tokens, \
                 cost_nanos, cached, created_ms)",
                9,
                chunk.len(),
                "ON CONFLICT (id) DO NOTHING",
            );
            let mut q = sqlx::query(&sql);
            for u in chunk {
                q = q
                    .bind(&u.id)
                    .bind(&u.key_id)
                    .bind(&u.tenant)
                    .bind(&u.model)
                    .bind(u.prompt_tokens)
                    .bind(u.completion_tokens)
                    .bind(u.cost_nanos)
                    .bind(u.served.code())
                    .bind(u.created_ms);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A stored response (a deleted one comes back as its tombstone).
    pub async fn response(&self, id: &str) -> Result<Option<ResponseRow>> {
        self.ready().await?;
        let row =
            sqlx::query("SELECT id, owner, version, created_ms, body FROM responses WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(response_row).transpose()
    }

    /// Claims session id `id` for `owner` unless it is taken, and answers who owns it: `owner`
    /// when it was free or already `owner`'s, else the owner it has had since it was first
    /// claimed. A session id belongs to one owner for life (deleted, it stays taken); every
    /// write of a session row keeps the owner it has.
    pub async fn claim_session(&self, id: &str, owner: &str, now_ms: i64) -> Result<String> {
        self.ready().await?;
        sqlx::query(
            "INSERT INTO sessions (id, owner, system, summary, summary_seq, created_ms, version, \
             deleted) VALUES ($1, $2, NULL, NULL, 0, $3, 0, 0) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(owner)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT owner FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Answers when the database does (connected, migrated, a `SELECT 1`).
    pub async fn ping(&self) -> Result<()> {
        self.ready().await?;
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// This database's identity: made once, the first time it is asked for, and kept. Replicas
    /// compare it to tell whether they share one database.
    pub async fn identity(&self) -> Result<String> {
        self.ready().await?;
        let made = format!("db_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(
            "INSERT INTO meta (name, value) VALUES ('identity', $1) ON CONFLICT (name) DO NOTHING",
        )
        .bind(made)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT value FROM meta WHERE name = 'identity'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// A session's metadata (a deleted one comes back with `deleted`).
    pub async fn session(&self, id: &str) -> Result<Option<SessionRow>> {
        self.ready().await?;
        let row = sqlx::query(
            "SELECT id, owner, system, summary, summary_seq, created_ms, version, deleted \
             FROM sessions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_row).transpose()
    }

    /// The last `limit` messages of a session, oldest first.
    pub async fn session_messages(
        &self,
        session_id: &str,
        limit: i64,
    ) -> Result<Vec<SessionMessageRow>> {
        self.ready().await?;
        let rows = sqlx::query(
            "SELECT session_id, seq, owner, created_ms, tokens, message FROM session_messages \
             WHERE session_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(session_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(SessionMessageRow {
                    session_id: r.try_get(0)?,
                    seq: r.try_get(1)?,
                    owner: r.try_get(2)?,
                    created_ms: r.try_get(3)?,
                    tokens: r.try_get(4)?,
                    message: r.try_get(5)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    /// Spend per key and model since `since_ms` (of one key, or of all).
    pub async fn spend(&self, key_id: Option<&str>, since_ms: i64) -> Result<Vec<SpendRow>> {
        self.ready().await?;
        let sql = format!(
            "SELECT key_id, model, CAST(COUNT(*) AS BIGINT), \
             CAST(SUM(prompt_tokens) AS BIGINT), CAST(SUM(completion_tokens) AS BIGINT), \
             CAST(SUM(cost_nanos) AS BIGINT) FROM usage_records WHERE created_ms >= $1 {} \
             GROUP BY key_id, model ORDER BY key_id, model",
            if key_id.is_some() {
                "AND key_id = $2"
            } else {
                ""
            }
        );
        let mut q = sqlx::query(&sql).bind(since_ms);
        if let Some(k) = key_id {
            q = q.bind(k);
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(spend_row)
            .collect()
    }

    /// Requests per model in steps of `step_ms` since `since_ms` (of one tenant, or of all),
    /// oldest first: how many, how each kind of cache answered, what the hits' answers held and
    /// what the rest cost. Steps without requests are left out.
    pub async fn timeline(
        &self,
        tenant: Option<&str>,
        since_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<TimelineRow>> {
        self.ready().await?;
        let step = step_ms.max(1);
        let count =
            |code: i64| format!("CAST(SUM(CASE WHEN cached = {code} THEN 1 ELSE 0 END) AS BIGINT)");
        let hit_tokens = |column: &str| {
            format!("CAST(SUM(CASE WHEN cached IN (1, 2) THEN {column} ELSE 0 END) AS BIGINT)")
        };
        // The step is a number in the statement (a bound one would be a different type on each
        // backend); it is an i64, so nothing but digits.
        let sql = format!(
            "SELECT (created_ms / {step}) * {step} AS start_ms, model, CAST(COUNT(*) AS BIGINT), \
             {exact}, {semantic}, {coalesced}, {prompt}, {completion}, \
             CAST(SUM(cost_nanos) AS BIGINT) FROM usage_records WHERE created_ms >= $1 {tenant} \
             GROUP BY start_ms, model ORDER BY start_ms, model",
            exact = count(Served::Exact.code()),
            semantic = count(Served::Semantic.code()),
            coalesced = count(Served::Coalesced.code()),
            prompt = hit_tokens("prompt_tokens"),
            completion = hit_tokens("completion_tokens"),
            tenant = if tenant.is_some() {
                "AND tenant = $2"
            } else {
                ""
            },
        );
        let mut q = sqlx::query(&sql).bind(since_ms);
        if let Some(t) = tenant {
            q = q.bind(t);
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(TimelineRow {
                    start_ms: r.try_get(0)?,
                    model: r.try_get(1)?,
                    requests: r.try_get(2)?,
                    exact: r.try_get(3)?,
                    semantic: r.try_get(4)?,
                    coalesced: r.try_get(5)?,
                    hit_prompt_tokens: r.try_get(6)?,
                    hit_completion_tokens: r.try_get(7)?,
                    cost_nanos: r.try_get(8)?,
                })
            })
            .collect()
    }

    /// Rows of usage records (for checks and reports).
    pub async fn usage(&self, key_id: &str) -> Result<Vec<UsageRow>> {
        self.ready().await?;
        let rows = sqlx::query(
            "SELECT id, key_id, tenant, model, prompt_tokens, completion_tokens, cost_nanos, \
             cached, created_ms FROM usage_records WHERE key_id = $1 ORDER BY created_ms, id",
        )
        .bind(key_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(usage_row).collect()
    }

    /// The newest `limit` usage records (one per request), of one tenant or of all, newest first.
    pub async fn recent_usage(&self, tenant: Option<&str>, limit: i64) -> Result<Vec<UsageRow>> {
        self.ready().await?;
        let columns = "SELECT id, key_id, tenant, model, prompt_tokens, completion_tokens, \
                       cost_nanos, cached, created_ms FROM usage_records";
        let rows = match tenant {
            Some(t) => {
                sqlx::query(&format!(
                    "{columns} WHERE tenant = $1 ORDER BY created_ms DESC, id DESC LIMIT $2"
                ))
                .bind(t)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "{columns} ORDER BY created_ms DESC, id DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(usage_row).collect()
    }
}

impl Database {
    /// The sessions of `owners` (of everyone: `None`) written most recently, newest first; not
    /// the deleted ones.
    pub async fn recent_sessions(
        &self,
        owners: Option<&[String]>,
        limit: i64,
    ) -> Result<Vec<SessionRow>> {
        self.ready().await?;
        if owners.is_some_and(<[String]>::is_empty) {
            return Ok(Vec::new());
        }
        let (filter, n) = owner_filter(owners);
        let sql = format!(
            "SELECT id, owner, system, summary, summary_seq, created_ms, version, deleted \
             FROM sessions WHERE deleted = 0{filter} ORDER BY version DESC, id LIMIT ${}",
            n + 1
        );
        let mut q = sqlx::query(&sql);
        for owner in owners.into_iter().flatten() {
            q = q.bind(owner);
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(session_row).collect()
    }

    /// The stored responses of `owners` (of everyone: `None`) created most recently, newest
    /// first; not the deleted ones.
    pub async fn recent_responses(
        &self,
        owners: Option<&[String]>,
        limit: i64,
    ) -> Result<Vec<ResponseRow>> {
        self.ready().await?;
        if owners.is_some_and(<[String]>::is_empty) {
            return Ok(Vec::new());
        }
        let (filter, n) = owner_filter(owners);
        let sql = format!(
            "SELECT id, owner, version, created_ms, body FROM responses \
             WHERE version <> {}{filter} ORDER BY created_ms DESC, id LIMIT ${}",
            crate::records::DELETED,
            n + 1
        );
        let mut q = sqlx::query(&sql);
        for owner in owners.into_iter().flatten() {
            q = q.bind(owner);
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(response_row).collect()
    }
}

/// ` AND owner IN ($1, ..., $n)` for `owners` (nothing for everyone), and n.
fn owner_filter(owners: Option<&[String]>) -> (String, usize) {
    match owners {
        None => (String::new(), 0),
        Some(owners) => {
            let marks: Vec<String> = (1..=owners.len()).map(|i| format!("${i}")).collect();
            (
                format!(" AND owner IN ({})", marks.join(", ")),
                owners.len(),
            )
        }
    }
}

/// A `sessions` row selected as `id, owner, system, summary, summary_seq, created_ms, version,
/// deleted`.
fn session_row(r: &AnyRow) -> Result<SessionRow> {
    Ok(SessionRow {
        id: r.try_get(0)?,
        owner: r.try_get(1)?,
        system: r.try_get(2)?,
        summary: r.try_get(3)?,
        summary_seq: r.try_get(4)?,
        created_ms: r.try_get(5)?,
        version: r.try_get(6)?,
        deleted: r.try_get::<i64, _>(7)? != 0,
    })
}

/// A `responses` row selected as `id, owner, version, created_ms, body`.
fn response_row(r: &AnyRow) -> Result<ResponseRow> {
    Ok(ResponseRow {
        id: r.try_get(0)?,
        owner: r.try_get(1)?,
        version: r.try_get(2)?,
        created_ms: r.try_get(3)?,
        body: r.try_get(4)?,
    })
}

fn usage_row(r: &AnyRow) -> Result<UsageRow> {
    Ok(UsageRow {
        id: r.try_get(0)?,
        key_id: r.try_get(1)?,
        tenant: r.try_get(2)?,
        model: r.try_get(3)?,
        prompt_tokens: r.try_get(4)?,
        completion_tokens: r.try_get(5)?,
        cost_nanos: r.try_get(6)?,
        served: Served::from_code(r.try_get(7)?),
        created_ms: r.try_get(8)?,
    })
}

/// SUM over BIGINT is NUMERIC on PostgreSQL: the statement casts the sums back to BIGINT.
fn spend_row(r: &AnyRow) -> Result<SpendRow> {
    Ok(SpendRow {
        key_id: r.try_get(0)?,
        model: r.try_get(1)?,
        requests: r.try_get(2)?,
        prompt_tokens: r.try_get(3)?,
        completion_tokens: r.try_get(4)?,
        cost_nanos: r.try_get(5)?,
    })
}

/// `rows` cut into statements of a few fixed sizes: as many of `ROWS_PER_STATEMENT` as fit,
/// then powers of two. A statement's text depends only on its row count, so a batch of any size
/// reuses at most eight prepared statements per table instead of parsing a new one for each
/// size (which kept the statement cache thrashing and the database parsing SQL).
fn pieces<T>(rows: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let take = if rest.len() >= ROWS_PER_STATEMENT {
            ROWS_PER_STATEMENT
        } else {
            1 << rest.len().ilog2()
        };
        let (piece, tail) = rest.split_at(take);
        out.push(piece);
        rest = tail;
    }
    out
}

/// `n` parameters, comma-separated, numbered from `after + 1` as `backend` numbers them. On
/// SQLite they are anonymous (`?`, bound in order): binding a numbered one makes the driver look
/// its name up, a walk of every parameter, so a statement of N took N² steps.
fn placeholders(backend: Backend, after: usize, n: usize) -> String {
    let mut out = String::with_capacity(n * 5);
    push_placeholders(&mut out, backend, after, n);
    out
}

/// Appends the placeholders of parameters `after + 1 ..= after + n` to `out`, comma-separated.
fn push_placeholders(out: &mut String, backend: Backend, after: usize, n: usize) {
    use std::fmt::Write as _;
    for i in after + 1..=after + n {
        if i > after + 1 {
            out.push_str(", ");
        }
        match backend {
            Backend::Sqlite => out.push('?'),
            Backend::Postgres => {
                let _ = write!(out, "${i}");
            }
        }
    }
}

/// `INSERT INTO {table} VALUES ($1, ...), (...) {conflict}` for `rows` rows of `columns`.
fn insert_sql(
    backend: Backend,
    table: &str,
    columns: usize,
    rows: usize,
    conflict: &str,
) -> String {
    let mut sql = String::with_capacity(32 + table.len() + conflict.len() + rows * columns * 5);
    sql.push_str("INSERT INTO ");
    sql.push_str(table);
    sql.push_str(" VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        push_placeholders(&mut sql, backend, row * columns, columns);
        sql.push(')');
    }
    sql.push(' ');
    sql.push_str(conflict);
    sql
}

#[cfg(test)]
mod tests {
    #[test]
    fn batches_are_cut_into_a_few_fixed_statement_sizes() {
        let rows: Vec<u32> = (0..(2 * super::ROWS_PER_STATEMENT as u32 + 77)).collect();
        let sizes: Vec<usize> = super::pieces(&rows).iter().map(|p| p.len()).collect();
        assert_eq!(sizes, vec![100, 100, 64, 8, 4, 1]);
        let again: Vec<u32> = super::pieces(&rows).concat();
        assert_eq!(again, rows, "every row once, in order");
        assert!(super::pieces::<u32>(&[]).is_empty());
    }

    use super::{Backend, insert_sql};

    #[test]
    fn insert_sql_numbers_every_parameter_in_order() {
        assert_eq!(
            insert_sql(
                Backend::Postgres,
                "t (a, b)",
                2,
                2,
                "ON CONFLICT (a) DO NOTHING"
            ),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) ON CONFLICT (a) DO NOTHING"
        );
        assert_eq!(
            insert_sql(Backend::Sqlite, "t (a, b)", 2, 2, ""),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?) "
        );
    }
}
