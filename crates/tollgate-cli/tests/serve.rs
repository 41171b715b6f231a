//! The `tollgate` binary end to end: a real process, its embedded redis-server, real sockets.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, as the tests do"
)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A plain HTTP/1.0 GET; returns (status, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((status, body))
}

fn tollgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    c.env_remove("TOLLGATE_REDIS_URL")
        .env_remove("TOLLGATE_MASTER_KEY")
        .env_remove("TOLLGATE_LISTEN");
    c
}

/// `tollgate serve` on a free port with `env`, ready (answering `/readyz`). A port taken by
/// another process between our probe and tollgate's bind makes tollgate exit: it is started
/// again on another port.
fn serve_on(env: &[(&str, &str)]) -> (String, Child) {
    for _ in 0..5 {
        let addr = free_addr();
        let mut cmd = tollgate();
        cmd.args(["serve", "--listen", &addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if let Some((200, _)) = http_get(&addr, "/readyz") {
                return (addr, child);
            }
            assert!(
                Instant::now() < deadline,
                "tollgate was not ready within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("tollgate did not start after 5 tries");
}

/// Stops a `tollgate serve` as an operator would (SIGTERM), so its embedded redis-server goes
/// with it; killed if it has not exited within 15 s.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
}

fn one_line_error(output: &Output) -> String {
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tollgate:"))
        .collect();
    assert_eq!(lines.len(), 1, "one plain error line, got: {stderr}");
    lines[0].to_owned()
}

#[test]
fn serve_runs_its_own_redis_and_stops_it_on_sigterm() {
    stops_cleanly_on("TERM");
}

/// A closed terminal (SIGHUP) is a shutdown too: without a handler it killed tollgate at once and
/// left its embedded redis-server running.
#[test]
fn serve_stops_its_own_redis_on_sighup() {
    stops_cleanly_on("HUP");
}

fn stops_cleanly_on(signal: &str) {
    let data = tempfile::tempdir().unwrap();
    let (addr, mut child) = serve_on(&[("TOLLGATE_DATA_DIR", data.path().to_str().unwrap())]);
    assert_eq!(
        http_get(&addr, "/healthz").unwrap(),
        (200, r#"{"status":"ok"}"#.to_owned())
    );
    let socket = data.path().join("redis/redis.sock");
    assert!(
        socket.exists(),
        "the embedded redis listens on a unix socket in the data dir"
    );
    assert!(
        data.path().join("redis/appendonlydir").exists(),
        "AOF persistence is on"
    );
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "tollgate did not exit after SIG{signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    // The embedded redis-server went with it (its socket file is removed on a clean shutdown).
    let deadline = Instant::now() + Duration::from_secs(5);
    while socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the embedded redis-server is still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_uses_an_external_redis_when_given_one() {
    let redis = tollgate_testkit::RedisServer::start();
    let db = tollgate_testkit::TestDatabase::sqlite();
    let db_url = db.url();
    // With an external Redis and a database URL, the data dir is not touched.
    let (_addr, mut child) = serve_on(&[
        ("TOLLGATE_REDIS_URL", &redis.url()),
        ("TOLLGATE_DATABASE_URL", &db_url),
        ("TOLLGATE_DATA_DIR", "/nonexistent/never-used"),
    ]);
    stop(&mut child);
}

#[test]
fn a_missing_redis_server_is_one_clear_line() {
    let data = tempfile::tempdir().unwrap();
    let out = tollgate()
        .args(["serve", "--listen", &free_addr()])
        .env("TOLLGATE_DATA_DIR", data.path())
        .env("TOLLGATE_REDIS_SERVER", "/nonexistent/redis-server")
        .output()
        .unwrap();
    let line = one_line_error(&out);
    assert!(
        line.contains("redis-server not found") && line.contains("TOLLGATE_REDIS_URL"),
        "{line}"
    );
}

#[test]
fn refuses_to_run_open_on_a_public_address() {
    let out = tollgate()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    let line = one_line_error(&out);
    assert!(line.contains("TOLLGATE_MASTER_KEY"), "{line}");
}

#[test]
fn bad_arguments_are_reported_without_a_panic() {
    let out = tollgate()
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value 'not-an-address'"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

#[test]
fn cache_warm_fills_the_cache_and_names_every_bad_line() {
    let redis = tollgate_testkit::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warm.jsonl");
    let line = |q: &str, t: f64| {
        format!(
            r#"{{"model":"mock/echo","temperature":{t},"messages":[{{"role":"user","content":"{q}"}}]}}"#
        )
    };
    let lines = [
        line("one", 0.0),
        line("two", 0.0),
        String::new(),
        line("three", 0.0),
        "{not json".to_owned(),
        line("warm", 0.9),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let warm = || {
        tollgate()
            .args(["cache", "warm"])
            .arg(&file)
            .env("TOLLGATE_REDIS_URL", redis.url())
            .output()
            .unwrap()
    };
    let first = warm();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains("warmed 3, already cached 0, not cacheable 1"),
        "{stdout}"
    );
    assert!(stdout.contains("line 5: not a chat request"), "{stdout}");
    assert!(!first.status.success(), "a failed line fails the command");
    assert_eq!(one_line_error(&first), "tollgate: 1 line(s) failed");
    let second = warm();
    assert!(String::from_utf8_lossy(&second.stdout).contains("warmed 0, already cached 3"));
    // A gateway on the same Redis answers the warmed request from the cache.
    let (addr, mut child) = serve_on(&[("TOLLGATE_REDIS_URL", &redis.url())]);
    let body = line("two", 0.0);
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(s, "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(
        raw.to_ascii_lowercase().contains("x-tollgate-cache: hit"),
        "{raw}"
    );
    stop(&mut child);
}

#[test]
fn config_check_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"nowhere\"\n[limits]\ndefault_tier = \"gold\"\n[cache]\nttl = 5\n",
    )
    .unwrap();
    let out = tollgate()
        .args(["config", "check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("unknown field `cache.ttl`"), "{stdout}");
    assert!(stdout.contains("server.listen"), "{stdout}");
    assert!(stdout.contains("limits.default_tier"), "{stdout}");
    assert_eq!(
        one_line_error(&out),
        "tollgate: 3 problem(s) in the configuration"
    );
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[cache]\ndefault_ttl_seconds = 60\n").unwrap();
    let out = tollgate()
        .args(["config", "check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configuration ok"
    );
}

#[test]
fn config_check_warns_where_a_redis_evicts_what_its_concern_must_keep() {
    let (evicting, keeping) = (
        tollgate_testkit::RedisServer::start(),
        tollgate_testkit::RedisServer::start(),
    );
    for (server, policy) in [(&evicting, "allkeys-lru"), (&keeping, "noeviction")] {
        let client = redis::Client::open(server.url()).unwrap();
        let mut c = client.get_connection().unwrap();
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(policy)
            .exec(&mut c)
            .unwrap();
    }
    // Everything on the evicting one but limits (fine on noeviction) and the cache (not: a full
    // cache that never evicts refuses writes).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("split.toml");
    std::fs::write(
        &path,
        format!(
            "[redis]\nurl = \"{}\"\nlimits_url = \"{}\"\ncache_url = \"{}\"\n",
            evicting.url(),
            keeping.url(),
            keeping.url()
        ),
    )
    .unwrap();
    let out = tollgate()
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "warnings do not fail the check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let warned: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("warning: redis."))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        warned,
        [
            "url",
            "cache_url",
            "streams_url",
            "features_url",
            "vectors_url",
            "events_url",
            "outbox_url"
        ],
        "{stdout}"
    );
    assert!(
        stdout.contains("redis.features_url") && stdout.contains("noeviction advised"),
        "{stdout}"
    );
    assert!(
        stdout.contains("configuration ok, 7 warning(s)"),
        "{stdout}"
    );
}

#[test]
fn keys_are_created_listed_and_revoked_from_the_cli() {
    let redis = tollgate_testkit::RedisServer::start();
    let keys = |args: &[&str]| {
        tollgate()
            .arg("keys")
            .args(args)
            .env("TOLLGATE_REDIS_URL", redis.url())
            .output()
            .unwrap()
    };
    let created = keys(&["create", "--name", "ci-bot", "--rpm", "10"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let text = String::from_utf8_lossy(&created.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap()
            .to_owned()
    };
    let (id, key) = (field("id:"), field("key:"));
    assert!(key.starts_with("tg-"));
    let listed = String::from_utf8_lossy(&keys(&["list"]).stdout).into_owned();
    assert!(
        listed.contains(&id) && listed.contains("ci-bot") && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains(&key), "the key is never shown again");
    assert!(keys(&["revoke", &id]).status.success());
    assert!(String::from_utf8_lossy(&keys(&["list"]).stdout).contains("revoked"));
    let missing = keys(&["revoke", "key_nope"]);
    assert!(one_line_error(&missing).contains("key_nope"));
    let bad_tier = keys(&["create", "--name", "x", "--tier", "platinum"]);
    let said = one_line_error(&bad_tier);
    assert!(said.contains("no tier named \"platinum\""), "{said}");
    assert!(
        said.contains("tiers: default") && said.contains("[tiers.platinum]"),
        "{said}"
    );
}

#[test]
fn events_tail_prints_what_was_published() {
    let redis = tollgate_testkit::RedisServer::start();
    let (addr, mut child) = serve_on(&[("TOLLGATE_REDIS_URL", &redis.url())]);
    for n in 1..=3 {
        let body = format!(r#"{{"n": {n}}}"#);
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(s, "POST /v1/events/clicks HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        assert!(
            raw.starts_with("HTTP/1.0 201") || raw.starts_with("HTTP/1.1 201"),
            "{raw}"
        );
    }
    let out = tollgate()
        .args(["events", "tail", "clicks", "--from-start", "--count", "2"])
        .env("TOLLGATE_REDIS_URL", redis.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["fields"]["n"], "1");
    assert_eq!(lines[1]["fields"]["n"], "2");
    stop(&mut child);
}

#[test]
fn features_load_reports_bad_rows_by_line_and_loads_the_rest() {
    let redis = tollgate_testkit::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("users.csv");
    std::fs::write(&csv, "entity_type,entity_id,group,age,plan\nuser,u1,profile,31,pro\nuser,u2,profile,27\nuser,u3,profile,,free\n").unwrap();
    let jsonl = dir.path().join("items.jsonl");
    std::fs::write(
        &jsonl,
        "{\"entity_type\":\"item\",\"entity_id\":\"i1\",\"group\":\"stats\",\"features\":{\"views\":10}}\n{oops\n",
    )
    .unwrap();
    let load = |file: &std::path::Path| {
        tollgate()
            .args(["features", "load"])
            .arg(file)
            .env("TOLLGATE_REDIS_URL", redis.url())
            .output()
            .unwrap()
    };
    let out = load(&csv);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("loaded 3 feature values"), "{stdout}");
    assert!(stdout.contains("line 3: 4 cells for 5 columns"), "{stdout}");
    assert_eq!(one_line_error(&out), "tollgate: 1 bad row(s)");
    let out = load(&jsonl);
    assert!(String::from_utf8_lossy(&out.stdout).contains("line 2: not a feature row"));
    let (addr, mut child) = serve_on(&[("TOLLGATE_REDIS_URL", &redis.url())]);
    let (status, body) = http_get(&addr, "/v1/features/user/u1?groups=profile").unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["groups"]["profile"]["features"],
        serde_json::json!({"age": 31, "plan": "pro"})
    );
    let (_, body) = http_get(&addr, "/v1/features/user/u3?groups=profile").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["groups"]["profile"]["features"],
        serde_json::json!({"plan": "free"}),
        "empty cells are left out"
    );
    let (_, body) = http_get(&addr, "/v1/features/item/i1?groups=stats").unwrap();
    assert!(body.contains("\"views\":10"), "{body}");
    stop(&mut child);
}

/// The embedded defaults, no config file and no network: the local models answer (chat streamed
/// and not, embeddings), and a paraphrase of a question asked before is a semantic hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_config_the_local_models_answer_and_a_paraphrase_is_a_semantic_hit() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let (addr, mut child) =
        tokio::task::spawn_blocking(move || serve_on(&[("TOLLGATE_DATA_DIR", dir.as_str())]))
            .await
            .unwrap();
    tollgate_providers::init_tls();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let chat = |text: &str, stream: bool| {
        let body = serde_json::json!({"model": "local/smollm2-135m-instruct", "temperature": 0,
            "max_tokens": 20, "stream": stream, "messages": [{"role": "user", "content": text}]});
        let (http, url) = (http.clone(), format!("http://{addr}/v1/chat/completions"));
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let cache = r.headers()["x-tollgate-cache"].to_str().unwrap().to_owned();
            (cache, r.text().await.unwrap())
        }
    };
    let (cache, body) = chat("What is the capital of France?", false).await;
    assert_eq!(cache, "miss");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text}");
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    // The same question reworded: an exact-cache miss, a semantic hit at the default threshold
    // (0.997), streamed from the cached answer.
    let (cache, body) = chat("What's the capital of France", true).await;
    assert_eq!(cache, "semantic", "{body}");
    assert!(
        body.contains("Paris") && body.trim_end().ends_with("data: [DONE]"),
        "{body}"
    );
    let (cache, _) = chat("How do I increase traffic of my blog?", false).await;
    assert_eq!(cache, "miss");
    let (cache, body) = chat("How do I increase the traffic of my blog?", false).await;
    assert_eq!(cache, "semantic", "a rewording (similarity 0.998): {body}");
    let (cache, body) = chat("Name a colour of the rainbow.", true).await;
    assert_eq!(cache, "miss");
    assert!(
        body.matches("data: ").count() > 3,
        "streamed token by token: {body}"
    );
    let r = http
        .post(format!("http://{addr}/v1/embeddings"))
        .json(&serde_json::json!({"model": "local/all-minilm-l6-v2", "input": ["hello", "world"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let embeddings: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        embeddings["data"][1]["embedding"].as_array().unwrap().len(),
        384
    );
    stop(&mut child);
}

/// A plain HTTP/1.0 POST of JSON; returns (status, body).
fn http_post(addr: &str, path: &str, json: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
        json.len()
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((status, body))
}

/// With its PostgreSQL away, tollgate starts and serves; `/readyz` says the database is
/// missing, and the records of what it answered wait in the outbox (written just after the
/// answer).
#[test]
fn serve_starts_and_answers_while_its_database_is_away() {
    let redis = tollgate_testkit::RedisServer::start();
    // Nothing listens on port 1.
    let away = "postgres://postgres@127.0.0.1:1/tollgate";
    let (addr, mut child) = serve_on(&[
        ("TOLLGATE_REDIS_URL", &redis.url()),
        ("TOLLGATE_DATABASE_URL", away),
    ]);
    let (status, body) = http_get(&addr, "/readyz").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"degraded\""), "{body}");
    assert!(body.contains("\"database\":\"unreachable"), "{body}");
    let (status, body) = http_post(
        &addr,
        "/v1/chat/completions",
        r#"{"model": "mock/echo", "messages": [{"role": "user", "content": "still here"}]}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    // The usage record follows the answer: wait for it a while.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queued: u64 = redis::cmd("XLEN")
            .arg("tg:{ev:outbox}")
            .query(&mut conn)
            .unwrap();
        if queued >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the usage record is not in the outbox"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(&mut child);
}

/// The process id of the Redis answering on `socket`.
fn redis_pid(socket: &std::path::Path) -> Option<u32> {
    let client = redis::Client::open(format!("unix://{}", socket.display())).ok()?;
    let mut conn = client.get_connection().ok()?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut conn).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
}

/// A tollgate killed with SIGKILL leaves its embedded redis-server running; the next start on
/// the same data dir tells it from a live gateway's, stops it, and serves on the same data.
#[test]
fn an_orphaned_embedded_redis_is_stopped_at_the_next_start() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let (addr, mut first) = serve_on(&[("TOLLGATE_DATA_DIR", dir)]);
    let (status, body) = http_post(
        &addr,
        "/v1/sessions",
        r#"{"id": "kept", "system": "remember me"}"#,
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let socket = data.path().join("redis/redis.sock");
    let orphan = redis_pid(&socket).unwrap();
    first.kill().unwrap(); // SIGKILL: no shutdown, the redis-server child stays.
    first.wait().unwrap();
    assert!(
        std::path::Path::new(&format!("/proc/{orphan}")).exists(),
        "the embedded redis-server should outlive a SIGKILLed gateway"
    );
    // A live gateway's Redis is refused; a dead one's is taken over.
    let (addr, mut second) = serve_on(&[("TOLLGATE_DATA_DIR", dir)]);
    let now = redis_pid(&socket).unwrap();
    assert_ne!(now, orphan);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{orphan}/cmdline")).exists()
        && std::fs::read(format!("/proc/{orphan}/cmdline")).is_ok_and(|c| !c.is_empty())
    {
        assert!(Instant::now() < deadline, "the orphan still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its data came along (AOF).
    let (status, body) = http_get(&addr, "/v1/sessions/kept").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("remember me"), "{body}");
    let third = tollgate()
        .args(["serve", "--listen", &free_addr()])
        .env("TOLLGATE_DATA_DIR", dir)
        .output()
        .unwrap();
    assert!(one_line_error(&third).contains("in use by another tollgate"));
    // Stopped cleanly, it takes its redis-server with it.
    stop(&mut second);
}
