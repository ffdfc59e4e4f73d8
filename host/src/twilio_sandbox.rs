//! The Twilio sandbox: Twilio's REST surface as `twilio_api_v2010.yaml` and `twilio.md`
//! describe it, for tests and the demo. It accepts only what the OpenAPI file accepts (form
//! encoding, required and conditional parameters, Basic auth with a known key), answers with
//! Twilio's JSON shapes and `SM…`/`CA…` sids, honours the test magic numbers, counts every
//! request and never de-duplicates on the host's behalf. It can be told to answer 429 (with
//! or without `Retry-After`) or 5xx to a share of requests, and whether such a 5xx was
//! processed. Then it plays Twilio: status callbacks signed with the Auth Token.
//!
//! Architecture invariant: the host's Twilio client knows nothing of this module; only a
//! base URL differs.

// Handlers return early with a ready axum `Response`; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use base64::Engine;
use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::core::signature;

#[derive(Debug, Clone)]
pub struct TwilioSandboxConfig {
    pub account_sid: String,
    pub auth_token: String,
    pub api_key_sid: String,
    pub api_key_secret: String,
    /// Numbers this account owns (valid `From`). `+15005550006` is Twilio's magic valid one.
    pub numbers: Vec<String>,
    /// The messaging webhook configured on those numbers: where people's SMS replies go.
    pub sms_url: Option<String>,
}

impl Default for TwilioSandboxConfig {
    fn default() -> Self {
        TwilioSandboxConfig {
            account_sid: "AC0123456789abcdef0123456789abcdef".into(),
            auth_token: "sandbox0auth0token0000000000000f".into(),
            api_key_sid: "SK0123456789abcdef0123456789abcdef".into(),
            api_key_secret: "sandbox-api-key-secret".into(),
            numbers: vec!["+15005550006".into(), "+13125550100".into()],
            sms_url: None,
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct TwilioFaults {
    /// Share (0–1) of create requests answered 429 / 20429, not processed.
    pub throttle_share: f64,
    /// Seconds of `Retry-After` on those 429s (none when absent).
    pub retry_after: Option<u64>,
    /// Share (0–1) of create requests answered 5xx.
    pub fail_share: f64,
    /// Whether such a 5xx was processed anyway (the message exists) or not.
    pub fail_processed: bool,
    /// Status callbacks: share sent twice, and whether they arrive in reverse order.
    pub duplicate_callbacks_share: f64,
    pub reverse_callbacks: bool,
    /// Milliseconds each create request takes to answer (Twilio's own latency).
    pub latency_ms: u64,
    /// Create requests are received but left unanswered until this is turned off: a test
    /// holds sends in flight for exactly as long as it needs to (`in_flight` counts them).
    pub hold_creates: bool,
    /// Create requests are processed (the message or call exists, is listed and counted) but
    /// their answers are held until this is turned off: the moment Twilio has a resource its
    /// creator has not heard of yet.
    pub hold_answers: bool,
    /// Messages are created `queued` and stay so — no `date_sent`, no status callbacks — until
    /// this is turned off, which sends them: a sender's queue backed up (Twilio sends about one
    /// message a second from a long code). A list filtered by `DateSent` does not show them.
    pub queue_messages: bool,
    /// Answer creates and nothing more: no status callbacks, no scripted people (a stand-in
    /// that only answers, as a benchmark's peer does; real Twilio's callbacks cost the host's
    /// machine nothing to produce).
    pub skip_callbacks: bool,
}

/// How a person the sandbox "reached" answers: an SMS reply once the alert is delivered, or a
/// keypress during the call. `{code}` in a reply stands for the last word of the alert that
/// has the shape of a reference, as a person would copy it.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Script {
    /// Whom this applies to (E.164); everyone when absent. The first matching script wins.
    pub to: Option<String>,
    /// Only messages whose body contains this (a person answers what asks for an answer).
    pub when_body_contains: Option<String>,
    pub reply: Option<String>,
    pub digits: Option<String>,
}

/// What a call said back after a keypress (the TwiML answer to the gather request).
#[derive(Debug, Clone, Serialize)]
pub struct Spoken {
    pub call_sid: String,
    pub digits: String,
    pub status: u16,
    pub twiml: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct TwilioStats {
    pub requests: u64,
    /// Create requests received and not answered yet.
    pub in_flight: u64,
    pub messages_created: u64,
    pub calls_created: u64,
    pub rejected: u64,
    pub throttled: u64,
    pub failed: u64,
    pub callbacks_sent: u64,
    pub replies_sent: u64,
    pub keypresses_sent: u64,
}

/// A request as it arrived, for checking against the OpenAPI file by an independent validator.
#[derive(Debug, Clone, Serialize)]
pub struct RawRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: String,
    pub content_type: String,
    pub body: String,
}

/// A message or call the sandbox created.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    pub sid: String,
    pub to: String,
    pub from: String,
    pub body: String,
    pub status_callback: Option<String>,
    pub date_created: String,
    /// `queued` or `sent` (a message); `queued` (a call, as its create answered).
    pub status: String,
    /// When a message left the sender's queue (RFC 2822); none while queued, none for calls.
    pub date_sent: Option<String>,
}

struct Inner {
    cfg: TwilioSandboxConfig,
    faults: TwilioFaults,
    stats: TwilioStats,
    messages: Vec<Created>,
    calls: Vec<Created>,
    requests: Vec<RawRequest>,
    scripts: Vec<Script>,
    spoken: Vec<Spoken>,
    /// Each status callback's idempotency token (a duplicate shares its original's), and
    /// whether the host ever answered it 2xx: what the host owes to have stored.
    callbacks: std::collections::BTreeMap<String, bool>,
    rng: StdRng,
    next: u64,
}

#[derive(Clone)]
pub struct TwilioSandbox {
    inner: Arc<Mutex<Inner>>,
    /// Callbacks and answers still being played.
    playing: Arc<std::sync::atomic::AtomicUsize>,
    http: reqwest::Client,
    /// Whether create requests are held (the `hold_creates` fault), watched by those waiting.
    hold: Arc<tokio::sync::watch::Sender<bool>>,
    /// Whether answers to processed creates are held (the `hold_answers` fault).
    hold_answers: Arc<tokio::sync::watch::Sender<bool>>,
}

/// A create request being answered; counted in `in_flight` until dropped.
struct InFlight(TwilioSandbox);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().stats.in_flight -= 1;
    }
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({"code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status.as_u16()});
    (status, Json(body)).into_response()
}

fn is_e164(s: &str) -> bool {
    let d = s.strip_prefix('+').unwrap_or("");
    (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
}

/// The test credentials' magic `To` numbers for Messages (twilio.md).
fn message_magic(to: &str) -> Option<(u32, &'static str)> {
    Some(match to {
        "+15005550001" => (21211, "The 'To' number +15005550001 is not a valid phone number."),
        "+15005550002" => (
            21612,
            "The 'To' phone number is not currently reachable using the 'From' phone number via SMS.",
        ),
        "+15005550003" => (
            21408,
            "Permission to send an SMS has not been enabled for the region indicated by the 'To' number.",
        ),
        "+15005550004" => (21610, "Attempt to send to unsubscribed recipient"),
        "+15005550009" => (21614, "'To' number is not a valid mobile number"),
        _ => return None,
    })
}

impl TwilioSandbox {
    pub fn new(cfg: TwilioSandboxConfig) -> Self {
        TwilioSandbox {
            inner: Arc::new(Mutex::new(Inner {
                cfg,
                faults: TwilioFaults::default(),
                stats: TwilioStats::default(),
                messages: Vec::new(),
                calls: Vec::new(),
                requests: Vec::new(),
                scripts: Vec::new(),
                spoken: Vec::new(),
                callbacks: Default::default(),
                rng: StdRng::seed_from_u64(7),
                next: 0,
            })),
            http: reqwest::Client::new(),
            playing: Arc::default(),
            hold: Arc::new(tokio::sync::watch::channel(false).0),
            hold_answers: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// Whether every callback and scripted answer has been played.
    pub fn idle(&self) -> bool {
        self.playing.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> TwilioSandboxConfig {
        self.lock().cfg.clone()
    }
    /// Receive a create request: counted in flight, then answered after the configured
    /// latency and only once creates are no longer held.
    async fn receive(&self) -> InFlight {
        let ms = {
            let mut inner = self.lock();
            inner.stats.in_flight += 1;
            inner.faults.latency_ms
        };
        let in_flight = InFlight(self.clone());
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let _ = self.hold.subscribe().wait_for(|held| !*held).await;
        in_flight
    }
    /// Answer a processed create, once answers are no longer held.
    async fn answer(&self, response: Response) -> Response {
        let _ = self.hold_answers.subscribe().wait_for(|held| !*held).await;
        response
    }
    /// Every status callback played, by idempotency token: whether the host answered it 2xx.
    pub fn callbacks(&self) -> std::collections::BTreeMap<String, bool> {
        self.lock().callbacks.clone()
    }
    pub fn stats(&self) -> TwilioStats {
        self.lock().stats.clone()
    }
    pub fn messages(&self) -> Vec<Created> {
        self.lock().messages.clone()
    }
    pub fn calls(&self) -> Vec<Created> {
        self.lock().calls.clone()
    }
    /// Every request received, as it arrived.
    pub fn raw_requests(&self) -> Vec<RawRequest> {
        self.lock().requests.clone()
    }
    fn keep(&self, method: &str, path: String, query: Option<&str>, headers: &HeaderMap, body: &[u8]) {
        let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        self.lock().requests.push(RawRequest {
            method: method.into(),
            path,
            query: query.unwrap_or("").into(),
            authorization: h("authorization"),
            content_type: h("content-type"),
            body: String::from_utf8_lossy(body).into_owned(),
        });
    }
    pub fn set_faults(&self, f: TwilioFaults) {
        let (hold, hold_answers) = (f.hold_creates, f.hold_answers);
        {
            let mut s = self.lock();
            if !f.queue_messages {
                for m in s.messages.iter_mut().filter(|m| m.date_sent.is_none()) {
                    m.status = "sent".into();
                    m.date_sent = Some(rfc2822_now());
                }
            }
            s.faults = f;
        }
        self.hold.send_replace(hold);
        self.hold_answers.send_replace(hold_answers);
    }
    /// How the people reached answer, from now on.
    pub fn set_scripts(&self, scripts: Vec<Script>) {
        self.lock().scripts = scripts;
    }
    /// Point the numbers' messaging webhook at `url` (the host's inbound path).
    pub fn set_sms_url(&self, url: &str) {
        self.lock().cfg.sms_url = Some(url.to_string());
    }
    /// What calls said back after keypresses.
    pub fn spoken(&self) -> Vec<Spoken> {
        self.lock().spoken.clone()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Messages.json",
                post(create_message).get(list_messages),
            )
            .route("/2010-04-01/Accounts/{account}/Calls.json", post(create_call).get(list_calls))
            .route("/2010-04-01/Accounts/{account_json}", get(fetch_account))
            .route(
                "/_sandbox/stats",
                get(|State(s): State<TwilioSandbox>| async move { Json(s.stats()) }),
            )
            .route(
                "/_sandbox/messages",
                get(|State(s): State<TwilioSandbox>| async move { Json(json!({"messages": s.messages(), "calls": s.calls()})) }),
            )
            .route(
                "/_sandbox/scripts",
                post(|State(s): State<TwilioSandbox>, Json(v): Json<Vec<Script>>| async move {
                    s.set_scripts(v.clone());
                    Json(v)
                }),
            )
            .route(
                "/_sandbox/spoken",
                get(|State(s): State<TwilioSandbox>| async move { Json(s.spoken()) }),
            )
            .route(
                "/_sandbox/faults",
                post(|State(s): State<TwilioSandbox>, Json(f): Json<TwilioFaults>| async move {
                    s.set_faults(f.clone());
                    Json(f)
                }),
            )
            .with_state(self.clone())
    }

    /// Bind `addr`, serve in the background, return the base URL to give the client.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let base = format!("http://{}", listener.local_addr()?);
        let app = self.router();
        Ok((
            base,
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
        ))
    }

    /// Auth and account checks shared by every endpoint; the path names the account, Basic
    /// auth carries an API key of it (or the account SID and Auth Token).
    fn admit(&self, account: &str, headers: &HeaderMap) -> Result<(), Response> {
        let mut s = self.lock();
        s.stats.requests += 1;
        let creds = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let ok = creds.as_deref().is_some_and(|c| {
            c == format!("{}:{}", s.cfg.api_key_sid, s.cfg.api_key_secret) || c == format!("{}:{}", s.cfg.account_sid, s.cfg.auth_token)
        });
        if !ok {
            s.stats.rejected += 1;
            return Err(error(StatusCode::UNAUTHORIZED, 20003, "Authenticate"));
        }
        if account != s.cfg.account_sid {
            s.stats.rejected += 1;
            return Err(error(
                StatusCode::NOT_FOUND,
                20404,
                &format!("The requested resource /2010-04-01/Accounts/{account} was not found"),
            ));
        }
        Ok(())
    }

    /// Faults for a create request: Some(response) when this one is throttled or failed
    /// (and whether it was processed anyway).
    fn fault(&self) -> Option<(Response, bool)> {
        let mut s = self.lock();
        let (t, f) = (s.faults.throttle_share, s.faults.fail_share);
        let roll: f64 = s.rng.r#gen();
        if roll < t {
            s.stats.throttled += 1;
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
            if let Some(secs) = s.faults.retry_after {
                r.headers_mut().insert("retry-after", secs.into());
            }
            return Some((r, false));
        }
        if roll < t + f {
            s.stats.failed += 1;
            return Some((
                error(StatusCode::SERVICE_UNAVAILABLE, 20500, "Internal Server Error"),
                s.faults.fail_processed,
            ));
        }
        None
    }

    fn new_sid(&self, prefix: &str) -> String {
        let mut s = self.lock();
        s.next += 1;
        let n = s.next;
        let r: u64 = s.rng.r#gen();
        format!("{prefix}{n:016x}{r:016x}")
    }

    /// POST signed form parameters to a webhook the way Twilio does: the signature over
    /// the URL and parameters with the account's Auth Token, an idempotency token kept across
    /// a duplicate. The response's status and body.
    async fn post_signed(&self, url: &str, params: &[(String, String)], idempotency: &str) -> Option<(u16, String)> {
        let token = self.lock().cfg.auth_token.clone();
        let sig = signature::sign(&token, url, params);
        let resp = self
            .http
            .post(url)
            .header("x-twilio-signature", sig)
            .header("i-twilio-idempotency-token", idempotency)
            .form(params)
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.unwrap_or_default()))
    }

    /// Play Twilio: post signed status callbacks for a created resource, sometimes twice,
    /// in reverse order when told; then the person answers as scripted.
    fn play_callbacks(&self, created: Created, res: Resource, statuses: Vec<Vec<(String, String)>>) {
        let (dup, reverse, skip) = {
            let s = self.lock();
            (
                s.faults.duplicate_callbacks_share,
                s.faults.reverse_callbacks,
                s.faults.skip_callbacks,
            )
        };
        if skip {
            return;
        }
        let sb = self.clone();
        self.playing.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(async move {
            let mut order = statuses;
            if reverse {
                order.reverse();
            }
            if let Some(url) = created.status_callback.clone() {
                for params in order {
                    let twice = sb.lock().rng.r#gen::<f64>() < dup;
                    let idempotency = uuid::Uuid::new_v4().to_string();
                    sb.lock().callbacks.entry(idempotency.clone()).or_insert(false);
                    for _ in 0..if twice { 2 } else { 1 } {
                        if let Some((status, _)) = sb.post_signed(&url, &params, &idempotency).await {
                            let mut s = sb.lock();
                            s.stats.callbacks_sent += 1;
                            if (200..300).contains(&status) {
                                s.callbacks.insert(idempotency.clone(), true);
                            }
                        }
                    }
                }
            }
            sb.answer_as_person(&created, res).await;
            sb.playing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }

    /// The person reached answers as a script says: an SMS reply to the account's messaging
    /// webhook, or a keypress posted to the call's `<Gather action>`.
    async fn answer_as_person(&self, c: &Created, res: Resource) {
        let (script, account, sms_url) = {
            let s = self.lock();
            let script = s
                .scripts
                .iter()
                .find(|sc| {
                    sc.to.as_deref().is_none_or(|t| t == c.to) && sc.when_body_contains.as_deref().is_none_or(|w| c.body.contains(w))
                })
                .cloned();
            (script, s.cfg.account_sid.clone(), s.cfg.sms_url.clone())
        };
        let Some(script) = script else { return };
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        match (res, script.reply, script.digits, sms_url) {
            (Resource::Message, Some(reply), _, Some(url)) => {
                let code = crate::core::intake::reference_candidates(&c.body).pop().unwrap_or_default();
                let body = reply.replace("{code}", &code);
                let sid = self.new_sid("SM");
                let params = vec![
                    p("AccountSid", &account),
                    p("ApiVersion", "2010-04-01"),
                    p("Body", &body),
                    p("From", &c.to),
                    p("MessageSid", &sid),
                    p("NumMedia", "0"),
                    p("SmsMessageSid", &sid),
                    p("SmsSid", &sid),
                    p("SmsStatus", "received"),
                    p("To", &c.from),
                ];
                if self.post_signed(&url, &params, &uuid::Uuid::new_v4().to_string()).await.is_some() {
                    self.lock().stats.replies_sent += 1;
                }
            }
            (Resource::Call, _, Some(digits), _) => {
                let Some(action) = gather_action(&c.body) else { return };
                let params = vec![
                    p("AccountSid", &account),
                    p("ApiVersion", "2010-04-01"),
                    p("CallSid", &c.sid),
                    p("CallStatus", "in-progress"),
                    p("Digits", &digits),
                    p("Direction", "outbound-api"),
                    p("FinishedOnKey", ""),
                    p("From", &c.from),
                    p("To", &c.to),
                ];
                if let Some((status, twiml)) = self.post_signed(&action, &params, &uuid::Uuid::new_v4().to_string()).await {
                    let mut s = self.lock();
                    s.stats.keypresses_sent += 1;
                    s.spoken.push(Spoken {
                        call_sid: c.sid.clone(),
                        digits,
                        status,
                        twiml,
                    });
                }
            }
            _ => {}
        }
    }
}

/// The `action` URL of the `<Gather>` in a call's TwiML, unescaped.
fn gather_action(twiml: &str) -> Option<String> {
    let start = twiml.find("<Gather")?;
    let rest = &twiml[start..];
    let a = rest.find("action=\"")? + "action=\"".len();
    let end = rest[a..].find('"')?;
    Some(
        rest[a..a + end]
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

fn form_of(headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, Response> {
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            20001,
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    serde_urlencoded::from_bytes(body).map_err(|_| error(StatusCode::BAD_REQUEST, 20001, "The request body is not form-encoded"))
}

fn one<'a>(form: &'a [(String, String)], k: &str) -> Option<&'a str> {
    form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

fn rfc2822_now() -> String {
    Utc::now().format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

async fn create_message(
    State(sb): State<TwilioSandbox>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let _in_flight = sb.receive().await;
    sb.keep(
        "POST",
        format!("/2010-04-01/Accounts/{account}/Messages.json"),
        None,
        &headers,
        &body,
    );
    if let Err(r) = sb.admit(&account, &headers) {
        return r;
    }
    let form = match form_of(&headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let reject = |code, status, msg: &str| {
        sb.lock().stats.rejected += 1;
        error(status, code, msg)
    };
    let Some(to) = one(&form, "To") else {
        return reject(21604, StatusCode::BAD_REQUEST, "A 'To' phone number is required.");
    };
    let from = one(&form, "From");
    if from.is_none() && one(&form, "MessagingServiceSid").is_none() {
        return reject(21603, StatusCode::BAD_REQUEST, "A 'From' phone number is required.");
    }
    let text = one(&form, "Body").unwrap_or("");
    if text.is_empty() && one(&form, "MediaUrl").is_none() && one(&form, "ContentSid").is_none() {
        return reject(21602, StatusCode::BAD_REQUEST, "Message body is required.");
    }
    if text.chars().count() > 1600 {
        return reject(
            21617,
            StatusCode::BAD_REQUEST,
            "The concatenated message body exceeds the 1600 character limit.",
        );
    }
    if !is_e164(to) {
        return reject(
            21211,
            StatusCode::BAD_REQUEST,
            &format!("The 'To' number {to} is not a valid phone number."),
        );
    }
    if let Some(f) = from
        && !sb.lock().cfg.numbers.iter().any(|n| n == f)
    {
        return reject(
            21606,
            StatusCode::BAD_REQUEST,
            "The From phone number is not a valid, SMS-capable inbound phone number or short code for your account.",
        );
    }
    if let Some((code, msg)) = message_magic(to) {
        return reject(code, StatusCode::BAD_REQUEST, msg);
    }
    if let Some((resp, processed)) = sb.fault() {
        if processed {
            record(&sb, Resource::Message, to, from.unwrap_or(""), text, one(&form, "StatusCallback"));
            return sb.answer(resp).await;
        }
        return resp;
    }
    let m = record(&sb, Resource::Message, to, from.unwrap_or(""), text, one(&form, "StatusCallback"));
    let account_sid = sb.lock().cfg.account_sid.clone();
    let body = json!({
        "account_sid": account_sid, "api_version": "2010-04-01", "body": m.body, "date_created": m.date_created,
        "date_sent": null, "date_updated": m.date_created, "direction": "outbound-api", "error_code": null, "error_message": null,
        "from": m.from, "messaging_service_sid": null, "num_media": "0", "num_segments": ((m.body.chars().count().max(1) - 1) / 153 + 1).to_string(),
        "price": null, "price_unit": "USD", "sid": m.sid, "status": "queued",
        "subresource_uris": {"media": format!("/2010-04-01/Accounts/{account_sid}/Messages/{}/Media.json", m.sid)},
        "to": m.to, "uri": format!("/2010-04-01/Accounts/{account_sid}/Messages/{}.json", m.sid)
    });
    sb.answer((StatusCode::CREATED, Json(body)).into_response()).await
}

#[derive(Clone, Copy)]
enum Resource {
    Message,
    Call,
}

/// Keep a created message or call, count it, and play its status callbacks (a message held
/// in the sender's queue plays none).
fn record(sb: &TwilioSandbox, res: Resource, to: &str, from: &str, body: &str, callback: Option<&str>) -> Created {
    let mut c = Created {
        sid: sb.new_sid(match res {
            Resource::Message => "SM",
            Resource::Call => "CA",
        }),
        to: to.into(),
        from: from.into(),
        body: body.into(),
        status_callback: callback.map(String::from),
        date_created: rfc2822_now(),
        status: "queued".into(),
        date_sent: None,
    };
    let (account, queued) = {
        let mut s = sb.lock();
        let queued = matches!(res, Resource::Message) && s.faults.queue_messages;
        if matches!(res, Resource::Message) && !queued {
            c.status = "sent".into();
            c.date_sent = Some(c.date_created.clone());
        }
        match res {
            Resource::Message => {
                s.stats.messages_created += 1;
                s.messages.push(c.clone());
            }
            Resource::Call => {
                s.stats.calls_created += 1;
                s.calls.push(c.clone());
            }
        }
        (s.cfg.account_sid.clone(), queued)
    };
    if queued {
        return c;
    }
    let common = |status_key: &str, status: &str| {
        vec![
            ("AccountSid".to_string(), account.clone()),
            ("ApiVersion".to_string(), "2010-04-01".to_string()),
            ("From".to_string(), c.from.clone()),
            (status_key.to_string(), status.to_string()),
            ("To".to_string(), c.to.clone()),
        ]
    };
    let statuses = match res {
        Resource::Message => ["sent", "delivered"]
            .iter()
            .map(|st| {
                let mut p = common("MessageStatus", st);
                p.extend([
                    ("MessageSid".into(), c.sid.clone()),
                    ("SmsSid".into(), c.sid.clone()),
                    ("SmsStatus".into(), st.to_string()),
                ]);
                p
            })
            .collect(),
        Resource::Call => ["initiated", "ringing", "in-progress", "completed"]
            .iter()
            .enumerate()
            .map(|(i, st)| {
                let mut p = common("CallStatus", st);
                p.extend([
                    ("CallSid".into(), c.sid.clone()),
                    ("SequenceNumber".into(), i.to_string()),
                    ("Timestamp".into(), rfc2822_now()),
                ]);
                if *st == "completed" {
                    p.push(("CallDuration".into(), "23".into()));
                }
                p
            })
            .collect(),
    };
    sb.play_callbacks(c.clone(), res, statuses);
    c
}

async fn create_call(
    State(sb): State<TwilioSandbox>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let _in_flight = sb.receive().await;
    sb.keep("POST", format!("/2010-04-01/Accounts/{account}/Calls.json"), None, &headers, &body);
    if let Err(r) = sb.admit(&account, &headers) {
        return r;
    }
    let form = match form_of(&headers, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let reject = |code, msg: &str| {
        sb.lock().stats.rejected += 1;
        error(StatusCode::BAD_REQUEST, code, msg)
    };
    let (Some(to), Some(from)) = (one(&form, "To"), one(&form, "From")) else {
        return reject(21201, "No 'To' number is specified");
    };
    let twiml = one(&form, "Twiml").unwrap_or("");
    if twiml.is_empty() && one(&form, "Url").is_none() && one(&form, "ApplicationSid").is_none() {
        return reject(21205, "Url parameter is required.");
    }
    if twiml.chars().count() > 4000 {
        return reject(21220, "Twiml exceeds the 4000 character limit.");
    }
    if !is_e164(to) {
        return reject(21211, &format!("The 'To' number {to} is not a valid phone number."));
    }
    if !sb.lock().cfg.numbers.iter().any(|n| n == from) {
        return reject(21210, "The source phone number provided, is not yet verified for your account.");
    }
    if to == "+15005550001" {
        return reject(21216, "Call blocked by Twilio blocklist");
    }
    if let Some((resp, processed)) = sb.fault() {
        if processed {
            record(&sb, Resource::Call, to, from, twiml, one(&form, "StatusCallback"));
            return sb.answer(resp).await;
        }
        return resp;
    }
    let c = record(&sb, Resource::Call, to, from, twiml, one(&form, "StatusCallback"));
    let account_sid = sb.lock().cfg.account_sid.clone();
    let body = json!({
        "account_sid": account_sid, "api_version": "2010-04-01", "date_created": c.date_created, "date_updated": c.date_created,
        "direction": "outbound-api", "from": c.from, "to": c.to, "sid": c.sid, "status": "queued", "price_unit": "USD",
        "uri": format!("/2010-04-01/Accounts/{account_sid}/Calls/{}.json", c.sid)
    });
    sb.answer((StatusCode::CREATED, Json(body)).into_response()).await
}

async fn list_messages(
    State(sb): State<TwilioSandbox>,
    Path(account): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    list(sb, Resource::Message, account, headers, q)
}

async fn list_calls(State(sb): State<TwilioSandbox>, Path(account): Path<String>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    list(sb, Resource::Call, account, headers, q)
}

/// `GET …/Messages.json` and `GET …/Calls.json`: filtered by `To` and `From`, newest first,
/// one page of `PageSize` (default 50, at most 1,000), as Twilio reads them.
fn list(sb: TwilioSandbox, resource: Resource, account: String, headers: HeaderMap, q: Option<String>) -> Response {
    let (file, key) = match resource {
        Resource::Message => ("Messages.json", "messages"),
        Resource::Call => ("Calls.json", "calls"),
    };
    sb.keep("GET", format!("/2010-04-01/Accounts/{account}/{file}"), q.as_deref(), &headers, &[]);
    if let Err(r) = sb.admit(&account, &headers) {
        return r;
    }
    let params: HashMap<String, String> = serde_urlencoded::from_str(q.as_deref().unwrap_or("")).unwrap_or_default();
    let page_size = params
        .get("PageSize")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, 1000);
    // `DateSent` filters (messages): `DateSent>` is on or after, `DateSent<` on or before, a
    // date or an instant; a message still queued has no `date_sent` and matches none.
    let sent_filters: Vec<(&str, &String)> = ["DateSent", "DateSent>", "DateSent<"]
        .into_iter()
        .filter_map(|k| params.get(k).map(|v| (k, v)))
        .collect();
    let sent_matches = |date_sent: Option<&str>| {
        sent_filters.is_empty()
            || date_sent
                .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
                .is_some_and(|sent| {
                    sent_filters
                        .iter()
                        .all(|(k, v)| date_filter_matches(k, v, sent.with_timezone(&Utc)))
                })
    };
    let s = sb.lock();
    let created = match resource {
        Resource::Message => &s.messages,
        Resource::Call => &s.calls,
    };
    let listed: Vec<Value> = created
        .iter()
        .rev()
        .filter(|m| params.get("To").is_none_or(|t| t == &m.to) && params.get("From").is_none_or(|f| f == &m.from))
        .filter(|m| matches!(resource, Resource::Call) || sent_matches(m.date_sent.as_deref()))
        .take(page_size)
        .map(|m| match resource {
            Resource::Message => json!({"sid": m.sid, "to": m.to, "from": m.from, "body": m.body, "status": m.status,
                                        "date_created": m.date_created, "date_sent": m.date_sent}),
            Resource::Call => json!({"sid": m.sid, "to": m.to, "from": m.from, "status": m.status, "date_created": m.date_created}),
        })
        .collect();
    Json(json!({key: listed, "page": 0, "page_size": listed.len(), "next_page_uri": null})).into_response()
}

/// Whether `sent` passes a `DateSent` filter `key` (`DateSent`, `DateSent>`, `DateSent<`) of
/// `value`: a date (`YYYY-MM-DD`, compared by day) or an instant (RFC 3339).
fn date_filter_matches(key: &str, value: &str, sent: chrono::DateTime<Utc>) -> bool {
    use std::cmp::Ordering::*;
    let order = if let Ok(at) = chrono::DateTime::parse_from_rfc3339(value) {
        sent.cmp(&at.with_timezone(&Utc))
    } else if let Ok(day) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        sent.date_naive().cmp(&day)
    } else {
        return false;
    };
    match key {
        "DateSent>" => order != Less,
        "DateSent<" => order != Greater,
        _ => order == Equal,
    }
}

/// `GET /2010-04-01/Accounts/{Sid}.json`. Like Twilio, a standard API key may not read the
/// account resource: only the account SID with its Auth Token opens it.
async fn fetch_account(State(sb): State<TwilioSandbox>, Path(account_json): Path<String>, headers: HeaderMap) -> Response {
    sb.keep("GET", format!("/2010-04-01/Accounts/{account_json}"), None, &headers, &[]);
    let Some(account) = account_json.strip_suffix(".json") else {
        return error(StatusCode::NOT_FOUND, 20404, "The requested resource was not found");
    };
    if let Err(r) = sb.admit(account, &headers) {
        return r;
    }
    let s = sb.lock();
    let expected = format!("{}:{}", s.cfg.account_sid, s.cfg.auth_token);
    let by_token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|c| c == expected.as_bytes());
    if !by_token {
        return error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    Json(json!({
        "sid": s.cfg.account_sid, "friendly_name": "ml-connector sandbox", "status": "active", "type": "Full",
        "uri": format!("/2010-04-01/Accounts/{}.json", s.cfg.account_sid),
    }))
    .into_response()
}
