//! The HTTP adapter on `ML_CONNECTOR_HTTP_ADDR`, the one listener exposed to the internet:
//! Twilio's webhooks (one path per tenant, so its Auth Token is known before the body is
//! trusted), `/healthz` and `/readyz`. Nothing internal is served here (metrics have their own
//! loopback listener), and nothing a stranger sends can grow the process: tenant ids are
//! checked for shape before any lookup, the token cache is bounded, refusal lines are
//! clipped and rate-limited, and a connection must send its headers in time.
//!
//! A webhook is answered 2xx only once it is committed to the intake queue; a request whose
//! `X-Twilio-Signature` does not verify against the public URL Twilio used and the tenant's
//! Auth Token gets 403 and changes nothing but a counter and a log line. A `<Gather>` answer
//! is processed before the response, which speaks the plugin's confirmation.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::group_commit::GroupCommit;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, OriginalUri, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tower_http::timeout::TimeoutLayer;

use crate::clock::Clock;

use crate::core::intake::{HookKind, dedup_key};
use crate::core::text::for_log;
use crate::core::{limits, signature, twiml};
use crate::dispatcher::SECRET_TWILIO_AUTH_TOKEN;
use crate::inbox::{DEFAULT_SPOKEN_CONFIRMATION, Inbox};
use crate::secrets::{Keyring, SecretString};
use crate::store::{NewWebhook, Store};

/// Twilio's webhooks are a few KiB; anything far larger is not one.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long an Auth Token read from the store is reused (a rotated token applies after this).
const TOKEN_TTL: Duration = Duration::from_secs(10);
/// How many tenants' Auth Tokens (or their absence) the cache holds; past it the least
/// recently used go, so ids made up by strangers cannot grow the process.
pub const TOKEN_CACHE_ENTRIES: usize = 1024;
/// Refusal lines logged per minute at most; the rest are counted and their number said in
/// the next line logged (the counters keep the exact figures).
pub const REFUSALS_LOGGED_PER_MINUTE: u64 = 20;

/// Limits of the public listener against slow and greedy clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request's headers must have arrived this long after the connection opened or the
    /// previous response ended; a client that drips bytes, or a connection left idle, is closed.
    pub header_timeout: Duration,
    /// Connections served at once; further ones wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// A connection is closed (after the request under way) this long after it opened, so
    /// a client that keeps one busy with a request every few seconds gives its slot back.
    pub max_connection_age: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connection_age: Duration::from_secs(120),
        }
    }
}

/// The read buffer of one connection: a request's line and headers must fit in it (Twilio's
/// are a few KiB; hyper's default is about 400 KB a connection).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Headers per request at most.
const MAX_HEADERS: usize = 64;

/// A whole request, headers to body, gets this long (the body timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the intake did, by outcome. Forgeries change nothing else.
#[derive(Debug, Default, Serialize)]
pub struct IntakeCounters {
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub forged: AtomicU64,
    pub unidentified: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IntakeFigures {
    pub accepted: u64,
    pub duplicates: u64,
    pub forged: u64,
    pub unidentified: u64,
}

impl IntakeCounters {
    pub fn figures(&self) -> IntakeFigures {
        IntakeFigures {
            accepted: self.accepted.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            forged: self.forged.load(Ordering::Relaxed),
            unidentified: self.unidentified.load(Ordering::Relaxed),
        }
    }
}

type TokenCache = quick_cache::sync::Cache<String, (Option<Arc<SecretString>>, Instant)>;

/// The ids of the tenants that exist, read at most once per [`TOKEN_TTL`] however many
/// requests name made-up ones: a stranger's request for an unknown tenant costs no query.
#[derive(Debug, Default)]
struct KnownTenants(tokio::sync::Mutex<(HashSet<String>, Option<Instant>)>);

impl KnownTenants {
    async fn contains(&self, store: &Store, id: &str) -> Result<bool, crate::store::StoreError> {
        let mut known = self.0.lock().await;
        if known.1.is_none_or(|read| read.elapsed() >= TOKEN_TTL) {
            *known = (store.tenant_ids().await?, Some(Instant::now()));
        }
        Ok(known.0.contains(id))
    }
}

/// Rate-limits the refusal lines: at most [`REFUSALS_LOGGED_PER_MINUTE`] a minute.
#[derive(Debug)]
struct RefusalLog {
    window: Mutex<(Instant, u64)>,
    unlogged: AtomicU64,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog {
            window: Mutex::new((Instant::now(), 0)),
            unlogged: AtomicU64::new(0),
        }
    }
}

impl RefusalLog {
    /// Whether this refusal may be logged; if so, how many were not since the last one.
    fn admit(&self) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.0.elapsed() >= Duration::from_secs(60) {
            *w = (Instant::now(), 0);
        }
        if w.1 >= REFUSALS_LOGGED_PER_MINUTE {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        w.1 += 1;
        Some(self.unlogged.swap(0, Ordering::Relaxed))
    }
}

#[derive(Clone)]
pub struct WebhookServer {
    store: Store,
    keys: Arc<Keyring>,
    public_url: String,
    inbox: Inbox,
    tokens: Arc<TokenCache>,
    known: Arc<KnownTenants>,
    refusals: Arc<RefusalLog>,
    writer: IntakeWriter,
    pub counters: Arc<IntakeCounters>,
    limits: HttpLimits,
    /// Whether the host's workers are running (`/readyz` says not ready while they are not).
    workers: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Commits webhooks in batches (group commit): one commit answers many requests, each only
/// once its own row is committed.
#[derive(Clone)]
struct IntakeWriter(GroupCommit<NewWebhook, Option<i64>>);

/// The most webhooks one commit takes.
const MAX_BATCH: usize = 512;

impl IntakeWriter {
    fn spawn(store: Store, clock: Arc<dyn Clock>) -> Self {
        IntakeWriter(GroupCommit::spawn(MAX_BATCH, move |batch: Vec<NewWebhook>| {
            let (store, now) = (store.clone(), clock.now());
            async move { store.queue_webhooks(&batch, now).await.map_err(|e| e.to_string()) }
        }))
    }

    async fn queue(&self, w: NewWebhook) -> Result<Option<i64>, String> {
        self.0.submit(w).await
    }
}

impl WebhookServer {
    pub fn new(inbox: Inbox, public_url: &str) -> Self {
        WebhookServer {
            store: inbox.poller.store.clone(),
            keys: inbox.poller.keys.clone(),
            public_url: public_url.trim_end_matches('/').to_string(),
            writer: IntakeWriter::spawn(inbox.poller.store.clone(), inbox.poller.clock.clone()),
            inbox,
            tokens: Arc::new(TokenCache::new(TOKEN_CACHE_ENTRIES)),
            known: Arc::default(),
            refusals: Arc::default(),
            counters: Arc::default(),
            limits: HttpLimits::default(),
            workers: None,
        }
    }

    /// Serve connections under these limits instead of the defaults.
    pub fn with_limits(mut self, limits: HttpLimits) -> Self {
        self.limits = limits;
        self
    }

    /// How many tenants' tokens the cache holds now (at most [`TOKEN_CACHE_ENTRIES`]).
    pub fn cached_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Make `/readyz` follow this flag too: set once the workers run, cleared when they stop.
    pub fn with_workers_flag(mut self, running: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.workers = Some(running);
        self
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/twilio/{tenant}/{resource}/{event}", post(webhook))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
            .with_state(self.clone())
    }

    /// Bind `addr` and serve in the background; the address bound.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        Ok((bound, self.serve(listener)))
    }

    /// Serve on a listener already bound (when the public URL depends on its address).
    /// Aborting the task closes every connection it serves.
    pub fn serve(self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let (app, limits) = (self.router(), self.limits);
        tokio::spawn(serve_http1(listener, app, limits))
    }

    async fn auth_token(&self, tenant: &str) -> Result<Option<Arc<SecretString>>, crate::store::StoreError> {
        if let Some((t, at)) = self.tokens.get(tenant)
            && at.elapsed() < TOKEN_TTL
        {
            return Ok(t);
        }
        use crate::store::StoreError;
        // The token is bound to the Twilio origin it was set for: after the tenant's Twilio
        // base URL moves it is unset here too, until set again.
        let origin = match self.store.twilio_account(tenant).await {
            Ok(a) => crate::secrets::Origin::of(&a.base_url).ok(),
            Err(StoreError::NoSuchTenant(_)) => None,
            Err(e) => return Err(e),
        };
        let token = match origin {
            None => None,
            Some(origin) => match self.store.secret(&self.keys, tenant, SECRET_TWILIO_AUTH_TOKEN, &origin).await {
                Ok(t) => t.map(Arc::new),
                Err(StoreError::NoSuchTenant(_) | StoreError::Transport(_)) => None,
                Err(e) => return Err(e),
            },
        };
        self.tokens.insert(tenant.to_string(), (token.clone(), Instant::now()));
        Ok(token)
    }
}

/// HTTP/1.1 (what Twilio speaks) with a deadline on every request's headers, which also
/// closes idle keep-alive connections, and a cap on connections at once. axum's own `serve`
/// sets neither.
pub(crate) async fn serve_http1(listener: tokio::net::TcpListener, app: Router, limits: HttpLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let service = TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_HEADER_BYTES)
                .max_headers(MAX_HEADERS)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = tokio::time::sleep(limits.max_connection_age) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(slot);
        });
    }
}

/// Ready: the database answers (migrations were applied before this server started) and,
/// in `serve`, the workers run; the same conditions gRPC health reports.
async fn ready(State(s): State<WebhookServer>) -> Response {
    if s.workers.as_ref().is_some_and(|w| !w.load(Ordering::SeqCst)) {
        return (StatusCode::SERVICE_UNAVAILABLE, "workers not running (starting or stopping)\n").into_response();
    }
    match s.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        // The database's words stay in the log: this listener faces the internet.
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the database is unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
        }
    }
}

fn forbidden(s: &WebhookServer, tenant: &str, path: &str, why: impl std::fmt::Display) -> Response {
    s.counters.forged.fetch_add(1, Ordering::Relaxed);
    if let Some(unlogged) = s.refusals.admit() {
        tracing::warn!(tenant = for_log(tenant), path = for_log(path), %why, unlogged, "webhook refused");
    }
    (StatusCode::FORBIDDEN, "forbidden\n").into_response()
}

/// A signed request whose body is not a form: none of these endpoints takes anything else.
fn unsupported(s: &WebhookServer, tenant: &str, media: Media) -> Response {
    s.counters.unidentified.fetch_add(1, Ordering::Relaxed);
    if let Some(unlogged) = s.refusals.admit() {
        tracing::warn!(
            tenant = for_log(tenant),
            ?media,
            unlogged,
            "signed webhook with a body that is not a form"
        );
    }
    let why = "these endpoints take Twilio's application/x-www-form-urlencoded callbacks only\n";
    (StatusCode::UNSUPPORTED_MEDIA_TYPE, why).into_response()
}

/// What a request's `Content-Type` says its body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    Form,
    Json,
    Other,
}

/// The media type, compared case-insensitively and without its parameters (`charset`), as
/// the official validators and HTTP itself do.
fn media_of(headers: &HeaderMap) -> Media {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/x-www-form-urlencoded") => Media::Form,
        Some("application/json") => Media::Json,
        _ => Media::Other,
    }
}

fn unavailable(s: &WebhookServer, e: impl std::fmt::Display) -> Response {
    if let Some(unlogged) = s.refusals.admit() {
        tracing::warn!(error = %e, unlogged, "webhook not queued: the store is unavailable");
    }
    (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response()
}

fn xml(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response/>\n";

async fn webhook(
    State(s): State<WebhookServer>,
    Path((tenant, resource, event)): Path<(String, String, String)>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(kind) = HookKind::from_path(&format!("{resource}/{event}")) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let path = uri.path();
    if !limits::is_tenant_id(&tenant) {
        return forbidden(&s, &tenant, path, "not a tenant id");
    }
    match s.known.contains(&s.store, &tenant).await {
        Ok(true) => {}
        Ok(false) => return forbidden(&s, &tenant, path, "unknown tenant"),
        Err(e) => return unavailable(&s, e),
    }
    let token = match s.auth_token(&tenant).await {
        Ok(Some(t)) => t,
        Ok(None) => return forbidden(&s, &tenant, path, "unknown tenant or no Auth Token set"),
        Err(e) => return unavailable(&s, e),
    };
    let Some(signature_header) = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()) else {
        return forbidden(&s, &tenant, path, "no X-Twilio-Signature");
    };
    // The URL Twilio requested: the public base, then the path and query as received.
    let path_and_query = uri.path_and_query().map_or(path, |pq| pq.as_str());
    let url = format!("{}{path_and_query}", s.public_url);
    let media = media_of(&headers);
    let params: Vec<(String, String)> = if media == Media::Form {
        match serde_urlencoded::from_bytes(&body) {
            Ok(p) => p,
            Err(_) => return forbidden(&s, &tenant, path, "body is not form-encoded"),
        }
    } else {
        Vec::new()
    };
    // With `bodySHA256` in the URL the hash covers the raw body as received, form or not.
    if let Err(why) = signature::check(token.expose(), &url, &params, &body, signature_header) {
        return forbidden(&s, &tenant, path, why);
    }
    if media != Media::Form {
        return unsupported(&s, &tenant, media);
    }
    let query: HashMap<String, String> = serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    let delivery_id = query.get("delivery").and_then(|d| d.parse().ok());
    let prompt = query.get("delivery").map(String::as_str);
    let key = match dedup_key(kind, &params, prompt) {
        Ok(k) => k,
        Err(e) => {
            s.counters.unidentified.fetch_add(1, Ordering::Relaxed);
            if let Some(unlogged) = s.refusals.admit() {
                tracing::warn!(tenant, path = for_log(path), error = %e, unlogged, "signed webhook without what identifies it");
            }
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    let idempotency = headers.get("i-twilio-idempotency-token").and_then(|v| v.to_str().ok());
    let queued = s
        .writer
        .queue(NewWebhook {
            tenant: tenant.clone(),
            kind,
            dedup_key: key.clone(),
            idempotency_token: idempotency.map(String::from),
            delivery_id,
            params,
        })
        .await;
    let id = match queued {
        Ok(Some(id)) => {
            s.counters.accepted.fetch_add(1, Ordering::Relaxed);
            s.inbox.wake.notify_one();
            Some(id)
        }
        Ok(None) => {
            s.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            None
        }
        Err(e) => return unavailable(&s, e),
    };
    match kind {
        HookKind::MessageStatus | HookKind::CallStatus => StatusCode::NO_CONTENT.into_response(),
        // The confirmation of an SMS answer is a message of its own, sent once by a job.
        HookKind::InboundSms => xml(EMPTY_TWIML.to_string()),
        HookKind::Gather => xml(twiml::say_and_hang_up(&spoken(&s, &tenant, id, &key, idempotency).await)),
    }
}

/// What the call says after a keypress: the plugin's confirmation, from processing the
/// event now, or (for a retry) from the first processing.
async fn spoken(s: &WebhookServer, tenant: &str, id: Option<i64>, key: &str, token: Option<&str>) -> String {
    let id = match id {
        Some(id) => Some(id),
        None => s.store.webhook_by_key(tenant, key, token).await.ok().flatten().map(|e| e.id),
    };
    let Some(id) = id else {
        return DEFAULT_SPOKEN_CONFIRMATION.into();
    };
    // Another request may be processing the same answer: wait for its outcome briefly.
    for _ in 0..50 {
        match s.inbox.process_now(id).await {
            Ok(Some(outcome)) => return say_of(&outcome),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(tenant, event_id = id, error = %e, "keypress queued; processing left to the inbox");
                return DEFAULT_SPOKEN_CONFIRMATION.into();
            }
        }
        if let Ok(Some(e)) = s.store.webhook(id).await
            && e.state == "done"
        {
            return e.outcome.as_ref().map_or(DEFAULT_SPOKEN_CONFIRMATION.into(), say_of);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    DEFAULT_SPOKEN_CONFIRMATION.into()
}

fn say_of(outcome: &serde_json::Value) -> String {
    outcome["say"].as_str().unwrap_or(DEFAULT_SPOKEN_CONFIRMATION).to_string()
}
