//! `tollgate-bench`: measures tollgate against baselines taken in the same run on the same
//! machine, and prints markdown tables of throughput, latency and the ratio to the baseline.
//! Ratios, not absolute numbers, are what compare across runs on a shared, noisy machine.
//!
//! `tollgate-bench patterns`: each Redis pattern's operation at a fixed concurrency over one
//! multiplexed connection (as a gateway process uses it), against raw GET and raw EVALSHA of a
//! trivial script on the same server at the same concurrency. The baselines run before and
//! after the patterns, and the ratio uses their mean, so drift during the run shows.
//!
//! `tollgate-bench gateway`: the `tollgate` binary (a separate process, as deployed) in front of a
//! 0 ms mock upstream, against the same mock called directly by the same load generator: added
//! latency (p50, p99) for pass-through and exact-cache hits at each concurrency, throughput, and
//! tollgate's RSS idle and at peak.
//!
//! `tollgate-bench models`: the local models (embeddings latency and throughput, chat time to
//! first token and decode speed) against the chat model's weights as shipped.
//!
//! `tollgate-bench vectors`: the vector index at 100k × 384, graph and filtered searches against
//! an exact scan of the same index, with recall.

#![allow(clippy::print_stdout, reason = "a benchmark prints its report")]

mod features;
mod gateway;
mod models;
mod patterns;
mod responses;
mod suite;
mod vectors;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate-bench",
    about = "tollgate benchmarks with same-run baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Throughput of every Redis pattern against raw GET / EVALSHA.
    Patterns(patterns::Args),
    /// tollgate in front of a 0 ms mock upstream against the mock called directly.
    Gateway(gateway::Args),
    /// Feature-store reads and bulk load.
    Features(features::Args),
    /// The local models: embedding latency and throughput, chat time to first token and decode
    /// speed against the Q4_1 weights as shipped.
    Models(models::Args),
    /// Stored responses read through the gateway against a bare Redis GET, and the outbox into
    /// PostgreSQL against one row per transaction.
    Responses(responses::Args),
    /// Named scenarios through tollgate, each next to its same-run baseline, as a markdown table.
    Suite(suite::Args),
    /// Minutes of mixed load, sampling tollgate's RSS and Redis's memory.
    Soak(suite::SoakArgs),
    /// The in-process vector index against an exact scan, with recall.
    Vectors(vectors::Args),
    /// A minimal forwarding proxy (the floor any gateway hop costs); run by `gateway`.
    #[command(hide = true)]
    Proxy(gateway::ProxyArgs),
    /// The benchmarks' fake upstream alone, for profiling by hand: prints its base URL and serves
    /// until killed.
    #[command(hide = true)]
    Upstream,
}

/// The `q` quantile (0 to 1) of `sorted`, which is sorted ascending; the default when empty.
pub(crate) fn percentile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// A `tollgate serve` process for a benchmark; killed on drop.
pub(crate) struct Tollgate {
    pub(crate) child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tollgate serve` (the binary next to this one unless `binary` names one) on a free
/// loopback port, with the configuration `config` (TOML) and `redis_url`, its data in `dir`,
/// and waits until it is ready.
pub(crate) async fn start_tollgate(
    binary: Option<std::path::PathBuf>,
    config: &str,
    redis_url: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Tollgate> {
    let binary = match binary {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("tollgate"),
    };
    anyhow::ensure!(
        binary.exists(),
        "no tollgate binary at {} (cargo build --release -p tollgate-cli)",
        binary.display()
    );
    let path = dir.join("tollgate.toml");
    std::fs::write(&path, config)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = std::process::Command::new(&binary)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--config")
        .arg(&path)
        .env("TOLLGATE_REDIS_URL", redis_url)
        .env("TOLLGATE_DATA_DIR", dir)
        .env_remove("TOLLGATE_MASTER_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let tollgate = Tollgate {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    while http
        .get(format!("{}/readyz", tollgate.base))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "tollgate did not get ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(tollgate)
}

/// The Redis a benchmark measures: the one given, or a private redis-server (kept alive by the
/// returned handle).
pub(crate) async fn redis_to_measure(
    url: Option<&str>,
) -> anyhow::Result<(Option<tollgate_testkit::RedisServer>, String)> {
    match url {
        Some(url) => Ok((None, url.to_owned())),
        None => {
            let server = tokio::task::spawn_blocking(tollgate_testkit::RedisServer::start).await?;
            let url = server.url();
            Ok((Some(server), url))
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Patterns(args) => patterns::run(args).await,
        Command::Gateway(args) => gateway::run(args).await,
        Command::Proxy(args) => gateway::proxy(args).await,
        Command::Upstream => {
            let upstream = tollgate_testkit::FakeUpstream::start(
                tollgate_testkit::FakeUpstreamConfig::default(),
            )
            .await;
            println!("{}", upstream.base_url());
            std::future::pending::<()>().await;
            Ok(())
        }
        Command::Features(args) => features::run(args).await,
        Command::Vectors(args) => vectors::run(args),
        Command::Models(args) => models::run(args).await,
        Command::Responses(args) => responses::run(args).await,
        Command::Suite(args) => suite::run(args).await,
        Command::Soak(args) => suite::soak(args).await,
    }
}
