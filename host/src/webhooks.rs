//! The HTTP adapter on `ML_CONNECTOR_HTTP_ADDR`: Twilio's webhooks (one path per tenant, so
//! its Auth Token is known before the body is trusted), `/healthz` and `/readyz`.
//!
//! A webhook is answered 2xx only once it is committed to the intake queue; a request whose
//! `X-Twilio-Signature` does not verify against the public URL Twilio used and the tenant's
//! Auth Token gets 403 and changes nothing but a counter and a log line. A `<Gather>` answer
//! is processed before the response, which speaks the plugin's confirmation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
use crate::core::{signature, twiml};
use crate::dispatcher::SECRET_TWILIO_AUTH_TOKEN;
use crate::inbox::{DEFAULT_SPOKEN_CONFIRMATION, Inbox};
use crate::secrets::{Keyring, SecretString};
use crate::store::{NewWebhook, Store};

/// Twilio's webhooks are a few KiB; anything far larger is not one.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long an Auth Token read from the store is reused (a rotated token applies after this).
const TOKEN_TTL: Duration = Duration::from_secs(10);

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

type TokenCache = HashMap<String, (Option<Arc<SecretString>>, Instant)>;

#[derive(Clone)]
pub struct WebhookServer {
    store: Store,
    keys: Arc<Keyring>,
    public_url: String,
    inbox: Inbox,
    tokens: Arc<Mutex<TokenCache>>,
    writer: IntakeWriter,
    pub counters: Arc<IntakeCounters>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
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
            tokens: Arc::default(),
            counters: Arc::default(),
            metrics: None,
            workers: None,
        }
    }

    /// Make `/readyz` follow this flag too: set once the workers run, cleared when they stop.
    pub fn with_workers_flag(mut self, running: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.workers = Some(running);
        self
    }

    /// Serve `GET /metrics` from this recorder (without one, `/metrics` is 404).
    pub fn with_metrics(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/twilio/{tenant}/{resource}/{event}", post(webhook))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics_text))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                Duration::from_secs(10),
            ))
            .with_state(self.clone())
    }

    /// Bind `addr` and serve in the background; the address bound.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        Ok((bound, self.serve(listener)))
    }

    /// Serve on a listener already bound (when the public URL depends on its address).
    pub fn serve(self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
    }

    async fn auth_token(&self, tenant: &str) -> Result<Option<Arc<SecretString>>, crate::store::StoreError> {
        if let Some((t, at)) = self.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(tenant)
            && at.elapsed() < TOKEN_TTL
        {
            return Ok(t.clone());
        }
        let token = match self.store.secret(&self.keys, tenant, SECRET_TWILIO_AUTH_TOKEN).await {
            Ok(t) => t.map(Arc::new),
            Err(crate::store::StoreError::NoSuchTenant(_)) => None,
            Err(e) => return Err(e),
        };
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.to_string(), (token.clone(), Instant::now()));
        Ok(token)
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
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database unreachable: {e}\n")).into_response(),
    }
}

async fn metrics_text(State(s): State<WebhookServer>) -> Response {
    let Some(handle) = &s.metrics else {
        return (StatusCode::NOT_FOUND, "metrics are not enabled in this process\n").into_response();
    };
    let now = s.inbox.poller.clock.now();
    match crate::metrics::render(handle, &s.store, Some(s.counters.figures()), now).await {
        Ok(text) => ([("content-type", "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database unreachable: {e}\n")).into_response(),
    }
}

fn forbidden(s: &WebhookServer, tenant: &str, path: &str, why: &str) -> Response {
    s.counters.forged.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(tenant, path, why, "webhook refused");
    (StatusCode::FORBIDDEN, "forbidden\n").into_response()
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "webhook not queued: the store is unavailable");
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
    let token = match s.auth_token(&tenant).await {
        Ok(Some(t)) => t,
        Ok(None) => return forbidden(&s, &tenant, path, "unknown tenant or no Auth Token set"),
        Err(e) => return unavailable(e),
    };
    let Some(signature_header) = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()) else {
        return forbidden(&s, &tenant, path, "no X-Twilio-Signature");
    };
    // The URL Twilio requested: the public base, then the path and query as received.
    let path_and_query = uri.path_and_query().map_or(path, |pq| pq.as_str());
    let url = format!("{}{path_and_query}", s.public_url);
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    let params: Vec<(String, String)> = if is_form {
        match serde_urlencoded::from_bytes(&body) {
            Ok(p) => p,
            Err(_) => return forbidden(&s, &tenant, path, "body is not form-encoded"),
        }
    } else {
        Vec::new()
    };
    let raw = (!is_form).then_some(&body[..]);
    if !signature::verify(token.expose(), &url, &params, raw, signature_header) {
        return forbidden(&s, &tenant, path, "X-Twilio-Signature does not match");
    }
    let query: HashMap<String, String> = serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    let delivery_id = query.get("delivery").and_then(|d| d.parse().ok());
    let prompt = query.get("delivery").map(String::as_str);
    let key = match dedup_key(kind, &params, prompt) {
        Ok(k) => k,
        Err(e) => {
            s.counters.unidentified.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tenant, path, error = %e, "signed webhook without what identifies it");
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
        Err(e) => return unavailable(e),
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
