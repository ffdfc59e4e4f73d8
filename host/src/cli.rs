//! The command line of the contract: `sandbox`, `serve`, `migrate`, `keygen`,
//! `qad-sandbox`. Configuration comes from `ML_CONNECTOR_*` environment variables (clap
//! reads them), flags winning where both are given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::NaiveDate;
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::dispatcher::Dispatcher;
use crate::grpc::{Control, EventFeed};
use crate::inbox::Inbox;
use crate::plugin::PluginRuntime;
use crate::poller::Poller;
use crate::qad_sandbox::{QadSandbox, SandboxConfig, data};
use crate::scheduler::Scheduler;
use crate::secrets::{Keyring, generate_master_key};
use crate::store::Store;
use crate::twilio_sandbox::{TwilioSandbox, TwilioSandboxConfig};
use crate::webhooks::WebhookServer;

#[derive(Debug, Parser)]
#[command(name = "ml-connector", version, about = "Alerts people through Twilio when QAD records need them")]
pub struct Cli {
    /// Tracing filter, e.g. `info` or `ml_connector=debug`.
    #[arg(long, env = "ML_CONNECTOR_LOG", default_value = "info", global = true)]
    pub log: String,
    #[arg(long, env = "ML_CONNECTOR_LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

pub use crate::logging::LogFormat;

#[derive(Debug, clap::Args)]
pub struct DbArgs {
    /// `sqlite://file` (created if missing) or `postgres://…`.
    #[arg(long, env = "ML_CONNECTOR_DATABASE_URL", default_value = "sqlite://ml-connector.db")]
    pub database_url: String,
}

#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// The master key that seals every stored credential (`ml-connector keygen` makes one).
    #[arg(long, env = "ML_CONNECTOR_MASTER_KEY", hide_env_values = true, hide = true)]
    pub master_key: Option<String>,
    /// A file holding the master key.
    #[arg(long, env = "ML_CONNECTOR_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Earlier master keys, comma-separated, still needed to open values sealed before a rotation.
    #[arg(
        long,
        env = "ML_CONNECTOR_PREVIOUS_MASTER_KEYS",
        hide_env_values = true,
        hide = true,
        value_delimiter = ','
    )]
    pub previous_master_keys: Vec<String>,
}

impl KeyArgs {
    pub fn keyring(&self) -> anyhow::Result<Keyring> {
        let key = match (&self.master_key, &self.master_key_file) {
            (Some(k), _) => k.clone(),
            (None, Some(f)) => {
                std::fs::read_to_string(f).with_context(|| format!("reading ML_CONNECTOR_MASTER_KEY_FILE {}", f.display()))?
            }
            (None, None) => {
                bail!("ML_CONNECTOR_MASTER_KEY or ML_CONNECTOR_MASTER_KEY_FILE is required (make a key with `ml-connector keygen`)")
            }
        };
        Ok(Keyring::new(key.trim(), &self.previous_master_keys)?)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct GrpcArgs {
    /// The gRPC control plane's address.
    #[arg(long, env = "ML_CONNECTOR_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// The bearer token every gRPC call but health must carry.
    #[arg(long, env = "ML_CONNECTOR_ADMIN_TOKEN", hide_env_values = true, hide = true)]
    pub admin_token: Option<String>,
    /// Serve gRPC over TLS with this PEM certificate chain…
    #[arg(long, env = "ML_CONNECTOR_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// …and this PEM private key.
    #[arg(long, env = "ML_CONNECTOR_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// How many live events a `Watch` consumer may fall behind before it is told it lagged.
    #[arg(long, env = "ML_CONNECTOR_WATCH_BUFFER", default_value_t = 1024)]
    pub watch_buffer: usize,
    /// `Watch` streams open at once on this host; one more is refused with
    /// RESOURCE_EXHAUSTED (1–10000).
    #[arg(long, env = "ML_CONNECTOR_WATCH_MAX_STREAMS", default_value_t = crate::grpc::DEFAULT_MAX_WATCHERS as u64,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub watch_max_streams: u64,
    /// Serve gRPC in plaintext on an address that is not loopback (only behind a proxy that
    /// terminates TLS: the admin token would otherwise cross the network in clear).
    #[arg(long, env = "ML_CONNECTOR_GRPC_ALLOW_PLAINTEXT")]
    pub grpc_allow_plaintext: bool,
    /// Seconds a new gRPC connection has to send its first call (TLS handshake included):
    /// a client silent or dripping bytes is closed after it (1–30).
    #[arg(long, env = "ML_CONNECTOR_GRPC_HEADER_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=30))]
    pub grpc_header_timeout_seconds: u64,
    /// Seconds a gRPC connection may stay with no call under way before it is closed; also
    /// the interval of HTTP/2 pings, which a peer must answer (1–3600).
    #[arg(long, env = "ML_CONNECTOR_GRPC_IDLE_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub grpc_idle_timeout_seconds: u64,
    /// gRPC connections served at once; more wait in the kernel's backlog (1–65536).
    #[arg(long, env = "ML_CONNECTOR_GRPC_MAX_CONNECTIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub grpc_max_connections: u64,
    /// Calls at once on one gRPC connection (HTTP/2 streams; 1–10000).
    #[arg(long, env = "ML_CONNECTOR_GRPC_MAX_STREAMS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub grpc_max_streams: u32,
}

impl GrpcArgs {
    pub fn options(&self) -> anyhow::Result<crate::grpc::GrpcOptions> {
        let tls = match (&self.grpc_tls_cert, &self.grpc_tls_key) {
            (Some(c), Some(k)) => Some((
                std::fs::read(c).with_context(|| format!("reading ML_CONNECTOR_GRPC_TLS_CERT {}", c.display()))?,
                std::fs::read(k).with_context(|| format!("reading ML_CONNECTOR_GRPC_TLS_KEY {}", k.display()))?,
            )),
            _ => None,
        };
        let opts = crate::grpc::GrpcOptions {
            addr: self.grpc_addr,
            admin_token: self
                .admin_token
                .clone()
                .filter(|t| !t.is_empty())
                .map(crate::secrets::SecretString::new),
            tls,
            allow_plaintext: self.grpc_allow_plaintext,
            limits: crate::grpc::GrpcLimits {
                header_timeout: Duration::from_secs(self.grpc_header_timeout_seconds),
                idle_timeout: Duration::from_secs(self.grpc_idle_timeout_seconds),
                max_connections: self.grpc_max_connections as usize,
                max_streams_per_connection: self.grpc_max_streams,
            },
        };
        // Refused before anything starts: plaintext off loopback needs saying so.
        opts.check()?;
        Ok(opts)
    }
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Load a plugin, check it against the WIT world, run it on the sample records and print
    /// what it decided and rendered; exit non-zero with a clear message on any fault.
    Check {
        file: PathBuf,
        /// The configuration the plugin reads (JSON), as a tenant would set it.
        #[arg(long, default_value = "{}")]
        config: String,
    },
}

// Parsed once per process: the size of `Serve`'s flags costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The no-credentials demo: QAD sandbox and host in one process on a fresh SQLite file.
    Sandbox {
        /// Stop after one full poll cycle and print a summary.
        #[arg(long)]
        once: bool,
        /// Use this database instead of a fresh file in the temp directory.
        #[arg(long)]
        database_url: Option<String>,
        /// Where the QAD sandbox listens (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        qad_addr: SocketAddr,
        /// Seconds between polls of the example tenant (at least 60, as for every tenant).
        #[arg(long, default_value_t = crate::core::limits::POLL_INTERVAL_MIN_SECONDS,
              value_parser = clap::value_parser!(u64).range(crate::core::limits::POLL_INTERVAL_MIN_SECONDS..))]
        poll_every: u64,
        /// The public base URL Twilio calls back (default: the HTTP address).
        #[arg(long, env = "ML_CONNECTOR_PUBLIC_URL")]
        public_url: Option<String>,
        /// Where the host takes Twilio's webhooks (port 0: any free port).
        #[arg(long, env = "ML_CONNECTOR_HTTP_ADDR", default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
        /// The gRPC control plane (while the demo runs; not with --once).
        #[arg(long, env = "ML_CONNECTOR_GRPC_ADDR", default_value = "127.0.0.1:50051")]
        grpc_addr: SocketAddr,
    },
    /// Production: poll every tenant on its schedule.
    Serve {
        /// A TOML file for anything the ML_CONNECTOR_* variables set (the environment wins).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        keys: KeyArgs,
        /// Where compiled plugins are cached between runs (default:
        /// $XDG_CACHE_HOME/ml-connector/plugins, else ~/.cache/ml-connector/plugins). It must
        /// be this user's and writable by nobody else; its entries are authenticated.
        #[arg(long, env = "ML_CONNECTOR_PLUGIN_CACHE_DIR")]
        plugin_cache: Option<PathBuf>,
        /// The public base URL Twilio calls back; webhook signatures are checked against it.
        #[arg(long, env = "ML_CONNECTOR_PUBLIC_URL", default_value = "http://127.0.0.1:8080")]
        public_url: String,
        /// How long a worker holds a job before another may take it over.
        #[arg(long, env = "ML_CONNECTOR_JOB_LEASE_SECONDS", default_value_t = 60)]
        job_lease_seconds: u64,
        /// How long a host holds a tenant's poll without renewing before another takes it over.
        #[arg(long, env = "ML_CONNECTOR_POLL_LEASE_SECONDS", default_value_t = 60)]
        poll_lease_seconds: u64,
        /// The most QAD browse pages one poll reads; past it the poll fails saying so.
        #[arg(long, env = "ML_CONNECTOR_POLL_MAX_PAGES", default_value_t = crate::core::limits::POLL_MAX_PAGES,
              value_parser = clap::value_parser!(u64).range(1..))]
        poll_max_pages: u64,
        /// The most QAD rows one poll reads; past it the poll fails saying so.
        #[arg(long, env = "ML_CONNECTOR_POLL_MAX_ROWS", default_value_t = crate::core::limits::POLL_MAX_ROWS,
              value_parser = clap::value_parser!(u64).range(1..))]
        poll_max_rows: u64,
        /// Twilio requests in flight per tenant on this host (Twilio answers 429 past its
        /// account's own limit; the back-off copes, this keeps it rare).
        #[arg(long, env = "ML_CONNECTOR_TWILIO_CONCURRENCY", default_value_t = crate::dispatcher::PER_TENANT_CONCURRENCY)]
        twilio_concurrency: usize,
        /// Twilio webhooks, health and readiness: the listener exposed to the internet.
        #[arg(long, env = "ML_CONNECTOR_HTTP_ADDR", default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
        #[command(flatten)]
        http_limits: HttpLimitArgs,
        /// Prometheus metrics (`GET /metrics`); keep it private: a scrape names every tenant.
        #[arg(long, env = "ML_CONNECTOR_METRICS_ADDR", default_value = "127.0.0.1:9464")]
        metrics_addr: SocketAddr,
        #[command(flatten)]
        grpc: Box<GrpcArgs>,
    },
    /// Plugins: check one before shipping it.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Apply the database migrations and exit.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Print a fresh master key.
    Keygen,
    /// Internal: compile a plugin (wasm on stdin, the artifact on stdout); `serve` runs it
    /// as a child process it can kill at the time limit.
    #[command(name = "compile-plugin", hide = true)]
    CompilePlugin,
    /// Re-seal every stored credential under the current master key (after a rotation).
    Rekey {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// The Twilio emulator alone, for integrators' own tests.
    TwilioSandbox {
        #[arg(long, default_value = "127.0.0.1:8602")]
        addr: SocketAddr,
    },
    /// The QAD emulator alone, for integrators' own tests.
    QadSandbox {
        #[arg(long, default_value = "127.0.0.1:8601")]
        addr: SocketAddr,
        /// The date the data is laid out around (default: today, UTC).
        #[arg(long)]
        today: Option<NaiveDate>,
        /// Replace the example's invoices with this many (for load tests)…
        #[arg(long)]
        invoices: Option<usize>,
        /// …of which this many were modified today.
        #[arg(long, default_value_t = 100)]
        changed: usize,
    },
}

/// Limits of the webhook listener against slow and greedy clients.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpLimitArgs {
    /// Seconds a connection has to send a request's headers, from its opening or the end of
    /// the previous response: a client dripping bytes, or idle, is closed after it (1–30).
    #[arg(long, env = "ML_CONNECTOR_HTTP_HEADER_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=30))]
    pub http_header_timeout_seconds: u64,
    /// Connections served at once; more wait in the kernel's backlog (1–65536).
    #[arg(long, env = "ML_CONNECTOR_HTTP_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub http_max_connections: u64,
}

impl HttpLimitArgs {
    pub fn limits(&self) -> crate::webhooks::HttpLimits {
        crate::webhooks::HttpLimits {
            header_timeout: Duration::from_secs(self.http_header_timeout_seconds),
            max_connections: self.http_max_connections as usize,
            ..crate::webhooks::HttpLimits::default()
        }
    }
}

pub fn init_tracing(cli: &Cli) {
    crate::logging::init(&cli.log, cli.log_format);
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    crate::init_tls();
    match cli.command {
        Command::Keygen => println!("{}", generate_master_key()),
        Command::CompilePlugin => std::process::exit(crate::plugin::compile::child_main()),
        Command::Migrate { db } => {
            let store = Store::connect(&db.database_url).await?;
            store.migrate().await?;
            println!("migrations applied to {} database", store.engine());
            store.close().await;
        }
        Command::Rekey { db, keys } => {
            let keys = keys.keyring()?;
            let store = Store::connect(&db.database_url).await?;
            store.migrate().await?;
            let n = store.reseal_secrets(&keys, SystemClock.now()).await?;
            println!("{n} credentials re-sealed under master key {}", keys.current_key_id());
        }
        Command::Plugin(PluginCommand::Check { file, config }) => crate::plugin_check::run(&file, &config).await?,
        Command::Serve {
            config: _,
            db,
            keys,
            plugin_cache,
            public_url,
            job_lease_seconds,
            poll_lease_seconds,
            poll_max_pages,
            poll_max_rows,
            twilio_concurrency,
            http_addr,
            http_limits,
            metrics_addr,
            grpc,
        } => {
            let keys = Arc::new(keys.keyring()?);
            let grpc_opts = grpc.options()?;
            if grpc_opts.admin_token.is_none() {
                tracing::warn!("ML_CONNECTOR_ADMIN_TOKEN is not set: every gRPC call but health will be refused");
            }
            let store = Store::connect(&db.database_url).await.context("connecting to the database")?;
            let http = crate::outbound::client(Duration::from_secs(60))?;
            let plugins = Arc::new(PluginRuntime::serving(plugin_cache, &keys)?);
            let mut poller = Poller::new(store.clone(), keys.clone(), http.clone(), Arc::new(SystemClock), plugins);
            poller.ceiling = crate::qad::Ceiling {
                pages: poll_max_pages,
                rows: poll_max_rows,
            };
            let mut dispatcher = Dispatcher::new(store.clone(), keys.clone(), http, Arc::new(SystemClock), &public_url);
            dispatcher.lease = chrono::Duration::seconds(job_lease_seconds as i64);
            dispatcher.per_tenant_concurrency = twilio_concurrency.max(1);
            let mut inbox = Inbox::new(poller.clone());
            // A webhook held by a host that died is taken over on the same terms as a job.
            inbox.lease = chrono::Duration::seconds(job_lease_seconds as i64);
            let mut scheduler = Scheduler::new(poller.clone());
            scheduler.poll_lease = chrono::Duration::seconds(poll_lease_seconds.max(1) as i64);
            let (stop_tx, stop_rx) = watch::channel(false);
            // gRPC answers health (NOT_SERVING) while the migrations run.
            let feed = EventFeed::new(store.clone(), grpc.watch_buffer).with_max_watchers(grpc.watch_max_streams as usize);
            let control = Control::new(poller, scheduler.clone(), feed.clone());
            let feed_for_stop = feed.clone();
            let grpc_addr = grpc_opts.addr;
            let (grpc_bound, health, grpc_task) = crate::grpc::spawn(control, grpc_opts, stop_rx.clone())
                .await
                .with_context(|| format!("binding the gRPC address {grpc_addr}"))?;
            tracing::info!(%grpc_bound, "gRPC control plane");
            store.migrate().await.context("applying migrations")?;
            // Credentials the previous release sealed are bound to their tenant's current
            // origins before anything may send them.
            let adopted = store
                .seal_legacy_secrets(&keys, SystemClock.now())
                .await
                .context("re-sealing credentials with their origins")?;
            if adopted > 0 {
                tracing::info!(
                    credentials = adopted,
                    "credentials of the previous release re-sealed with their origins"
                );
            }
            let workers_running = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let webhooks = WebhookServer::new(inbox.clone(), &public_url)
                .with_limits(http_limits.limits())
                .with_workers_flag(workers_running.clone());
            let metrics = crate::metrics::MetricsServer {
                handle: crate::metrics::install(),
                store: store.clone(),
                intake: Some(webhooks.counters.clone()),
                clock: Arc::new(SystemClock),
            };
            let (bound, _http_task) = webhooks
                .spawn(http_addr)
                .await
                .with_context(|| format!("binding the HTTP address {http_addr}"))?;
            tracing::info!(%bound, public_url, "webhooks, health and readiness on HTTP");
            let (metrics_bound, _metrics_task) = metrics
                .spawn(metrics_addr)
                .await
                .with_context(|| format!("binding the metrics address {metrics_addr}"))?;
            tracing::info!(%metrics_bound, "Prometheus metrics on HTTP");
            // PostgreSQL: other hosts' new jobs and webhooks wake this one at once.
            let listener = store.listen_for_work().await.context("listening for work on PostgreSQL")?;
            let wake_task = listener.map(|l| tokio::spawn(wake_on_work(l, dispatcher.wake.clone(), inbox.wake.clone(), feed.clone())));
            let health_task = tokio::spawn({
                let (store, stop) = (store.clone(), stop_rx.clone());
                async move { health.ready(store, stop).await }
            });
            let feed_task = tokio::spawn({
                let stop = stop_rx.clone();
                async move { feed.pump(stop).await }
            });
            let task = tokio::spawn({
                let s = scheduler.clone();
                let stop = stop_rx.clone();
                async move { s.run(stop).await }
            });
            let intake = tokio::spawn({
                let stop = stop_rx.clone();
                async move { inbox.run(stop).await }
            });
            let dispatching = dispatcher.clone();
            let sender = tokio::spawn(async move { dispatcher.run(stop_rx).await });
            workers_running.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!(engine = store.engine(), "ml-connector serving");
            crate::shutdown_signal().await;
            let signalled = tokio::time::Instant::now();
            let second = crate::next_shutdown_signal();
            tokio::spawn(async move {
                second.await;
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            });
            workers_running.store(false, std::sync::atomic::Ordering::SeqCst);
            dispatching.stop_starting();
            tracing::warn!(
                "stopping within {} s: finishing what is under way, handing back what is not; a second signal exits at once",
                SHUTDOWN_GRACE.as_secs()
            );
            let _ = stop_tx.send(true);
            feed_for_stop.close();
            // Bounded: whatever is still running then is cancelled and keeps its lease, which
            // expires, and another host (or the next start) takes it over, reconciling before
            // any resend.
            let workers = [
                stoppable("scheduler", task),
                stoppable("dispatcher", sender),
                stoppable("inbox", intake),
            ];
            stop_by(signalled + WORK_GRACE, workers).await;
            let rest = [
                stoppable("event feed", feed_task),
                stoppable("health", health_task),
                stoppable("gRPC", grpc_task),
            ];
            stop_by(signalled + SHUTDOWN_GRACE - CLOSE_GRACE - RUNTIME_GRACE, rest).await;
            if let Some(t) = wake_task {
                t.abort();
            }
            if tokio::time::timeout(CLOSE_GRACE, store.close()).await.is_err() {
                tracing::warn!("database connections still busy at exit; left to the server to close");
            }
        }
        Command::Sandbox {
            once,
            database_url,
            qad_addr,
            poll_every,
            public_url,
            http_addr,
            grpc_addr,
        } => {
            crate::sandbox::run(crate::sandbox::SandboxOptions {
                once,
                public_url,
                http_addr,
                grpc_addr,
                database_url,
                qad_addr,
                poll_every_seconds: poll_every,
            })
            .await?;
        }
        Command::TwilioSandbox { addr } => {
            let sandbox = TwilioSandbox::new(TwilioSandboxConfig::default());
            let c = sandbox.config();
            let (base, task) = sandbox.spawn(addr).await?;
            println!("Twilio sandbox on {base}");
            // Fixed sandbox credentials, public by design (they open nothing but this emulator).
            println!(
                "account {}  API key {} / {}  Auth Token {}",
                c.account_sid, c.api_key_sid, c.api_key_secret, c.auth_token
            );
            println!("numbers {}; control surface: {base}/_sandbox/stats", c.numbers.join(", "));
            tokio::select! {
                _ = task => {}
                _ = crate::shutdown_signal() => {}
            }
        }
        Command::QadSandbox {
            addr,
            today,
            invoices,
            changed,
        } => {
            let today = today.unwrap_or_else(|| SystemClock.now().date_naive());
            let cfg = SandboxConfig::new(today);
            let sandbox = match invoices {
                Some(n) => QadSandbox::with_data(cfg.clone(), data::bulk(today, n, changed.min(n)), Default::default()),
                None => QadSandbox::new(cfg.clone()),
            };
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let local = listener.local_addr()?;
            println!(
                "QAD sandbox on http://{local}{} (user {}, workspace {})",
                cfg.base_path, cfg.user, cfg.workspace
            );
            println!("control surface: http://{local}/_sandbox/story");
            tokio::select! {
                r = sandbox.serve(listener) => r?,
                _ = crate::shutdown_signal() => {}
            }
        }
    }
    Ok(())
}

/// A stopping host exits within this of the signal, whatever hangs (the README's promise).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How much of it the work under way gets (polls, sends, webhooks) before it is cancelled.
const WORK_GRACE: Duration = Duration::from_secs(22);
/// What is left at the end for closing database connections…
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// …and for the runtime's own shutdown after `run` returns (see `main.rs`).
pub const RUNTIME_GRACE: Duration = Duration::from_secs(1);

/// A task to stop: awaited until a deadline, then cancelled.
struct Stoppable {
    name: &'static str,
    done: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    abort: tokio::task::AbortHandle,
}

fn stoppable<T: Send + 'static>(name: &'static str, task: tokio::task::JoinHandle<T>) -> Stoppable {
    let abort = task.abort_handle();
    Stoppable {
        name,
        done: Box::pin(async move { drop(task.await) }),
        abort,
    }
}

/// Wait for each task until `deadline`; cancel those still running then.
async fn stop_by(deadline: tokio::time::Instant, tasks: impl IntoIterator<Item = Stoppable>) {
    for t in tasks {
        if tokio::time::timeout_at(deadline, t.done).await.is_err() {
            tracing::warn!(
                task = t.name,
                "still running at the stop deadline; cancelled (its leases cover its work)"
            );
            t.abort.abort();
        }
    }
}

/// Wake the workers when another host announces new work; polling stays the fallback (a
/// notification lost while reconnecting only delays work).
async fn wake_on_work(
    mut listener: sqlx::postgres::PgListener,
    jobs: Arc<tokio::sync::Notify>,
    webhooks: Arc<tokio::sync::Notify>,
    feed: EventFeed,
) {
    loop {
        match listener.recv().await {
            Ok(n) => {
                match n.channel() {
                    crate::store::JOBS_CHANNEL => jobs.notify_one(),
                    crate::store::WEBHOOKS_CHANNEL => webhooks.notify_one(),
                    _ => {}
                }
                feed.nudge();
            }
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection lost; polling until it is back");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
