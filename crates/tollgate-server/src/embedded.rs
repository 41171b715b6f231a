//! The embedded Redis: with no Redis URL configured, tollgate starts a private `redis-server`
//! child listening only on a unix socket in the data dir, with AOF persistence and a memory
//! limit, and stops it (cleanly, so the AOF is flushed) when tollgate exits. A Redis left
//! running by a tollgate that died (SIGKILL, a crash) is told from one a live tollgate runs (the
//! data dir names the gateway's process) and stopped at the next start.
//!
//! Eviction is `volatile-lru`: every key tollgate writes has a TTL, so under memory pressure the
//! least recently used entries go first, and a key written without a TTL by someone else is
//! never evicted behind their back.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Why the embedded Redis could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The binary is not installed.
    #[error(
        "redis-server not found on PATH: install it (`apt-get install -y redis-server`) or set TOLLGATE_REDIS_URL"
    )]
    NotInstalled,
    /// The data dir could not be used.
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another process already serves a Redis from this data dir.
    #[error("data dir {0} is in use by another tollgate (its redis.sock answers)")]
    InUse(PathBuf),
    /// It started but never answered.
    #[error("redis-server did not come up within {0:?}; see {1}")]
    NoAnswer(Duration, PathBuf),
    /// Spawning failed.
    #[error("could not start redis-server: {0}")]
    Spawn(std::io::Error),
}

/// Settings of the embedded Redis.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Where the socket, AOF and log live.
    pub data_dir: PathBuf,
    /// `maxmemory`, e.g. `256mb`.
    pub max_memory: String,
    /// The binary (default `redis-server` from PATH).
    pub binary: PathBuf,
}

/// A running private `redis-server`.
#[derive(Debug)]
pub struct EmbeddedRedis {
    child: Child,
    socket: PathBuf,
    pid_file: PathBuf,
}

/// The file in the data dir that names the gateway process running the embedded Redis.
const PID_FILE: &str = "tollgate.pid";

/// True when the gateway that started the Redis of `dir` still runs (or cannot be told: no pid
/// file, as an older tollgate left none).
fn gateway_alive(dir: &Path) -> bool {
    let Ok(pid) = std::fs::read_to_string(dir.join(PID_FILE)) else {
        return true;
    };
    let Ok(pid) = pid.trim().parse::<u32>() else {
        return true;
    };
    if pid == std::process::id() {
        return true;
    }
    // A live process of that id that is a tollgate (an id may be reused by another program).
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("tollgate"))
}

/// Asks the Redis on `socket` to shut down (flushing its AOF) and waits, at most 5 s, until it
/// no longer answers.
async fn shutdown(socket: &Path) {
    let url = format!("unix://{}", socket.display());
    if let Ok(client) = redis::Client::open(url)
        && let Ok(Ok(mut conn)) = tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
    {
        let _: Result<(), _> = redis::cmd("SHUTDOWN").query_async(&mut conn).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while ping(socket).await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl EmbeddedRedis {
    /// Starts the server and waits until it answers.
    pub async fn start(config: &EmbeddedConfig) -> Result<Self, EmbeddedError> {
        if !binary_exists(&config.binary) {
            return Err(EmbeddedError::NotInstalled);
        }
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| EmbeddedError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let socket = dir.join("redis.sock");
        if socket.exists() {
            if ping(&socket).await {
                if gateway_alive(dir) {
                    return Err(EmbeddedError::InUse(dir.clone()));
                }
                // Its gateway died (SIGKILL, a crash) and left it running: stop it cleanly (its
                // AOF is flushed) and start ours on the same data.
                tracing::warn!(dir = %dir.display(), "stopping a redis-server left behind by a tollgate that died");
                shutdown(&socket).await;
            }
            // Left behind by a process that died; nobody answers on it.
            let _ = std::fs::remove_file(&socket);
        }
        let child = Command::new(&config.binary)
            .args([
                "--port",
                "0",
                "--unixsocketperm",
                "700",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .args([
                "--save",
                "",
                "--maxmemory-policy",
                "volatile-lru",
                "--logfile",
                "redis.log",
                "--daemonize",
                "no",
            ])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--maxmemory")
            .arg(&config.max_memory)
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(EmbeddedError::Spawn)?;
        let mut server = EmbeddedRedis {
            child,
            socket,
            pid_file: dir.join(PID_FILE),
        };
        let within = Duration::from_secs(10);
        let deadline = Instant::now() + within;
        while !ping(&server.socket).await {
            if Instant::now() > deadline || server.child.try_wait().ok().flatten().is_some() {
                let _ = server.child.kill().await;
                return Err(EmbeddedError::NoAnswer(within, dir.join("redis.log")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Who runs it: a later start tells a live gateway from a dead one by this.
        let _ = std::fs::write(&server.pid_file, std::process::id().to_string());
        Ok(server)
    }

    /// The URL to connect to it.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Stops it cleanly (SHUTDOWN flushes the AOF), killing it if it does not exit in 5 s.
    pub async fn stop(mut self) {
        // The server closes the connection as it exits, so SHUTDOWN "fails" when it works.
        shutdown(&self.socket).await;
        let _ = std::fs::remove_file(&self.pid_file);
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn binary_exists(binary: &Path) -> bool {
    if binary.components().count() > 1 {
        return binary.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(binary).is_file()))
}

async fn ping(socket: &Path) -> bool {
    let Ok(client) = redis::Client::open(format!("unix://{}", socket.display())) else {
        return false;
    };
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(_))
    )
}
