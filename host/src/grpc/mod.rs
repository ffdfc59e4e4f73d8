//! The gRPC adapter: the control plane of the contract (`mlconnector.v1`: Tenants, Plugins,
//! Alerts, Polls), with health and reflection always on. Every call but health carries
//! `authorization: Bearer <admin token>`, compared in constant time. Services translate
//! between protobuf and the store, the scheduler and the plugin runtime; they hold no state
//! of their own but the event feed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tonic::codegen::http;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::plugin::PluginRuntime;
use crate::poller::Poller;
use crate::scheduler::Scheduler;
use crate::secrets::{Keyring, SecretString};
use crate::store::{Store, StoreError};

mod alerts;
pub mod conn;
mod convert;
mod feed;
mod plugins;
mod polls;
mod tenants;
mod validate;

pub use feed::{DEFAULT_MAX_WATCHERS, EventFeed};

/// The generated protobuf types, servers and clients of `proto/mlconnector/v1`.
pub mod pb {
    tonic::include_proto!("mlconnector.v1");
    /// Every file of the package with its imports and comments, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mlconnector_descriptor.bin"));
}

/// The services' names as health reports them.
pub const SERVICES: [&str; 4] = [
    "mlconnector.v1.Tenants",
    "mlconnector.v1.Plugins",
    "mlconnector.v1.Alerts",
    "mlconnector.v1.Polls",
];

/// Plugins are uploaded whole; the default 4 MiB message limit is too small for some.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// What every service reaches: the host's parts, shared.
#[derive(Clone)]
pub struct Control {
    pub store: Store,
    pub keys: Arc<Keyring>,
    pub poller: Poller,
    pub scheduler: Scheduler,
    pub feed: EventFeed,
}

impl Control {
    pub fn new(poller: Poller, scheduler: Scheduler, feed: EventFeed) -> Self {
        Control {
            store: poller.store.clone(),
            keys: poller.keys.clone(),
            poller,
            scheduler,
            feed,
        }
    }
    fn now(&self) -> DateTime<Utc> {
        self.poller.clock.now()
    }
    fn plugins(&self) -> &PluginRuntime {
        &self.poller.plugins
    }
}

/// How the gRPC server is set up.
pub struct GrpcOptions {
    pub addr: SocketAddr,
    /// None: every call but health is refused, saying the token is not configured.
    pub admin_token: Option<SecretString>,
    /// PEM certificate chain and key: serve TLS instead of plaintext.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Serve plaintext on an address that is not loopback (a proxy in front terminates TLS).
    pub allow_plaintext: bool,
    pub limits: GrpcLimits,
}

impl GrpcOptions {
    /// Plaintext only on loopback unless allowed: the admin token must not cross a network
    /// in clear.
    pub fn check(&self) -> Result<(), GrpcError> {
        if self.tls.is_none() && !self.allow_plaintext && !self.addr.ip().is_loopback() {
            return Err(GrpcError::PlaintextOffLoopback(self.addr));
        }
        Ok(())
    }
}

/// Limits of the gRPC listener against slow, idle and greedy clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcLimits {
    /// A new connection's first call (TLS handshake, HTTP/2 preface and headers included)
    /// must have arrived this long after it opened; a silent or dripping client is closed.
    pub header_timeout: Duration,
    /// A connection with no call under way is closed after this long; HTTP/2 pings go out at
    /// this interval and a peer that has not answered one within `header_timeout` is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Calls at once on one connection (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_streams_per_connection: u32,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        GrpcLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 256,
            max_streams_per_connection: 100,
        }
    }
}

/// Why the gRPC server did not start.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error(
        "refusing to serve gRPC in plaintext on {0}, which is not a loopback address (the admin token would cross the network in clear): set ML_CONNECTOR_GRPC_TLS_CERT and ML_CONNECTOR_GRPC_TLS_KEY, or ML_CONNECTOR_GRPC_ALLOW_PLAINTEXT=true if a proxy in front terminates TLS"
    )]
    PlaintextOffLoopback(SocketAddr),
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("the gRPC TLS certificate or key: {0}")]
    Tls(tonic::transport::Error),
}

/// Bearer-token check for every service but health. Both sides are hashed first so the
/// comparison takes the same time whatever the presented token's length.
#[derive(Clone)]
pub struct AdminAuth {
    expected: Option<[u8; 32]>,
}

impl AdminAuth {
    pub fn new(token: Option<&SecretString>) -> Self {
        AdminAuth {
            expected: token
                .filter(|t| !t.expose().is_empty())
                .map(|t| Sha256::digest(t.expose().as_bytes()).into()),
        }
    }
}

impl Interceptor for AdminAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Err(Status::unauthenticated(
                "this host has no admin token: set ML_CONNECTOR_ADMIN_TOKEN and restart it",
            ));
        };
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <admin token>` metadata"))?;
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        if bool::from(digest.ct_eq(expected)) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("the admin token is not the one this host was given"))
        }
    }
}

/// A store error as a status a person can act on.
pub(crate) fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NoSuchTenant(t) => Status::not_found(format!("tenant {t:?} does not exist")),
        StoreError::TenantExists(t) => Status::already_exists(format!("tenant {t:?} already exists")),
        StoreError::Db(e) => {
            tracing::warn!(error = %e, "gRPC call failed on the database");
            Status::unavailable(format!("the database did not answer: {e}"))
        }
        e @ (StoreError::Corrupt { .. } | StoreError::Transport(_)) => Status::failed_precondition(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

/// INVALID_ARGUMENT naming the field. A value is quoted with `validate::quote` (at most
/// `QUOTED_CHARS`); whatever else a problem says, the message stops at `REFUSAL_MAX_CHARS`.
pub(crate) fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    let message = format!("{field}: {problem}");
    match message.char_indices().nth(REFUSAL_MAX_CHARS) {
        None => Status::invalid_argument(message),
        Some((cut, _)) => Status::invalid_argument(format!("{}… (cut)", &message[..cut])),
    }
}

/// The longest INVALID_ARGUMENT message, whatever a problem quotes.
const REFUSAL_MAX_CHARS: usize = 400;

/// What a panicking handler answers instead of a reset stream (CANCELLED at the client):
/// INTERNAL, trailers-only, and the panic logged.
fn panic_answer(panic: Box<dyn std::any::Any + Send + 'static>) -> http::Response<String> {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
    tracing::error!(panic = %crate::core::text::for_log(what), "a gRPC handler panicked; answered INTERNAL");
    let mut answer = http::Response::new(String::new());
    let headers = answer.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", http::HeaderValue::from(tonic::Code::Internal as i32));
    headers.insert(
        "grpc-message",
        http::HeaderValue::from_static("the%20host%20failed%20on%20this%20call%20(a%20bug%2C%20logged)"),
    );
    answer
}

pub(crate) fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(time).unwrap_or_default()
}

/// Health: every service NOT_SERVING until `ready` is called, then following the database.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for s in SERVICES {
            self.reporter.set_service_status(s, status).await;
        }
    }

    /// Migrations are applied: serve, and keep following whether the database answers.
    pub async fn ready(&self, store: Store, mut stop: watch::Receiver<bool>) {
        self.set(ServingStatus::Serving).await;
        let mut serving = true;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stop.changed() => {
                    self.set(ServingStatus::NotServing).await;
                    return;
                }
            }
            let up = tokio::time::timeout(Duration::from_secs(5), store.ping())
                .await
                .is_ok_and(|r| r.is_ok());
            if up != serving {
                tracing::warn!(database_reachable = up, "gRPC health follows the database");
                self.set(if up { ServingStatus::Serving } else { ServingStatus::NotServing }).await;
                serving = up;
            }
        }
    }
}

/// Bind the gRPC address and serve until `stop`; health says NOT_SERVING until
/// [`Health::ready`]. Returns the bound address.
pub async fn spawn(
    control: Control,
    opts: GrpcOptions,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, Health, tokio::task::JoinHandle<Result<(), tonic::transport::Error>>), GrpcError> {
    opts.check()?;
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| GrpcError::Bind(opts.addr, e))?;
    let bound = listener.local_addr().map_err(|e| GrpcError::Bind(opts.addr, e))?;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health { reporter };
    health.set(ServingStatus::NotServing).await;
    let auth = AdminAuth::new(opts.admin_token.as_ref());
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the descriptor set built into this binary is valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the descriptor set built into this binary is valid");
    let limits = opts.limits;
    let mut builder = Server::builder()
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_answer))
        .max_concurrent_streams(limits.max_streams_per_connection.max(1))
        .http2_keepalive_interval(Some(limits.idle_timeout))
        .http2_keepalive_timeout(Some(limits.header_timeout));
    if let Some((cert, key)) = &opts.tls {
        builder = builder
            .tls_config(
                ServerTlsConfig::new()
                    .identity(Identity::from_pem(cert, key))
                    .timeout(limits.header_timeout),
            )
            .map_err(GrpcError::Tls)?;
    }
    // A call counts as activity on its connection (see `conn`) only once the admin token let
    // it in, and health never does: neither refused calls nor health checks keep a
    // connection's slot past its header timeout.
    let router = builder
        .add_service(health_service)
        .add_service(InterceptedService::new(conn::Tracked(reflection_v1), auth.clone()))
        .add_service(InterceptedService::new(conn::Tracked(reflection_v1alpha), auth.clone()))
        .add_service(InterceptedService::new(
            conn::Tracked(pb::tenants_server::TenantsServer::new(validate::Validated(
                tenants::TenantsService(control.clone()),
            ))),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            conn::Tracked(
                pb::plugins_server::PluginsServer::new(validate::Validated(plugins::PluginsService(control.clone())))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            ),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            conn::Tracked(pb::alerts_server::AlertsServer::new(validate::Validated(alerts::AlertsService(
                control.clone(),
            )))),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            conn::Tracked(pb::polls_server::PollsServer::new(validate::Validated(polls::PollsService(
                control,
            )))),
            auth,
        ));
    let deadlines = conn::Deadlines {
        header: limits.header_timeout,
        idle: limits.idle_timeout,
    };
    let incoming = conn::incoming(listener, limits.max_connections, deadlines);
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    });
    Ok((bound, health, task))
}
