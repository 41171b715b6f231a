//! Durable records end to end: real `tollgate serve` processes, a real redis-server, a fresh
//! PostgreSQL database, and the official `openai` Python package.

#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Replica, config_file};
use serde_json::{Value, json};
use tollgate_testkit::{PostgresDb, RedisServer};

async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Waits until the outbox (default prefix) is empty: every record is in the database.
async fn drained(conn: &mut redis::aio::MultiplexedConnection) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let backlog: u64 = redis::cmd("XLEN")
            .arg("tg:{ev:outbox}")
            .query_async(conn)
            .await
            .unwrap();
        if backlog == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{backlog} records still in the outbox"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `sql` reads `want` (a usage record follows its answer, so it may still be on its
/// way to the outbox when the client has the answer).
async fn until_reads(db: &PostgresDb, sql: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = db.query(sql);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sql} reads {got}, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn python(replica: &Replica, phase: &str, env: &[(&str, &str)]) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/responses_chain.py"
    );
    let mut cmd = Command::new(tollgate_testkit::python_tool("python3"));
    cmd.arg(script)
        .arg(phase)
        .env("OPENAI_BASE_URL", replica.url("/v1"))
        .env("OPENAI_API_KEY", "unused");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = cmd.output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'openai'"),
        "install the client: scripts/install-test-deps.sh"
    );
    assert!(
        output.status.success(),
        "python {phase} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_through_the_openai_package_survives_flushall_on_postgresql() {
    let redis = RedisServer::start();
    let db = PostgresDb::create();
    let (_dir, path) = config_file("");
    let replica = Replica::start(&redis.url(), &path, &[("TOLLGATE_DATABASE_URL", &db.url())]);
    let chain = python(&replica, "chain", &[]);
    let chain = chain.lines().last().unwrap().to_owned();
    let parsed: Value = serde_json::from_str(&chain).unwrap();
    assert_eq!(parsed["ids"].as_array().unwrap().len(), 6);

    let mut conn = redis_conn(&redis).await;
    until_reads(&db, "SELECT COUNT(*) FROM usage_records", "6").await;
    drained(&mut conn).await;
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    // Another process, with nothing in Redis: the chain comes from PostgreSQL.
    let (_dir2, path2) = config_file("");
    let other = Replica::start(
        &redis.url(),
        &path2,
        &[("TOLLGATE_DATABASE_URL", &db.url())],
    );
    let out = python(&other, "continue", &[("CHAIN", &chain)]);
    assert!(out.contains("continued ok"), "{out}");
    until_reads(&db, "SELECT COUNT(*) FROM usage_records", "7").await;
    drained(&mut conn).await;
    // 7 responses, the first deleted (a tombstone), each written once.
    assert_eq!(db.query("SELECT COUNT(*) FROM responses"), "7");
    assert_eq!(
        db.query("SELECT COUNT(*) FROM responses WHERE body = ''"),
        "1"
    );
    // One usage record per request that reached the model (the refused one did not).
    assert_eq!(db.query("SELECT COUNT(*) FROM usage_records"), "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_under_load_loses_no_record_and_writes_none_twice() {
    let redis = RedisServer::start();
    let db = PostgresDb::create();
    // Small batches, and a short idle time before another writer takes over a dead one's.
    let (_dir, path) = config_file("[outbox]\nbatch = 20\nclaim_idle_seconds = 1\n");
    let env = [("TOLLGATE_DATABASE_URL", db.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut victim = Replica::start(&redis.url(), &path, &env);
    tollgate_providers::init_tls();
    let http = reqwest::Client::new();

    // 8 clients send responses requests until the victim dies under them.
    let url = victim.url("/v1/responses");
    let mut clients = Vec::new();
    for c in 0..8 {
        let (http, url) = (http.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let mut ok = Vec::new();
            for i in 0..1000 {
                let body =
                    json!({"model": "mock/echo", "input": format!("client {c} request {i}")});
                match http.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        let v: Value = r.json().await.unwrap();
                        ok.push(v["id"].as_str().unwrap().to_owned());
                    }
                    _ => break,
                }
            }
            ok
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    victim.kill();
    let mut answered = Vec::new();
    for c in clients {
        answered.extend(c.await.unwrap());
    }
    assert!(answered.len() > 50, "only {} answered", answered.len());

    // A new process's writer takes over what the dead one left.
    let survivor = Replica::start(&redis.url(), &path, &env);
    let mut conn = redis_conn(&redis).await;
    drained(&mut conn).await;
    let written: std::collections::HashSet<String> = db
        .query("SELECT id FROM responses")
        .lines()
        .map(str::to_owned)
        .collect();
    let missing: Vec<&String> = answered
        .iter()
        .filter(|id| !written.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} answered responses not in the database",
        missing.len()
    );
    // One usage record per answered request, and at most one per request sent (a request cut
    // by the kill may or may not have been recorded).
    let usage: usize = db
        .query("SELECT COUNT(*) FROM usage_records")
        .parse()
        .unwrap();
    let rows: usize = db.query("SELECT COUNT(*) FROM responses").parse().unwrap();
    assert!(
        usage >= answered.len() && usage <= answered.len() + 8,
        "{usage} usage rows for {} answers",
        answered.len()
    );
    assert!(
        rows >= answered.len() && rows <= answered.len() + 8,
        "{rows} rows for {} answers",
        answered.len()
    );
    drop(survivor);
}
