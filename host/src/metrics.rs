//! Prometheus metrics (`GET /metrics` on `ML_CONNECTOR_METRICS_ADDR`, a listener of its own,
//! loopback by default: a scrape names every tenant and reads the database): the recorder, every name in one place, and the
//! figures read from the store at scrape time (queue depth and age, records needing
//! attention, poll lag), so they are right whichever host did the work. Label sets are
//! bounded: tenants (configured by operators), record and job kinds, channels, outcomes and
//! Twilio's error codes.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::clock::Clock;
use crate::store::{Store, StoreError};
use crate::webhooks::{IntakeCounters, IntakeFigures};

pub const POLLS: &str = "mlc_polls_total";
pub const POLL_SECONDS: &str = "mlc_poll_duration_seconds";
pub const POLL_ROWS: &str = "mlc_poll_rows_read_total";
pub const POLL_ROW_ERRORS: &str = "mlc_poll_row_errors_total";
pub const POLL_LAG: &str = "mlc_poll_lag_seconds";
pub const CURSOR_LAG: &str = "mlc_poll_cursor_lag_seconds";
pub const ATTENTION: &str = "mlc_records_needing_attention";
pub const JOBS: &str = "mlc_jobs_total";
pub const ALERTS: &str = "mlc_alerts_total";
pub const BACKOFF_SECONDS: &str = "mlc_retry_backoff_seconds";
pub const TWILIO_REQUESTS: &str = "mlc_twilio_requests_total";
pub const WEBHOOKS: &str = "mlc_webhooks_total";
pub const QUEUE_DEPTH: &str = "mlc_queue_depth";
pub const QUEUE_OLDEST: &str = "mlc_queue_oldest_seconds";
pub const PLUGIN_SECONDS: &str = "mlc_plugin_call_seconds";
pub const PLUGIN_FAULTS: &str = "mlc_plugin_faults_total";

/// Every metric this service exports (the deploy/ dashboard and rules may use only these).
pub const ALL: [&str; 16] = [
    POLLS,
    CURSOR_LAG,
    POLL_SECONDS,
    POLL_ROWS,
    POLL_ROW_ERRORS,
    POLL_LAG,
    ATTENTION,
    JOBS,
    ALERTS,
    BACKOFF_SECONDS,
    TWILIO_REQUESTS,
    WEBHOOKS,
    QUEUE_DEPTH,
    QUEUE_OLDEST,
    PLUGIN_SECONDS,
    PLUGIN_FAULTS,
];

const JOB_KINDS: [&str; 4] = ["send", "confirm", "qad_comment", "qad_decision"];
const RECORD_KINDS: [&str; 3] = ["supplier_invoice", "purchase_order", "goods_receipt"];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide recorder (once); later calls return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0],
                )
                .expect("static buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder already installed (a test harness): ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The scrape: refresh what the store knows, then render everything.
pub async fn render(
    handle: &PrometheusHandle,
    store: &Store,
    intake: Option<IntakeFigures>,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    let snap = store.metrics_snapshot(now).await?;
    for kind in JOB_KINDS.iter().copied().chain(["webhook"]) {
        let (depth, oldest) = snap.queues.get(kind).copied().unwrap_or((0, 0.0));
        gauge!(QUEUE_DEPTH, "kind" => kind).set(depth as f64);
        gauge!(QUEUE_OLDEST, "kind" => kind).set(oldest);
    }
    for tenant in &snap.tenants {
        for kind in RECORD_KINDS {
            let n = snap.attention.get(&(tenant.clone(), kind.to_string())).copied().unwrap_or(0);
            gauge!(ATTENTION, "tenant" => tenant.clone(), "kind" => kind).set(n as f64);
        }
        if let Some(lag) = snap.poll_lag.get(tenant) {
            gauge!(POLL_LAG, "tenant" => tenant.clone()).set(*lag);
        }
    }
    for ((tenant, stream), lag) in &snap.cursor_lag {
        gauge!(CURSOR_LAG, "tenant" => tenant.clone(), "stream" => stream.clone()).set(*lag);
    }
    if let Some(f) = intake {
        counter!(WEBHOOKS, "outcome" => "accepted").absolute(f.accepted);
        counter!(WEBHOOKS, "outcome" => "duplicate").absolute(f.duplicates);
        counter!(WEBHOOKS, "outcome" => "forged").absolute(f.forged);
        counter!(WEBHOOKS, "outcome" => "unidentified").absolute(f.unidentified);
    }
    Ok(handle.render())
}

/// A poll ended.
pub fn poll_finished(tenant: &str, ok: bool, seconds: f64, rows_read: i64, row_errors: i64) {
    let t = tenant.to_string();
    counter!(POLLS, "tenant" => t.clone(), "outcome" => if ok { "ok" } else { "failed" }).increment(1);
    histogram!(POLL_SECONDS, "tenant" => t.clone()).record(seconds);
    counter!(POLL_ROWS, "tenant" => t.clone()).increment(rows_read.max(0) as u64);
    counter!(POLL_ROW_ERRORS, "tenant" => t).increment(row_errors.max(0) as u64);
}

/// A plugin call (route + render of one record) took `seconds`; `fault` its kind if it faulted.
pub fn plugin_call(tenant: &str, seconds: f64, fault: Option<&str>) {
    histogram!(PLUGIN_SECONDS, "tenant" => tenant.to_string()).record(seconds);
    if let Some(kind) = fault {
        counter!(PLUGIN_FAULTS, "tenant" => tenant.to_string(), "kind" => kind.to_string()).increment(1);
    }
}

/// A job attempt ended with `outcome` (the audit event: `sent`, `send_failed`, `throttled`…);
/// sends also count as alerts by channel.
pub fn job_finished(tenant: &str, kind: &str, outcome: &str, channel: Option<&str>, backoff_seconds: Option<f64>) {
    counter!(JOBS, "tenant" => tenant.to_string(), "kind" => kind.to_string(), "outcome" => outcome.to_string()).increment(1);
    if let (true, Some(ch)) = (kind == "send", channel) {
        counter!(ALERTS, "tenant" => tenant.to_string(), "channel" => ch.to_string(), "outcome" => outcome.to_string()).increment(1);
    }
    if let Some(s) = backoff_seconds {
        histogram!(BACKOFF_SECONDS, "kind" => kind.to_string()).record(s);
    }
}

/// Twilio answered a create (`status` 0: no answer) with `code` (Twilio's error code, if any).
pub fn twilio_answered(status: u16, code: Option<u32>) {
    let class = match status {
        0 => "none",
        200..=299 => "2xx",
        429 => "429",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let code = code.map(|c| c.to_string()).unwrap_or_default();
    counter!(TWILIO_REQUESTS, "status" => class, "code" => code).increment(1);
}

/// The metrics listener: `GET /metrics` and nothing else.
#[derive(Clone)]
pub struct MetricsServer {
    pub handle: PrometheusHandle,
    pub store: Store,
    /// The webhook listener's counters, when this process takes webhooks.
    pub intake: Option<Arc<IntakeCounters>>,
    pub clock: Arc<dyn Clock>,
}

impl MetricsServer {
    pub fn router(self) -> Router {
        Router::new().route("/metrics", get(scrape)).with_state(self)
    }

    /// Bind `addr` and serve in the background; the address bound.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let app = self.router();
        // The same deadlines and caps as the webhook listener, in case it is exposed.
        let limits = crate::webhooks::HttpLimits::default();
        Ok((bound, tokio::spawn(crate::webhooks::serve_http1(listener, app, limits))))
    }
}

async fn scrape(State(m): State<MetricsServer>) -> Response {
    let intake = m.intake.as_ref().map(|c| c.figures());
    match render(&m.handle, &m.store, intake, m.clock.now()).await {
        Ok(text) => ([("content-type", "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database unreachable: {e}\n")).into_response(),
    }
}
