//! Test support for tollgate: real `redis-server` processes and real Redis Clusters on free
//! loopback ports, a fresh key prefix for every test so tests share servers safely, and a fake
//! OpenAI-compatible upstream (the one fake: real LLM APIs are paid and out of reach), and fresh
//! databases on the machine's real PostgreSQL server.
//!
//! Nothing here imitates Redis: every helper starts the Debian `redis-server` binary (or the one
//! named by `TOLLGATE_REDIS_SERVER`) in a temp dir and kills it on drop. Servers shared by a whole
//! test binary are started from a thread that lives as long as the process, so they are not
//! killed early, and they exit with the test binary because they watch its pid (see `watchdog`).

mod fake_upstream;
mod otlp;
mod postgres;

pub use fake_upstream::{
    AZURE_API_VERSIONS, FakeAws, FakeEntra, FakeGoogle, FakeUpstream, FakeUpstreamConfig,
    another_public_key, fake_vector, service_account_json, service_account_public_key,
};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use postgres::{PostgresDb, TestDatabase, postgres_admin_url};

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A `redis-server` process on a free loopback port, in its own temp dir; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a standalone server (no persistence) and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a standalone server with extra `redis-server` arguments (e.g. `["--maxmemory", "1mb"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::start_on_free_port(extra, false)
    }

    fn start_on_free_port(extra: Vec<String>, cluster_bus: bool) -> Self {
        assert_redis_server_installed();
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            extra,
        };
        for _ in 0..20 {
            server.port = free_port(cluster_bus);
            if server.spawn() {
                return server;
            }
            // Another process took the port between our probe and the bind; try another one.
        }
        panic!(
            "could not start redis-server on a free port after 20 tries:\n{}",
            server.log()
        );
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would: no shutdown, no save). The port stays reserved for
    /// [`RedisServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (`true`: SIGSTOP) or resumes (`false`: SIGCONT) the server: a hung Redis that
    /// keeps its connections open and answers nothing.
    pub fn freeze(&self, frozen: bool) {
        if let Some(child) = &self.child {
            let signal = if frozen { "-STOP" } else { "-CONT" };
            let status = std::process::Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill {signal} failed");
        }
    }

    /// Starts the server again on the same port and dir, after [`RedisServer::kill`].
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(&mut self) -> bool {
        let mut args: Vec<String> = vec![
            "--port".into(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--logfile".into(),
            "redis.log".into(),
        ];
        args.extend(self.extra.iter().cloned());
        match spawn_redis(self.dir.path(), &args) {
            Some(child) => {
                self.child = Some(child);
                if wait_for_ping(self.port, Duration::from_secs(10)) {
                    true
                } else {
                    self.kill();
                    false
                }
            }
            None => false,
        }
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `masters` primaries (and optionally one replica each), every node a real
/// `redis-server` on free loopback ports; all slots assigned, state `ok` before it is returned.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    masters: usize,
}

impl RedisCluster {
    /// Starts a cluster of `masters` primaries without replicas.
    pub fn start(masters: usize) -> Self {
        Self::start_with_replicas(masters, 0)
    }

    /// Starts `masters` primaries, each with `replicas_per_master` replicas.
    pub fn start_with_replicas(masters: usize, replicas_per_master: usize) -> Self {
        assert!(masters >= 1, "a cluster needs at least one master");
        let total = masters * (1 + replicas_per_master);
        let nodes: Vec<RedisServer> = (0..total).map(|_| start_cluster_node()).collect();
        let cluster = RedisCluster { nodes, masters };
        cluster.form(replicas_per_master);
        cluster
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...` (the form tollgate's connection layer reads).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// `redis://` URLs of every node, masters first.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, masters first, for fault injection.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    fn form(&self, replicas_per_master: usize) {
        // Slots split evenly over the masters, with ADDSLOTSRANGE (Redis 7.0).
        let per = 16384 / self.masters;
        for (i, node) in self.nodes.iter().take(self.masters).enumerate() {
            let start = i * per;
            let end = if i + 1 == self.masters {
                16383
            } else {
                start + per - 1
            };
            let mut c = sync_conn(node.port);
            redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(start)
                .arg(end)
                .exec(&mut c)
                .expect("CLUSTER ADDSLOTSRANGE");
        }
        let first = self.nodes[0].port;
        for node in &self.nodes[1..] {
            let mut c = sync_conn(node.port);
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(first)
                .exec(&mut c)
                .expect("CLUSTER MEET");
        }
        wait_until(
            Duration::from_secs(20),
            "all nodes to know each other",
            || {
                self.nodes.iter().all(|n| {
                    let mut c = sync_conn(n.port);
                    let nodes: String = redis::cmd("CLUSTER")
                        .arg("NODES")
                        .query(&mut c)
                        .unwrap_or_default();
                    nodes.lines().count() == self.nodes.len()
                })
            },
        );
        if replicas_per_master > 0 {
            let master_ids: Vec<String> = (0..self.masters)
                .map(|i| {
                    let mut c = sync_conn(self.nodes[i].port);
                    redis::cmd("CLUSTER")
                        .arg("MYID")
                        .query(&mut c)
                        .expect("CLUSTER MYID")
                })
                .collect();
            for (j, node) in self.nodes[self.masters..].iter().enumerate() {
                let mut c = sync_conn(node.port);
                redis::cmd("CLUSTER")
                    .arg("REPLICATE")
                    .arg(&master_ids[j % self.masters])
                    .exec(&mut c)
                    .expect("CLUSTER REPLICATE");
            }
        }
        // Every node must report the cluster ok, with all slots assigned and every node known,
        // before clients connect, or the first commands see MOVED storms while gossip settles.
        wait_until(
            Duration::from_secs(30),
            "a settled cluster on every node",
            || {
                self.nodes.iter().all(|n| {
                    let mut c = sync_conn(n.port);
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query(&mut c)
                        .unwrap_or_default();
                    info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_assigned:16384")
                        && info.contains(&format!("cluster_known_nodes:{}", self.nodes.len()))
                })
            },
        );
        // A replica that has not finished its first sync cannot take over its master: wait for
        // every replication link, so a test's failover really fails over.
        if replicas_per_master > 0 {
            wait_until(
                Duration::from_secs(30),
                "every replica in sync with its master",
                || {
                    self.nodes[self.masters..].iter().all(|n| {
                        let mut c = sync_conn(n.port);
                        let info: String = redis::cmd("INFO")
                            .arg("replication")
                            .query(&mut c)
                            .unwrap_or_default();
                        info.contains("master_link_status:up")
                    })
                },
            );
        }
    }
}

fn start_cluster_node() -> RedisServer {
    let extra = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "2000",
    ];
    // The cluster bus listens on port + 10000, so both must be free.
    RedisServer::start_on_free_port(extra.iter().map(|s| s.to_string()).collect(), true)
}

/// A Python tool the end-to-end tests run (`python3`, `schemathesis`): from the test environment
/// `make test` makes (`scripts/install-test-deps.sh`: `.venv` at the workspace root, or
/// `TOLLGATE_TEST_VENV`), else from `PATH`.
pub fn python_tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("TOLLGATE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    let tool = venv.join("bin").join(name);
    if tool.exists() {
        tool
    } else {
        PathBuf::from(name)
    }
}

/// A standalone server shared by every test of this test binary (started on first use).
pub fn shared_redis() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| on_long_lived_thread(RedisServer::start))
}

/// A 3-master cluster shared by every test of this test binary (started on first use).
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| on_long_lived_thread(|| RedisCluster::start(3)))
}

/// `i` in letters (`a`, `b`, ..., `z`, `ba`, `bb`, ...): a word that makes a text unique without a
/// number (a number would change a question's signature in the semantic cache).
pub fn letters(mut i: usize) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'a' + (i % 26) as u8);
        i /= 26;
        if i == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// A fresh, unique key prefix (`t<uuid>:`), so tests sharing a server never see each other's keys.
pub fn unique_prefix() -> String {
    format!("t{}:", uuid::Uuid::new_v4().simple())
}

/// The commands a Redis ran while some work ran, counted with MONITOR, by command name; those a
/// script ran are under `lua:NAME`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommandCount {
    pub by_name: std::collections::HashMap<String, usize>,
}

impl CommandCount {
    /// Sent by clients (a script counted once, as the EVALSHA that runs it).
    pub fn sent(&self) -> usize {
        self.count(false)
    }

    /// Run inside scripts.
    pub fn in_scripts(&self) -> usize {
        self.count(true)
    }

    fn count(&self, in_scripts: bool) -> usize {
        self.by_name
            .iter()
            .filter(|(k, _)| k.starts_with("lua:") == in_scripts)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Runs `work` and counts the commands the Redis at `url` ran meanwhile and for `settle` after
/// (what follows a request's answer: settlements, records). Everything on that server counts,
/// background work included; a marker command ends the count.
pub async fn count_commands<T>(
    url: &str,
    settle: Duration,
    work: impl std::future::Future<Output = T>,
) -> (T, CommandCount) {
    use futures::StreamExt;
    let client = redis::Client::open(url).expect("redis url");
    let mut monitor = client
        .get_async_monitor()
        .await
        .expect("MONITOR")
        .into_on_message::<String>();
    let marker = format!("end-of-count-{}", unique_prefix());
    let count = {
        let marker = marker.clone();
        tokio::spawn(async move {
            let mut counts = CommandCount::default();
            while let Some(line) = monitor.next().await {
                if line.contains(&marker) {
                    break;
                }
                // `TIME [DB ADDR] "COMMAND" ...`; a script's own calls show `[DB lua]`.
                let Some((_, rest)) = line.split_once('[') else {
                    continue;
                };
                let lua = rest.starts_with("0 lua");
                let Some(name) = rest.split('"').nth(1) else {
                    continue;
                };
                let name = name.to_ascii_uppercase();
                let key = if lua { format!("lua:{name}") } else { name };
                *counts.by_name.entry(key).or_default() += 1;
            }
            counts
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = work.await;
    tokio::time::sleep(settle).await;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let _: String = redis::cmd("ECHO")
        .arg(&marker)
        .query_async(&mut conn)
        .await
        .expect("ECHO");
    (out, count.await.expect("the count task"))
}

/// Children are started with a watchdog (see `spawn_redis`) that kills them when this process
/// exits; the spawning thread does not matter, but we still start shared servers off the test
/// thread so a test's panic while starting one does not poison the others' view of it.
fn on_long_lived_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f)
        .join()
        .expect("starting a shared redis server")
}

/// Picks a loopback port that is free now (and, for cluster nodes, whose bus port is free too).
fn free_port(with_bus: bool) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        drop(l);
        if !with_bus {
            return port;
        }
        if port < 55000 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

fn assert_redis_server_installed() {
    let bin = redis_server_binary();
    let found = if bin.components().count() > 1 {
        bin.exists()
    } else {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(&bin).is_file()))
    };
    assert!(
        found,
        "redis-server not found: install it with `apt-get install -y redis-server` (scripts/install-deps.sh does)"
    );
}

fn redis_server_binary() -> PathBuf {
    std::env::var_os("TOLLGATE_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

/// Starts `redis-server` through `sh`, which first forks a watchdog and then `exec`s the server
/// (so the child's pid is the server's): the watchdog kills the server once this test process is
/// gone, so servers never outlive the test binary, even when statics are never dropped or the
/// binary itself is killed.
fn spawn_redis(dir: &Path, args: &[String]) -> Option<Child> {
    let bin = redis_server_binary();
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let script = format!(
        "(while kill -0 {parent} 2>/dev/null && kill -0 $$ 2>/dev/null; do sleep 0.5; done; kill -9 $$ 2>/dev/null) & \
         exec '{bin}' {args}",
        parent = std::process::id(),
        bin = bin.display(),
        args = quoted.join(" "),
    );
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn();
    match child {
        Ok(c) => Some(c),
        Err(e) => panic!("could not start sh for redis-server: {e}"),
    }
}

fn wait_for_ping(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            && let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200))
            && redis::cmd("PING").query::<String>(&mut c).is_ok()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn sync_conn(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

fn wait_until(within: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
