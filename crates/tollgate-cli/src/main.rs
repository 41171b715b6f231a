//! The `tollgate` binary: parses the command line and wires the crates together; the work is
//! done in the library crates.

#![allow(clippy::print_stdout, reason = "a CLI prints its answers")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tollgate_server::telemetry::Telemetry;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tollgate_server::config::Limits;
use tollgate_server::embedded::{EmbeddedConfig, EmbeddedRedis};
use tollgate_server::{Config, Gateway, admin, auth, serve};

mod eval;
mod load;
mod log_time;
mod warm;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A Redis-backed gateway for LLM applications"
)]
struct Cli {
    /// Configuration file (over the compiled-in defaults).
    #[arg(long, global = true, env = "TOLLGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Where the embedded Redis keeps its files.
    #[arg(long, global = true, env = "TOLLGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Address to listen on (over the config and TOLLGATE_LISTEN).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Check the configuration and report every problem.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Inspect and invalidate the response cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Bulk-load the feature store.
    Features {
        #[command(subcommand)]
        command: FeaturesCommand,
    },
    /// Work with event streams.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Measure the semantic cache's threshold on labelled question pairs (JSONL, gzip or not:
    /// {"a", "b", "label"}): hit rate, precision and recall for a sweep of thresholds.
    SemanticEval {
        /// The pairs file.
        file: PathBuf,
        /// Embedding model (default: semantic_cache.embedding_model).
        #[arg(long)]
        model: Option<String>,
        /// Only the first N pairs.
        #[arg(long)]
        limit: Option<usize>,
        /// Which half of the questions to look up: choose settings on `tune`, report on `test`.
        #[arg(long, value_enum, default_value = "all")]
        split: eval::Split,
        /// Paraphrase pairs from another source (`[{"origin", "similar"}]`): their recall too.
        #[arg(long)]
        paraphrases: Option<PathBuf>,
        /// Print this many wrong hits (by the labels) at the configured threshold.
        #[arg(long, default_value_t = 10)]
        show_wrong: usize,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Load the configuration and print every problem (exit 1 when there is one).
    Check,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; prints it once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        tier: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        rpm: Option<u64>,
        #[arg(long)]
        tpm: Option<u64>,
        #[arg(long)]
        max_concurrency: Option<u64>,
        /// Seconds a request waits for a concurrency slot before it is refused.
        #[arg(long)]
        queue_wait_seconds: Option<f64>,
        /// Dollars the key may spend per UTC day.
        #[arg(long)]
        daily_budget_usd: Option<f64>,
        /// Dollars the key may spend per UTC month.
        #[arg(long)]
        monthly_budget_usd: Option<f64>,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
enum FeaturesCommand {
    /// Load feature groups from a CSV or JSONL file.
    Load {
        file: PathBuf,
        /// The tenant whose features these are (an API key's tenant; `open` without keys).
        #[arg(long, default_value = "open")]
        tenant: String,
        /// Writes in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// TTL of every group loaded (rows may set their own in JSONL); default
        /// `features.default_ttl_seconds`, 0: no expiry.
        #[arg(long)]
        ttl_seconds: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Print a stream's events as JSON lines as they arrive (Ctrl-C to stop).
    Tail {
        stream: String,
        /// The tenant whose stream it is (an API key's tenant; `open` without keys).
        #[arg(long, default_value = "open")]
        tenant: String,
        /// Start from the oldest event kept, not from now.
        #[arg(long)]
        from_start: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Hits, misses and savings per model.
    Stats,
    /// Drop every cached answer of a model.
    Invalidate { model: String },
    /// Send each line of a JSONL file (one chat request a line) through the gateway, so the
    /// answers are cached.
    Warm {
        file: PathBuf,
        /// The tenant whose cache to warm (an API key's tenant; `open` when running without keys).
        #[arg(long, default_value = "open")]
        tenant: String,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = serving_threads(&cli) {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match init_logs(runtime.handle().clone()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    // The spans not sent yet go before the process does.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One plain line: the error and its causes.
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The threads `tollgate serve` serves with (`server.worker_threads`, else its cores less one
/// for a Redis on this machine); `None` for the other commands, and when `TOKIO_WORKER_THREADS`
/// is set (the runtime reads it) or the configuration does not load (`run` reports why).
fn serving_threads(cli: &Cli) -> Option<usize> {
    if !matches!(cli.command, Command::Serve { .. })
        || std::env::var_os("TOKIO_WORKER_THREADS").is_some()
    {
        return None;
    }
    let config = load_config(cli.config.as_deref()).ok()?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    Some(config.server.threads(cores, &config.redis.url))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`: one line per request); as JSON lines
/// with `TOLLGATE_LOG_FORMAT=json`. With an OTLP endpoint in the environment, the request spans
/// go to it as OpenTelemetry traces (`tollgate_server::telemetry`); the logs never show them.
fn init_logs(runtime: tokio::runtime::Handle) -> Result<Option<Telemetry>, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Static directives only: each callsite is decided once, not at every call (a filter
    // function would be asked at every event of every dependency).
    let traces_off = format!("{}=off", tollgate_server::telemetry::TARGET)
        .parse()
        .map_err(|e| format!("log filter: {e}"))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,redis=warn".into())
        .add_directive(traces_off);
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_timer(log_time::LogTime);
    let logs = if std::env::var("TOLLGATE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"))
    {
        logs.json().boxed()
    } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        logs.boxed()
    } else {
        logs.with_ansi(false).fmt_fields(plain_fields()).boxed()
    };
    match Telemetry::from_env(runtime)? {
        Some((telemetry, tracer)) => {
            let only_traces = tracing_subscriber::EnvFilter::new(format!(
                "{}=info",
                tollgate_server::telemetry::TARGET
            ));
            let traces = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_tracked_inactivity(false)
                .with_filter(only_traces);
            tracing_subscriber::registry()
                .with(logs.with_filter(filter))
                .with(traces)
                .init();
            Ok(Some(telemetry))
        }
        // One filter for the whole subscriber: a filter per layer costs every span entered and
        // every event a pass through the registry's per-layer bookkeeping.
        None => {
            tracing_subscriber::registry()
                .with(logs)
                .with(filter)
                .init();
            Ok(None)
        }
    }
}

/// Log fields as `name=value`, space-separated, the message first: the default text format's
/// layout without its styling, which costs every field a pass through an ANSI painter even
/// with colours off. As in the default, escape and control characters in a message are written
/// escaped, so a log read in a terminal cannot make it run escape sequences.
fn plain_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static
{
    use std::fmt::Write;
    use tracing_subscriber::field::MakeExt;

    /// Writes through to `0`, escaping what a terminal would take as a control sequence.
    struct Escaping<'a, 'w>(&'a mut tracing_subscriber::fmt::format::Writer<'w>);
    impl Write for Escaping<'_, '_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for c in s.chars() {
                match c {
                    '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}' => {
                        write!(self.0, "\\u{{{:x}}}", c as u32)?
                    }
                    c => self.0.write_char(c)?,
                }
            }
            Ok(())
        }
    }
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| match field.name() {
        "message" => write!(Escaping(writer), "{value:?}"),
        name => write!(
            writer,
            "{}={value:?}",
            name.strip_prefix("r#").unwrap_or(name)
        ),
    })
    .delimited(" ")
}

/// Where a configured Redis's `maxmemory-policy` contradicts what a concern on it keeps (the
/// embedded Redis, one server for every concern, is left out).
async fn redis_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let main = config.redis.url.as_str();
    let mut policies: HashMap<&str, Option<String>> = HashMap::new();
    for (name, url, eviction) in config.redis.concerns() {
        let url = if url.is_empty() { main } else { url };
        if url.is_empty() {
            continue;
        }
        if !policies.contains_key(url) {
            let redis = tollgate_redis::Redis::connect(&tollgate_redis::RedisConfig {
                url: url.to_owned(),
                command_timeout: Duration::from_secs(2),
            })
            .await;
            let policy = match redis {
                Ok(r) => r.maxmemory_policy().await,
                Err(e) => Err(e),
            };
            let policy = match policy {
                Ok(p) => p,
                Err(e) => {
                    warnings.push(format!(
                        "redis.{name}: could not be reached to check its eviction policy: {e}"
                    ));
                    None
                }
            };
            policies.insert(url, policy);
        }
        if let Some(Some(policy)) = policies.get(url)
            && let Some(why) = eviction.contradiction(policy)
        {
            warnings.push(format!(
                "redis.{name} ({}): maxmemory-policy {policy}: {why}",
                redact(url)
            ));
        }
    }
    warnings
}

/// A Redis URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

fn load_config(file: Option<&Path>) -> anyhow::Result<Config> {
    let env: HashMap<String, String> = std::env::vars().collect();
    Config::load(file, &env).map_err(|e| anyhow::anyhow!("configuration: {}", e.0.join("; ")))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.data_dir.clone().unwrap_or_else(default_data_dir);
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let env: HashMap<String, String> = std::env::vars().collect();
            match Config::load(cli.config.as_deref(), &env) {
                Ok(config) => {
                    let warnings = redis_warnings(&config).await;
                    for warning in &warnings {
                        println!("warning: {warning}");
                    }
                    match warnings.len() {
                        0 => println!("configuration ok"),
                        n => println!("configuration ok, {n} warning(s)"),
                    }
                    Ok(())
                }
                Err(e) => {
                    for problem in &e.0 {
                        println!("{problem}");
                    }
                    bail!("{} problem(s) in the configuration", e.0.len())
                }
            }
        }
        Command::Serve { listen } => {
            let mut config = load_config(cli.config.as_deref())?;
            if let Some(listen) = listen {
                config.server.listen = listen.to_string();
            }
            serve_gateway(config, &data_dir).await
        }
        Command::Keys { command } => {
            let gw = connect_gateway(cli.config.as_deref(), &data_dir).await?;
            match command {
                KeysCommand::Create {
                    name,
                    tier,
                    tenant,
                    rpm,
                    tpm,
                    max_concurrency,
                    queue_wait_seconds,
                    daily_budget_usd,
                    monthly_budget_usd,
                } => {
                    let limits = Limits {
                        rpm,
                        tpm,
                        max_concurrency,
                        queue_wait_seconds,
                        daily_budget_usd,
                        monthly_budget_usd,
                        ..Limits::default()
                    };
                    let (record, key) = admin::create_key(&gw, name, tier, tenant, Some(limits))
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    println!(
                        "id:     {}\nname:   {}\ntier:   {}\ntenant: {}\nkey:    {key}",
                        record.id, record.name, record.tier, record.tenant
                    );
                    eprintln!("the key is shown only now; store it safely");
                }
                KeysCommand::List => {
                    let keys = gw.api_keys.list().await.context("keys")?;
                    println!(
                        "{:<26} {:<20} {:<12} {:<12} {:<8} {:<8} {:>12} {:>12}  top model this month",
                        "id", "name", "tier", "prefix", "created", "status", "today $", "month $"
                    );
                    for k in keys {
                        let spend = admin::key_spend(&gw, &k.id)
                            .await
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                        let usd = |period: &str| spend[period]["total_usd"].as_f64().unwrap_or(0.0);
                        let top = spend["this_month"]["models"]
                            .as_object()
                            .and_then(|m| {
                                m.iter().max_by(|a, b| {
                                    let (a, b) =
                                        (a.1.as_f64().unwrap_or(0.0), b.1.as_f64().unwrap_or(0.0));
                                    a.total_cmp(&b)
                                })
                            })
                            .map(|(m, v)| format!("{m} (${:.4})", v.as_f64().unwrap_or(0.0)))
                            .unwrap_or_default();
                        println!(
                            "{:<26} {:<20} {:<12} {:<12} {:<8} {:<8} {:>12.4} {:>12.4}  {top}",
                            k.id,
                            k.name,
                            k.tier,
                            k.prefix,
                            k.created,
                            if k.revoked { "revoked" } else { "active" },
                            usd("today"),
                            usd("this_month"),
                        );
                    }
                }
                KeysCommand::Revoke { id } => {
                    gw.api_keys
                        .revoke(&id)
                        .await
                        .with_context(|| format!("revoke {id}"))?;
                    println!("revoked {id}");
                }
            }
            Ok(())
        }
        Command::Features {
            command:
                FeaturesCommand::Load {
                    file,
                    tenant,
                    concurrency,
                    ttl_seconds,
                },
        } => {
            let gw = connect_gateway(cli.config.as_deref(), &data_dir).await?;
            let bad = load::load(gw, &file, &tenant, concurrency, ttl_seconds).await?;
            if bad > 0 {
                bail!("{bad} bad row(s)");
            }
            Ok(())
        }
        Command::SemanticEval {
            file,
            model,
            limit,
            split,
            paraphrases,
            show_wrong,
        } => {
            // Only the models are needed: no Redis.
            let config = load_config(cli.config.as_deref())?;
            let router = tollgate_server::state::build_router(&config)?;
            let options = eval::EvalOptions {
                file,
                model: model.unwrap_or_else(|| config.semantic_cache.embedding_model.clone()),
                default: config.semantic_cache.threshold,
                limit,
                split,
                paraphrases,
                show_wrong,
            };
            eval::semantic_eval(&router, &options).await
        }
        Command::Events {
            command:
                EventsCommand::Tail {
                    stream,
                    tenant,
                    from_start,
                    count,
                },
        } => {
            let gw = connect_gateway(cli.config.as_deref(), &data_dir).await?;
            let name = auth::tenant_scoped(&tenant, &stream);
            let block = Duration::from_secs(1);
            let mut conn = gw.events.reader(block).await.context("events")?;
            let mut after = if from_start {
                "0".to_owned()
            } else {
                gw.events.last_id(&name).await.context("events")?
            };
            let mut printed = 0;
            while count.is_none_or(|c| printed < c) {
                for event in gw
                    .events
                    .read(&mut conn, &name, &after, 100, block)
                    .await
                    .context("events")?
                {
                    println!(
                        "{}",
                        serde_json::json!({"id": event.id, "fields": event.text_fields()})
                    );
                    after = event.id;
                    printed += 1;
                    if count.is_some_and(|c| printed >= c) {
                        break;
                    }
                }
            }
            Ok(())
        }
        Command::Cache { command } => {
            let gw = connect_gateway(cli.config.as_deref(), &data_dir).await?;
            match command {
                CacheCommand::Stats => {
                    let stats = admin::cache_stats(&gw)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    println!("{}", serde_json::to_string_pretty(&stats)?);
                }
                CacheCommand::Warm {
                    file,
                    tenant,
                    concurrency,
                } => {
                    let failed = warm::warm(gw, &file, &tenant, concurrency).await?;
                    if failed > 0 {
                        bail!("{failed} line(s) failed");
                    }
                }
                CacheCommand::Invalidate { model } => {
                    let generation = gw
                        .cache
                        .invalidate_model(&model)
                        .await
                        .context("invalidate")?;
                    println!("invalidated {model} (generation {generation})");
                }
            }
            Ok(())
        }
    }
}

/// For commands other than `serve`: the configured Redis, or the embedded one of a running
/// `tollgate serve` in the same data dir.
async fn connect_gateway(
    config_file: Option<&Path>,
    data_dir: &Path,
) -> anyhow::Result<Arc<Gateway>> {
    let config = load_config(config_file)?;
    let url = if config.redis.url.is_empty() {
        let socket = data_dir.join("redis/redis.sock");
        if !socket.exists() {
            bail!(
                "no Redis to talk to: start `tollgate serve` (its embedded Redis is at {}) or set TOLLGATE_REDIS_URL",
                socket.display()
            );
        }
        format!("unix://{}", socket.display())
    } else {
        config.redis.url.clone()
    };
    Ok(Arc::new(Gateway::build(config, &url).await?))
}

async fn serve_gateway(config: Config, data_dir: &Path) -> anyhow::Result<()> {
    let listen: SocketAddr = config.server.listen.parse().context("server.listen")?;
    if let Some(limit) = serve::raise_open_files_limit() {
        tracing::debug!(limit, "open files limit");
    }
    if config.server.master_key.is_empty() && !listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {listen} without TOLLGATE_MASTER_KEY: set a master key, or listen on a loopback address"
        );
    }
    if config.server.master_key.is_empty() {
        tracing::warn!(
            "no TOLLGATE_MASTER_KEY: running open (no authentication), on loopback only"
        );
    }
    let (url, embedded) = if config.redis.url.is_empty() {
        let embedded_config = EmbeddedConfig {
            data_dir: data_dir.join("redis"),
            max_memory: config.embedded_redis.max_memory.clone(),
            binary: std::env::var_os("TOLLGATE_REDIS_SERVER")
                .map_or_else(|| "redis-server".into(), PathBuf::from),
        };
        let server = EmbeddedRedis::start(&embedded_config)
            .await
            .context("embedded redis")?;
        tracing::info!(url = %server.url(), "started the embedded redis-server");
        (server.url(), Some(server))
    } else {
        (config.redis.url.clone(), None)
    };
    let drain = Duration::from_secs(config.server.shutdown_drain_seconds);
    let database_url = if config.database.url.is_empty() {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("data dir {}", data_dir.display()))?;
        format!("sqlite:{}", data_dir.join("tollgate.db").display())
    } else {
        config.database.url.clone()
    };
    // The error's own text already names its cause; as context it would print it twice.
    let database = match tollgate_db::Database::connect(&database_url).await {
        Ok(db) => db,
        // A PostgreSQL server away: serve, and let records wait in the outbox until it answers.
        // A malformed URL or a SQLite file that cannot be opened will not mend by waiting.
        Err(e @ tollgate_db::Error::Db(_)) if !database_url.starts_with("sqlite") => {
            tracing::warn!(error = %e, "database unreachable: serving; durable records wait in the outbox until it answers");
            tollgate_db::Database::connect_lazy(&database_url)
                .map_err(|e| anyhow::anyhow!("TOLLGATE_DATABASE_URL: {e}"))?
        }
        Err(e) => bail!("TOLLGATE_DATABASE_URL: {e}"),
    };
    tracing::info!(backend = ?database.backend(), "durable records go to the database through the outbox");
    let gateway = Gateway::build(config, &url)
        .await?
        .with_database(database.clone());
    if let Some(durable) = &gateway.durable {
        durable
            .outbox
            .bind(&database)
            .await
            .map_err(|e| anyhow::anyhow!("TOLLGATE_DATABASE_URL: {e}"))?;
    }
    let gateway = Arc::new(gateway);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    let models: Vec<String> = tollgate_server::handlers::models::listed(&gateway)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    tracing::info!(
        %listen,
        data_dir = %data_dir.display(),
        models = %models.join(", "),
        threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "tollgate is serving"
    );
    let result = serve::serve(listener, gateway, shutdown_signal(), drain).await;
    if let Some(server) = embedded {
        server.stop().await;
    }
    result.context("serve")
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

/// Resolves on Ctrl-C, SIGTERM or SIGHUP (a closed terminal: without a handler it would kill
/// tollgate at once and orphan its embedded redis-server).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let signal = |kind: tokio::signal::unix::SignalKind| async move {
        match tokio::signal::unix::signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = signal(tokio::signal::unix::SignalKind::terminate()) => {}
        () = signal(tokio::signal::unix::SignalKind::hangup()) => {}
    }
    tracing::info!("shutting down: draining in-flight requests");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::plain_fields;

    /// Lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_fields_keep_the_default_layout_and_escape_control_characters() {
        let lines = Lines::default();
        let writer = lines.clone();
        let logs = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .without_time()
            .fmt_fields(plain_fields())
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry().with(logs);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", id = "r-1");
            span.in_scope(|| {
                tracing::info!(
                    target: "tollgate::access",
                    method = %"POST",
                    path = "/v1/chat/completions",
                    status = 200,
                    r#type = "x",
                    "request \x1b[31mred\u{9b}"
                );
            });
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            " INFO request{id=\"r-1\"}: tollgate::access: request \\u{1b}[31mred\\u{9b} \
             method=POST path=\"/v1/chat/completions\" status=200 type=\"x\"\n"
        );
    }
}
