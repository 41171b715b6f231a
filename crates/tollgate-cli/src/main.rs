//! The `tollgate` binary: parses the command line and wires the crates together; the work is
//! done in the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tollgate_redis::{Redis, RedisConfig};
use tollgate_server::embedded::{EmbeddedConfig, EmbeddedRedis};
use tollgate_server::{AppState, serve};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A Redis-backed gateway for LLM applications"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "TOLLGATE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Redis to use (`redis://`, `rediss://`, `unix://`, `redis+cluster://h:p,h:p`);
        /// without it tollgate runs a private redis-server in the data dir.
        #[arg(long, env = "TOLLGATE_REDIS_URL")]
        redis_url: Option<String>,
        /// Where the embedded Redis (and later the database) keep their files.
        #[arg(long, env = "TOLLGATE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Master key for /admin; without it tollgate runs open, on loopback only.
        #[arg(long, env = "TOLLGATE_MASTER_KEY", hide_env_values = true)]
        master_key: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,redis=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One plain line: the error and its causes.
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            redis_url,
            data_dir,
            master_key,
        } => {
            if master_key.is_none() && !listen.ip().is_loopback() {
                bail!(
                    "refusing to listen on {listen} without TOLLGATE_MASTER_KEY: set a master key, or listen on a loopback address"
                );
            }
            if master_key.is_none() {
                tracing::warn!(
                    "no TOLLGATE_MASTER_KEY: running open (no authentication), on loopback only"
                );
            }
            let (url, embedded) = match redis_url {
                Some(url) => (url, None),
                None => {
                    let data_dir = data_dir.unwrap_or_else(default_data_dir);
                    let config = EmbeddedConfig {
                        data_dir: data_dir.join("redis"),
                        max_memory: "256mb".into(),
                        binary: std::env::var_os("TOLLGATE_REDIS_SERVER")
                            .map_or_else(|| "redis-server".into(), PathBuf::from),
                    };
                    let server = EmbeddedRedis::start(&config)
                        .await
                        .context("embedded redis")?;
                    tracing::info!(url = %server.url(), "started the embedded redis-server");
                    (server.url(), Some(server))
                }
            };
            let redis = Redis::connect(&RedisConfig::new(&url))
                .await
                .context("redis")?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listen on {listen}"))?;
            tracing::info!(%listen, "tollgate is serving");
            let result = serve::serve(
                listener,
                AppState { redis },
                shutdown_signal(),
                Duration::from_secs(30),
            )
            .await;
            if let Some(server) = embedded {
                server.stop().await;
            }
            result.context("serve")
        }
    }
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("tollgate");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/tollgate"),
        None => PathBuf::from(".tollgate"),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down: draining in-flight requests");
}
