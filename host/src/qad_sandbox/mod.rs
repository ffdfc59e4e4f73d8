//! The QAD sandbox: an HTTP server that follows `qad-api.md` to the letter — the
//! securityControl/token login, the workspace header, sessions that expire, browse paging
//! with `callId` per session, the empty-page trap, the error envelope, `submitResult` on
//! writes — loaded with the example manufacturer's data. A control surface under
//! `/_sandbox` posts receipts, invoices and approvals, moves "today", and injects faults.
//!
//! Architecture invariant: nothing in the host's QAD client knows this module exists; the
//! two meet only over HTTP.

pub mod data;
pub mod table;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Json, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use data::{Dataset, Story};
use table::{Filter, Row, text_of};

/// How the sandbox tenant is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Context root, as a QAD tenant has one (`/clouderp`).
    pub base_path: String,
    pub user: String,
    pub password: String,
    pub client_id: String,
    pub workspace: String,
    pub session_length_minutes: u64,
    pub timeout_minutes: u64,
    pub today: NaiveDate,
    pub seed: u64,
}

impl SandboxConfig {
    pub fn new(today: NaiveDate) -> Self {
        SandboxConfig {
            base_path: "/clouderp".into(),
            user: "mfg-api".into(),
            password: "sandbox-password".into(),
            client_id: "qad-sandbox-client".into(),
            workspace: format!("{}_{}", data::DOMAIN, data::ENTITY),
            session_length_minutes: 480,
            timeout_minutes: 30,
            today,
            seed: 42,
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct Faults {
    /// The next N data requests answer `fail_status` (default 503) with the error envelope.
    pub fail_next: u32,
    pub fail_status: Option<u16>,
    /// The next N data requests wait `delay_ms` first.
    pub delay_next: u32,
    pub delay_ms: u64,
    /// Every session expires after this many more data requests (expiry mid-paging).
    pub expire_after_requests: Option<u32>,
    /// Every session expires now.
    pub expire_sessions_now: bool,
    /// Every request for this browse id answers 503 (a poll failing mid-cycle).
    pub fail_browse: Option<String>,
    /// Every browse page says there are more (`HasMoreParams` "true"), past the last row
    /// too: a QAD that pages for ever.
    pub endless_paging: bool,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub requests: u64,
    pub logins: u64,
    pub browse_requests: u64,
    pub rows_served: u64,
    pub rows_served_by_browse: BTreeMap<String, u64>,
    pub unauthorized: u64,
    pub failures_injected: u64,
}

struct Session {
    created: Instant,
    last_used: Instant,
}

struct Call {
    token: String,
    browse: String,
    ids: Vec<usize>,
}

struct Inner {
    config: SandboxConfig,
    today: NaiveDate,
    data: Dataset,
    story: Story,
    sessions: HashMap<String, Session>,
    refresh_tokens: HashMap<String, String>,
    calls: HashMap<String, Call>,
    faults: Faults,
    stats: Stats,
    comments: Vec<Value>,
    approvals: Vec<Value>,
    next_receiver: u64,
}

/// A running sandbox's shared state.
#[derive(Clone)]
pub struct QadSandbox {
    inner: Arc<Mutex<Inner>>,
}

fn envelope(status: StatusCode, message: &str) -> Response {
    let body = json!({"errors": [{"severity": 1, "code": status.as_u16().to_string(), "message": message, "fieldName": ""}]});
    (status, Json(body)).into_response()
}

impl QadSandbox {
    pub fn new(config: SandboxConfig) -> Self {
        let (data, story) = data::example(config.today, config.seed);
        Self::with_data(config, data, story)
    }

    pub fn with_data(config: SandboxConfig, data: Dataset, story: Story) -> Self {
        QadSandbox {
            inner: Arc::new(Mutex::new(Inner {
                today: config.today,
                config,
                data,
                story,
                sessions: HashMap::new(),
                refresh_tokens: HashMap::new(),
                calls: HashMap::new(),
                faults: Faults::default(),
                stats: Stats::default(),
                comments: Vec::new(),
                approvals: Vec::new(),
                next_receiver: 90_000,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn story(&self) -> Story {
        self.lock().story.clone()
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    pub fn config(&self) -> SandboxConfig {
        self.lock().config.clone()
    }

    pub fn router(&self) -> Router {
        let base = self.lock().config.base_path.trim_end_matches('/').to_string();
        let api = Router::new()
            .route("/api/qracore/securityControl", get(security_control))
            .route("/oauth/token", post(token))
            .route("/api/qracore/browses", get(browse))
            .route("/api/erp/transactionComments", post(transaction_comments))
            .route("/api/erp/purchaseOrderApprovals", post(po_approvals));
        let control = Router::new()
            .route("/_sandbox/stats", get(control_stats))
            .route("/_sandbox/story", get(control_story))
            .route("/_sandbox/faults", post(control_faults))
            .route("/_sandbox/today", post(control_today))
            .route("/_sandbox/receipts", post(control_receipt))
            .route("/_sandbox/invoices", post(control_invoice))
            .route("/_sandbox/approvals", post(control_approval))
            .route("/_sandbox/rows", post(control_rows))
            .route("/_sandbox/writes", get(control_writes));
        let app = if base.is_empty() { api } else { Router::new().nest(&base, api) };
        app.merge(control).with_state(self.clone())
    }

    /// Serve on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Bind `addr` (port 0 for any), serve in the background, return the tenant base URL.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let base = format!("http://{local}{}", self.lock().config.base_path);
        let handle = tokio::spawn(async move {
            let _ = self.serve(listener).await;
        });
        Ok((base, handle))
    }

    /// Faults and session checks shared by every data endpoint.
    async fn admit(&self, headers: &HeaderMap) -> Result<String, Response> {
        let (delay, fail) = {
            let mut s = self.lock();
            s.stats.requests += 1;
            let delay = (s.faults.delay_next > 0).then(|| {
                s.faults.delay_next -= 1;
                s.faults.delay_ms
            });
            let fail = (s.faults.fail_next > 0).then(|| {
                s.faults.fail_next -= 1;
                s.stats.failures_injected += 1;
                s.faults.fail_status.unwrap_or(503)
            });
            (delay, fail)
        };
        if let Some(ms) = delay {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(code) = fail {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Err(envelope(status, "Service temporarily unavailable"));
        }
        let mut s = self.lock();
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let (length, idle) = (
            Duration::from_secs(s.config.session_length_minutes * 60),
            Duration::from_secs(s.config.timeout_minutes * 60),
        );
        let valid = token.as_ref().is_some_and(|t| match s.sessions.get(t) {
            Some(sess) => sess.created.elapsed() < length && sess.last_used.elapsed() < idle,
            None => false,
        });
        let Some(token) = token.clone().filter(|_| valid) else {
            if let Some(t) = &token {
                s.sessions.remove(t);
            }
            s.stats.unauthorized += 1;
            return Err(envelope(StatusCode::UNAUTHORIZED, "Session expired or not valid for this tenant"));
        };
        if headers.get("x-qad-workspace-id").and_then(|v| v.to_str().ok()) != Some(s.config.workspace.as_str()) {
            return Err(envelope(StatusCode::FORBIDDEN, "Access is denied"));
        }
        if let Some(sess) = s.sessions.get_mut(&token) {
            sess.last_used = Instant::now();
        }
        if let Some(n) = s.faults.expire_after_requests.as_mut() {
            if *n == 0 {
                s.sessions.clear();
                s.faults.expire_after_requests = None;
                s.stats.unauthorized += 1;
                return Err(envelope(StatusCode::UNAUTHORIZED, "Session expired or not valid for this tenant"));
            }
            *n -= 1;
        }
        Ok(token)
    }
}

// ---- authentication --------------------------------------------------------------------

async fn security_control(State(sb): State<QadSandbox>, headers: HeaderMap) -> Response {
    let mut s = sb.lock();
    s.stats.requests += 1;
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let expected = format!("{}:{}", s.config.user, s.config.password);
    if basic.as_deref() != Some(expected.as_str()) {
        s.stats.unauthorized += 1;
        return envelope(StatusCode::UNAUTHORIZED, "Invalid user name or password");
    }
    Json(json!({"data": {"securityControls": [{
        "clientId": s.config.client_id,
        "sessionLength": s.config.session_length_minutes,
        "timeoutMinutes": s.config.timeout_minutes
    }]}}))
    .into_response()
}

async fn token(State(sb): State<QadSandbox>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let mut s = sb.lock();
    s.stats.requests += 1;
    let form_encoded = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form: HashMap<String, String> = match serde_urlencoded::from_bytes(&body) {
        Ok(f) if form_encoded => f,
        _ => return envelope(StatusCode::BAD_REQUEST, "Content-Type must be application/x-www-form-urlencoded"),
    };
    let user = match form.get("grant_type").map(String::as_str) {
        Some("password") => {
            let ok = form.get("client_id") == Some(&s.config.client_id)
                && form.get("username") == Some(&s.config.user)
                && form.get("password") == Some(&s.config.password);
            if !ok {
                s.stats.unauthorized += 1;
                return envelope(StatusCode::UNAUTHORIZED, "Invalid client, user name or password");
            }
            s.config.user.clone()
        }
        Some("refresh_token") => match form.get("refresh_token").and_then(|r| s.refresh_tokens.remove(r)) {
            Some(user) => user,
            None => {
                s.stats.unauthorized += 1;
                return envelope(StatusCode::UNAUTHORIZED, "Refresh token not valid");
            }
        },
        _ => {
            return envelope(StatusCode::BAD_REQUEST, "grant_type must be password or refresh_token");
        }
    };
    let access = uuid::Uuid::new_v4().simple().to_string();
    let refresh = uuid::Uuid::new_v4().simple().to_string();
    s.sessions.insert(
        access.clone(),
        Session {
            created: Instant::now(),
            last_used: Instant::now(),
        },
    );
    s.refresh_tokens.insert(refresh.clone(), user);
    s.stats.logins += 1;
    let expires = s.config.timeout_minutes * 60;
    Json(json!({"access_token": access, "refresh_token": refresh, "token_type": "bearer", "expires_in": expires})).into_response()
}

// ---- browse ----------------------------------------------------------------------------------

async fn browse(State(sb): State<QadSandbox>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let token = match sb.admit(&headers).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    let one = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(browse_id) = one("browseId") else {
        return envelope(StatusCode::BAD_REQUEST, "browseId is required");
    };
    let (page, action) = (one("page"), one("pageAction"));
    let mut s = sb.lock();
    s.stats.browse_requests += 1;
    if s.faults.fail_browse.as_deref() == Some(browse_id.as_str()) {
        s.stats.failures_injected += 1;
        return envelope(StatusCode::SERVICE_UNAVAILABLE, "Service temporarily unavailable");
    }
    // The trap: without page and pageAction a browse answers 200 with no rows.
    let (Some(page), Some(action)) = (page, action) else {
        return Json(json!({"data": [], "auxillaryData": {"HasMoreParams": "false"}})).into_response();
    };
    let page: usize = match page.parse() {
        Ok(p) if p >= 1 => p,
        _ => return envelope(StatusCode::BAD_REQUEST, "page must be a number from 1"),
    };
    let size: usize = one("pageSize")
        .and_then(|p| p.parse().ok())
        .filter(|p| (1..=5000).contains(p))
        .unwrap_or(50);
    let call_id = one("callId");
    let ids = match action.as_str() {
        "first" => {
            let Some(table) = s.data.table(&browse_id) else {
                return envelope(StatusCode::NOT_FOUND, &format!("Browse {browse_id} not found"));
            };
            let filters: Result<Vec<Filter>, String> = params
                .iter()
                .filter(|(n, _)| n == "filter")
                .map(|(_, v)| Filter::parse(v))
                .collect();
            let ids = match filters.and_then(|f| table.query(&f)) {
                Ok(ids) => ids,
                Err(e) => return envelope(StatusCode::BAD_REQUEST, &e),
            };
            if let Some(c) = &call_id {
                s.calls.insert(
                    c.clone(),
                    Call {
                        token: token.clone(),
                        browse: browse_id.clone(),
                        ids: ids.clone(),
                    },
                );
            }
            ids
        }
        "next" => match call_id.as_ref().and_then(|c| s.calls.get(c)) {
            Some(call) if call.token == token && call.browse == browse_id => call.ids.clone(),
            _ => {
                return envelope(
                    StatusCode::BAD_REQUEST,
                    "callId is not a browse of this session: start again with pageAction=first",
                );
            }
        },
        other => {
            return envelope(StatusCode::BAD_REQUEST, &format!("pageAction {other:?} is not first or next"));
        }
    };
    let start = (page - 1) * size;
    let table = s.data.table(&browse_id).expect("checked above");
    let rows: Vec<Value> = ids
        .iter()
        .skip(start)
        .take(size)
        .map(|i| Value::Object(table.row(*i).clone()))
        .collect();
    let more = start + rows.len() < ids.len() || s.faults.endless_paging;
    s.stats.rows_served += rows.len() as u64;
    *s.stats.rows_served_by_browse.entry(browse_id).or_default() += rows.len() as u64;
    Json(json!({"data": rows, "auxillaryData": {"HasMoreParams": if more { "true" } else { "false" }}})).into_response()
}

// ---- writes ----------------------------------------------------------------------------------

fn submit(errors: Vec<Value>) -> Response {
    Json(json!({"submitResult": {"success": errors.is_empty(), "errors": errors}})).into_response()
}

fn field_error(field: &str, message: &str, value: &Value) -> Value {
    json!({"fieldName": field, "message": message, "fieldValue": value, "code": "VALIDATION"})
}

fn exists(data: &Dataset, reference_type: &str, number: &str) -> bool {
    match reference_type {
        "PO" => data.table(data::BROWSE_PO).and_then(|t| t.find(&[number])).is_some(),
        "SUPPLIER_INVOICE" => data.table(data::BROWSE_INVOICES).and_then(|t| t.find(&[number])).is_some(),
        "RECEIVER" => data.table(data::BROWSE_RECEIPTS).is_some_and(|t| {
            t.rows()
                .any(|r| r.get("prh_hist.prh_receiver").and_then(text_of).as_deref() == Some(number))
        }),
        _ => false,
    }
}

async fn transaction_comments(State(sb): State<QadSandbox>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    if let Err(resp) = sb.admit(&headers).await {
        return resp;
    }
    let mut s = sb.lock();
    let Some(Json(body)) = body else {
        return submit(vec![field_error("transactionComments", "body is not JSON", &Value::Null)]);
    };
    let Some(items) = body.get("transactionComments").and_then(Value::as_array) else {
        return submit(vec![field_error(
            "transactionComments",
            "transactionComments must be an array",
            &body,
        )]);
    };
    let mut errors = Vec::new();
    for item in items {
        let get = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or("");
        for k in ["domainCode", "referenceType", "referenceNumber", "commentText", "commentDate"] {
            if get(k).is_empty() {
                errors.push(field_error(k, "is required", item.get(k).unwrap_or(&Value::Null)));
            }
        }
        let rt = get("referenceType");
        if !["PO", "SUPPLIER_INVOICE", "RECEIVER"].contains(&rt) {
            errors.push(field_error("referenceType", "must be PO, SUPPLIER_INVOICE or RECEIVER", &json!(rt)));
        } else if !exists(&s.data, rt, get("referenceNumber")) {
            errors.push(field_error("referenceNumber", "no such record", &json!(get("referenceNumber"))));
        }
        if get("domainCode") != data::DOMAIN && !get("domainCode").is_empty() {
            errors.push(field_error("domainCode", "unknown domain", &json!(get("domainCode"))));
        }
    }
    if errors.is_empty() {
        s.comments.extend(items.iter().cloned());
    }
    submit(errors)
}

async fn po_approvals(State(sb): State<QadSandbox>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    if let Err(resp) = sb.admit(&headers).await {
        return resp;
    }
    let mut s = sb.lock();
    let Some(Json(body)) = body else {
        return submit(vec![field_error("purchaseOrderApprovals", "body is not JSON", &Value::Null)]);
    };
    let Some(items) = body.get("purchaseOrderApprovals").and_then(Value::as_array).cloned() else {
        return submit(vec![field_error(
            "purchaseOrderApprovals",
            "purchaseOrderApprovals must be an array",
            &body,
        )]);
    };
    let mut errors = Vec::new();
    let today = s.today.to_string();
    for item in &items {
        let get = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let (po, action) = (get("purchaseOrderNumber"), get("action"));
        let status = match action.as_str() {
            "approve" => "Approved",
            "deny" => "Denied",
            _ => {
                errors.push(field_error("action", "must be approve or deny", &json!(action)));
                continue;
            }
        };
        let table = s.data.table_mut(data::BROWSE_PO).expect("PO browse exists");
        match table.find(&[&po]).cloned() {
            Some(mut row) if row.get("po_mstr.po_approval_status").and_then(Value::as_str) == Some("Pending") => {
                row.insert("po_mstr.po_approval_status".into(), json!(status));
                row.insert("po_mstr.po_mod_date".into(), json!(today));
                table.upsert(row);
            }
            Some(_) => errors.push(field_error(
                "purchaseOrderNumber",
                "purchase order is not pending approval",
                &json!(po),
            )),
            None => errors.push(field_error("purchaseOrderNumber", "no such purchase order", &json!(po))),
        }
    }
    if errors.is_empty() {
        s.approvals.extend(items);
    }
    submit(errors)
}

// ---- control surface ---------------------------------------------------------------------

async fn control_stats(State(sb): State<QadSandbox>) -> Json<Stats> {
    Json(sb.stats())
}

async fn control_story(State(sb): State<QadSandbox>) -> Json<Value> {
    let s = sb.lock();
    let st = &s.story;
    Json(json!({
        "today": s.today.to_string(),
        "missing_receipt": st.missing_receipt, "quantity_variance": st.quantity_variance,
        "price_variance": st.price_variance, "pending_approval": st.pending_approval,
        "short_receipts": st.short_receipts, "malformed_invoices": st.malformed_invoices, "invoice_po": st.invoice_po,
        "rows": s.data.tables.iter().map(|(b, t)| (b.to_string(), t.len())).collect::<BTreeMap<_, _>>(),
    }))
}

async fn control_faults(State(sb): State<QadSandbox>, Json(f): Json<Faults>) -> Json<Faults> {
    let mut s = sb.lock();
    if f.expire_sessions_now {
        s.sessions.clear();
    }
    s.faults = Faults {
        expire_sessions_now: false,
        ..f
    };
    Json(s.faults.clone())
}

#[derive(Deserialize)]
struct TodayBody {
    today: NaiveDate,
}

async fn control_today(State(sb): State<QadSandbox>, Json(b): Json<TodayBody>) -> Json<Value> {
    sb.lock().today = b.today;
    Json(json!({"today": b.today.to_string()}))
}

#[derive(Deserialize)]
struct ReceiptBody {
    po: String,
    /// Lines and quantities; all lines in full when absent.
    lines: Option<Vec<ReceiptLine>>,
    /// Effective date; today when absent, earlier to back-date.
    date: Option<NaiveDate>,
    receiver: Option<String>,
}

#[derive(Deserialize)]
struct ReceiptLine {
    line: u32,
    qty: String,
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": msg}))).into_response()
}

async fn control_receipt(State(sb): State<QadSandbox>, Json(b): Json<ReceiptBody>) -> Response {
    let mut s = sb.lock();
    let Some(po) = s.data.table(data::BROWSE_PO).and_then(|t| t.find(&[&b.po])).cloned() else {
        return bad_request(format!("no purchase order {}", b.po));
    };
    let po_lines: Vec<Row> = s
        .data
        .table(data::BROWSE_PO_LINES)
        .map(|t| {
            t.rows()
                .filter(|r| r.get("pod_det.pod_nbr").and_then(text_of).as_deref() == Some(b.po.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let receiver = b.receiver.unwrap_or_else(|| {
        s.next_receiver += 1;
        format!("RCV{}", s.next_receiver)
    });
    let date = b.date.unwrap_or(s.today).to_string();
    let mut posted = Vec::new();
    for pl in &po_lines {
        let line: u32 = pl
            .get("pod_det.pod_line")
            .and_then(text_of)
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let qty = match &b.lines {
            None => pl.get("pod_det.pod_qty_ord").and_then(text_of).unwrap_or_default(),
            Some(ls) => match ls.iter().find(|l| l.line == line) {
                Some(l) => l.qty.clone(),
                None => continue,
            },
        };
        let r = json!({
            "prh_hist.prh_receiver": receiver, "prh_hist.prh_nbr": b.po, "prh_hist.prh_line": line,
            "prh_hist.prh_rcp_date": date, "prh_hist.prh_vend": po.get("po_mstr.po_vend"), "prh_hist.prh_part": pl.get("pod_det.pod_part"),
            "prh_hist.prh_rcvd": qty, "prh_hist.prh_pur_cost": pl.get("pod_det.pod_pur_cost"), "prh_hist.prh_um": pl.get("pod_det.pod_um"),
            "prh_hist.prh_curr": po.get("po_mstr.po_curr"), "prh_hist.prh_domain": data::DOMAIN, "prh_hist.prh_qty_ord": pl.get("pod_det.pod_qty_ord")
        });
        s.data
            .table_mut(data::BROWSE_RECEIPTS)
            .expect("receipts browse")
            .upsert(r.as_object().cloned().unwrap_or_default());
        posted.push(line);
    }
    Json(json!({"receiver": receiver, "lines": posted, "date": date})).into_response()
}

#[derive(Deserialize)]
struct InvoiceBody {
    voucher: String,
    po: String,
    amount: Option<String>,
    due_date: Option<NaiveDate>,
}

async fn control_invoice(State(sb): State<QadSandbox>, Json(b): Json<InvoiceBody>) -> Response {
    let mut s = sb.lock();
    let Some(po) = s.data.table(data::BROWSE_PO).and_then(|t| t.find(&[&b.po])).cloned() else {
        return bad_request(format!("no purchase order {}", b.po));
    };
    let today = s.today;
    let amount = b
        .amount
        .unwrap_or_else(|| po.get("po_mstr.po_total").and_then(text_of).unwrap_or_default());
    let r = json!({
        "CInvoice.CInvoiceVoucher": b.voucher, "CInvoice.CInvoiceReference": format!("INV-{}", b.voucher),
        "CInvoice.CreditorCode": po.get("po_mstr.po_vend"), "CInvoice.CInvoiceDate": today.to_string(),
        "CInvoice.CInvoiceDueDate": b.due_date.unwrap_or(today + chrono::Duration::days(30)).to_string(),
        "CInvoice.CInvoicePoNbr": b.po, "CInvoice.ReasonCode": "AP-NOALLOC", "CInvoice.CInvoiceIsInvoiceApproved": false,
        "CInvoice.CInvoiceIsLockPayment": false, "CInvoice.CInvoiceIsLogisticMatching": true, "CInvoice.CInvoiceHoldAmountTC": "0.00",
        "CInvoice.LastModifiedDate": today.to_string(), "CInvoice.LastModifiedTime": 43200,
        "CInvoice.CInvoiceOriginalCreditTC": amount, "CInvoice.CurrencyCode": po.get("po_mstr.po_curr"), "CInvoice.matchStatus": "UNMATCHED"
    });
    s.data
        .table_mut(data::BROWSE_INVOICES)
        .expect("invoices browse")
        .upsert(r.as_object().cloned().unwrap_or_default());
    Json(r).into_response()
}

#[derive(Deserialize)]
struct ApprovalBody {
    po: String,
    status: String,
}

async fn control_approval(State(sb): State<QadSandbox>, Json(b): Json<ApprovalBody>) -> Response {
    let mut s = sb.lock();
    let today = s.today.to_string();
    let table = s.data.table_mut(data::BROWSE_PO).expect("PO browse");
    let Some(mut row) = table.find(&[&b.po]).cloned() else {
        return bad_request(format!("no purchase order {}", b.po));
    };
    row.insert("po_mstr.po_approval_status".into(), json!(b.status));
    row.insert("po_mstr.po_mod_date".into(), json!(today));
    table.upsert(row.clone());
    Json(Value::Object(row)).into_response()
}

#[derive(Deserialize)]
struct RowsBody {
    browse: String,
    rows: Vec<Row>,
}

/// Insert or replace raw rows, exactly as given: how tests plant malformed data.
async fn control_rows(State(sb): State<QadSandbox>, Json(b): Json<RowsBody>) -> Response {
    let mut s = sb.lock();
    let Some(table) = s.data.table_mut(&b.browse) else {
        return bad_request(format!("no browse {}", b.browse));
    };
    let n = b.rows.len();
    for r in b.rows {
        table.upsert(r);
    }
    Json(json!({"upserted": n})).into_response()
}

async fn control_writes(State(sb): State<QadSandbox>) -> Json<Value> {
    let s = sb.lock();
    Json(json!({"transactionComments": s.comments, "purchaseOrderApprovals": s.approvals}))
}
