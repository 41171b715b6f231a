//! Real `tollgate` processes for end-to-end tests: each on a free port, killed on drop.

#![allow(dead_code, reason = "each test binary uses part of this")]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `tollgate serve`.
pub(crate) struct Replica {
    child: Child,
    pub(crate) base: String,
    /// Its data dir (the SQLite database unless the test names another), unless the test set one.
    _data: tempfile::TempDir,
}

/// The one database the replicas of a Redis share (replicas on one Redis must: the outbox is
/// bound to one database), unless a test names its own: a SQLite file named for the Redis
/// server's run id (so a Redis started later on the same port gets a database of its own).
fn shared_database(redis_url: &str) -> String {
    let run_id = redis::Client::open(redis_url)
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("run_id:").map(|id| id.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let path = std::env::temp_dir().join(format!("tollgate-replicas-{run_id}.db"));
    format!("sqlite:{}", path.display())
}

impl Replica {
    /// Starts `tollgate serve` on `redis_url` with the config file `config`, and waits until it
    /// answers `/healthz`. A port taken by another process between our probe and tollgate's bind
    /// (tests run in parallel) makes tollgate exit: then it is started again on another port.
    pub(crate) fn start(redis_url: &str, config: &Path, env: &[(&str, &str)]) -> Replica {
        for _ in 0..5 {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            drop(listener);
            let data = tempfile::tempdir().unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
            cmd.args(["serve", "--listen", &addr])
                .env("TOLLGATE_DATA_DIR", data.path())
                .env("TOLLGATE_DATABASE_URL", shared_database(redis_url))
                .arg("--config")
                .arg(config)
                .env("TOLLGATE_REDIS_URL", redis_url)
                .env_remove("TOLLGATE_MASTER_KEY")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(data.path().join("tollgate.log")).unwrap());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if healthz(&addr) {
                    return Replica {
                        child,
                        base: format!("http://{addr}"),
                        _data: data,
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    break; // It could not bind: try another port.
                }
                assert!(
                    Instant::now() < deadline,
                    "tollgate did not answer /healthz within 20 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("tollgate did not start after 5 tries");
    }

    /// What the process logged (warnings and errors) so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self._data.path().join("tollgate.log")).unwrap_or_default()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates an API key (`body` as `POST /admin/keys` takes it) with the master key `mk`;
    /// the key itself.
    pub(crate) async fn create_key(
        &self,
        http: &reqwest::Client,
        body: serde_json::Value,
    ) -> String {
        let created: serde_json::Value = http
            .post(self.url("/admin/keys"))
            .bearer_auth("mk")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        created["key"].as_str().unwrap().to_owned()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (a graceful stop).
    pub(crate) fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits up to `within` for the process to exit; its exit status if it did.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the process (as a crash would).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True when our tollgate answers `/healthz` at `addr` (not just anything listening there).
fn healthz(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return false;
    }
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.starts_with("HTTP/1.") && raw.contains(" 200 ") && raw.contains(r#"{"status":"ok"}"#)
}

/// A config file in a temp dir (kept alive by the returned guard). The semantic cache is off
/// unless `text` configures it: the tests that do not, check the exact cache.
pub(crate) fn config_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.toml");
    let semantic = if text.contains("[semantic_cache]") {
        ""
    } else {
        "[semantic_cache]\nenabled = false\n"
    };
    std::fs::write(&path, format!("{semantic}{text}")).unwrap();
    (dir, path)
}

/// The `id:` and content deltas of an SSE body, in order.
pub(crate) fn sse_events(text: &str) -> Vec<(Option<u64>, String)> {
    let mut out = Vec::new();
    let mut id = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.parse().ok();
        } else if let Some(data) = line.strip_prefix("data: ") {
            if data != "[DONE]"
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(data)
                && let Some(c) = v["choices"][0]["delta"]["content"].as_str()
            {
                out.push((id, c.to_owned()));
            }
            id = None;
        }
    }
    out
}

/// An HTTP client for the tests, each request bounded by `timeout`.
pub(crate) fn client(timeout: Duration) -> reqwest::Client {
    tollgate_providers::init_tls();
    reqwest::Client::builder().timeout(timeout).build().unwrap()
}
