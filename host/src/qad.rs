//! The QAD adapter: login (securityControl, then a password-grant token), the workspace
//! header, browse paging that never falls into the empty-page trap, re-authentication
//! once on 401 (restarting the browse with a new `callId`, since a `callId` belongs to the
//! session that began it), and retries with jittered back-off on 5xx and timeouts.
//! Relies on nothing `qad-api.md` does not state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::Value;
use thiserror::Error;
use tokio::sync::Mutex;

use crate::core::rows::Row;
use crate::outbound::{BodyError, read_capped};
use crate::secrets::SecretString;

/// The most of one QAD answer read: 16 MiB. A page of the default 200 rows is well under
/// 1 MiB; a larger one is refused (`QadError::Body`), not read on.
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// The most of an error answer read for its message: 64 KiB.
pub const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

#[derive(Debug, Error)]
pub enum QadError {
    #[error("QAD did not answer {what}: {source}")]
    Transport {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("QAD answered {status} to {what}: {message}")]
    Status { status: u16, what: String, message: String },
    #[error("QAD refused the session for {what}: {message}")]
    Unauthorized { what: String, message: String },
    #[error("QAD answered {what} with a body that is not the documented shape: {problem}")]
    Shape { what: String, problem: String },
    #[error("QAD rejected the write to {what}: {errors}")]
    Rejected { what: String, errors: String },
    /// The poll read more than its ceiling (`ML_CONNECTOR_POLL_MAX_PAGES`, `…_MAX_ROWS`): a
    /// QAD that pages for ever, or a page size far too small, ends the poll here.
    #[error(
        "the poll stopped at browse {browse} page {page}: {read} read and QAD had more, the ceiling is {ceiling} (ML_CONNECTOR_POLL_MAX_PAGES / ML_CONNECTOR_POLL_MAX_ROWS)"
    )]
    Ceiling {
        browse: String,
        page: u32,
        read: String,
        ceiling: String,
    },
    #[error("QAD's answer to {what} was not read: {source}")]
    Body {
        what: String,
        #[source]
        source: BodyError,
    },
}

impl QadError {
    /// Worth another try: the server was slow, down or upgrading.
    pub fn is_transient(&self) -> bool {
        match self {
            QadError::Transport { .. } => true,
            QadError::Body { source, .. } => source.is_transient(),
            QadError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct QadConfig {
    /// The tenant's full base URL, context root included (`https://x.qad.com/clouderp`).
    pub base_url: String,
    /// `<domain>_<entity>`, sent as `x-qad-workspace-id`.
    pub workspace: String,
    pub user: String,
    pub password: SecretString,
    pub page_size: u32,
    pub retry: RetryPolicy,
}

/// `<field>,<op>,<value>,literal`. Only `eq` and `ge` are documented operators, so only
/// they are offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Eq(String, String),
    Ge(String, String),
}

impl Filter {
    fn render(&self) -> String {
        match self {
            Filter::Eq(f, v) => format!("{f},eq,{v},literal"),
            Filter::Ge(f, v) => format!("{f},ge,{v},literal"),
        }
    }
}

/// Counters for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    /// Browse pages read (what the poll's page ceiling counts).
    pub pages: AtomicU64,
    pub rows: AtomicU64,
    pub logins: AtomicU64,
}

/// The most one poll (one client) reads of QAD, all browses together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceiling {
    pub pages: u64,
    pub rows: u64,
}

impl Default for Ceiling {
    fn default() -> Self {
        Ceiling {
            pages: crate::core::limits::POLL_MAX_PAGES,
            rows: crate::core::limits::POLL_MAX_ROWS,
        }
    }
}

pub struct QadClient {
    http: reqwest::Client,
    cfg: QadConfig,
    ceiling: Ceiling,
    token: Mutex<Option<SecretString>>,
    pub counters: Counters,
}

enum PageError {
    Unauthorized(QadError),
    Other(QadError),
}

impl QadClient {
    pub fn new(http: reqwest::Client, mut cfg: QadConfig) -> Self {
        cfg.base_url = cfg.base_url.trim_end_matches('/').to_string();
        QadClient {
            http,
            cfg,
            ceiling: Ceiling::default(),
            token: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    /// The same client with another ceiling on what it reads.
    pub fn with_ceiling(mut self, ceiling: Ceiling) -> Self {
        self.ceiling = ceiling;
        self
    }

    /// Past the ceiling after a page: the error that ends the poll.
    fn past_ceiling(&self, browse: &str, page: u32) -> Option<QadError> {
        let (pages, rows) = (
            self.counters.pages.load(Ordering::Relaxed),
            self.counters.rows.load(Ordering::Relaxed),
        );
        let over = |read: u64, ceiling: u64, what: &str| (read >= ceiling).then(|| (format!("{read} {what}"), format!("{ceiling} {what}")));
        let (read, ceiling) = over(pages, self.ceiling.pages, "pages").or_else(|| over(rows, self.ceiling.rows, "rows"))?;
        Some(QadError::Ceiling {
            browse: browse.into(),
            page,
            read,
            ceiling,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.cfg.base_url, path)
    }

    fn backoff(&self) -> ExponentialBuilder {
        let r = &self.cfg.retry;
        ExponentialBuilder::default()
            .with_min_delay(r.min_delay)
            .with_max_delay(r.max_delay)
            .with_max_times(r.attempts.saturating_sub(1))
            .with_jitter()
    }

    async fn error_from(what: &str, resp: reqwest::Response) -> QadError {
        let status = resp.status().as_u16();
        let text = read_capped(resp, MAX_ERROR_BODY_BYTES)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        // The documented envelope: {"errors":[{"severity":1,"code":"403","message":"…"}]}.
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                v["errors"]
                    .as_array()
                    .map(|e| e.iter().filter_map(|x| x["message"].as_str()).collect::<Vec<_>>().join("; "))
            })
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| text.chars().take(200).collect());
        if status == 401 {
            QadError::Unauthorized {
                what: what.into(),
                message,
            }
        } else {
            QadError::Status {
                status,
                what: what.into(),
                message,
            }
        }
    }

    /// The JSON body of a successful answer, or the error it stands for.
    async fn json_of(what: &str, sent: Result<reqwest::Response, reqwest::Error>) -> Result<Value, QadError> {
        let resp = sent.map_err(|source| QadError::Transport { what: what.into(), source })?;
        if !resp.status().is_success() {
            return Err(Self::error_from(what, resp).await);
        }
        let body = read_capped(resp, MAX_BODY_BYTES)
            .await
            .map_err(|source| QadError::Body { what: what.into(), source })?;
        serde_json::from_slice(&body).map_err(|e| QadError::Shape {
            what: what.into(),
            problem: e.to_string(),
        })
    }

    /// Log in: securityControl with HTTP Basic gives the client id; the token endpoint gives
    /// the bearer token. Retried when QAD is down; a refusal is final.
    pub async fn login(&self) -> Result<(), QadError> {
        let attempt = || async {
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let what = "securityControl";
            let sent = self
                .http
                .get(self.url("/api/qracore/securityControl"))
                .basic_auth(&self.cfg.user, Some(self.cfg.password.expose()))
                .send()
                .await;
            let body = Self::json_of(what, sent).await?;
            let client_id = body["data"]["securityControls"][0]["clientId"]
                .as_str()
                .ok_or_else(|| QadError::Shape {
                    what: what.into(),
                    problem: "no data.securityControls[0].clientId".into(),
                })?
                .to_string();
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let what = "oauth/token";
            let sent = self
                .http
                .post(self.url("/oauth/token"))
                .form(&[
                    ("client_id", client_id.as_str()),
                    ("grant_type", "password"),
                    ("username", self.cfg.user.as_str()),
                    ("password", self.cfg.password.expose()),
                ])
                .send()
                .await;
            let body = Self::json_of(what, sent).await?;
            let token = body["access_token"].as_str().ok_or_else(|| QadError::Shape {
                what: what.into(),
                problem: "no access_token".into(),
            })?;
            Ok(SecretString::new(token))
        };
        let token = attempt.retry(self.backoff()).when(QadError::is_transient).await?;
        self.counters.logins.fetch_add(1, Ordering::Relaxed);
        *self.token.lock().await = Some(token);
        Ok(())
    }

    async fn current_token(&self) -> Result<SecretString, QadError> {
        if let Some(t) = self.token.lock().await.clone() {
            return Ok(t);
        }
        self.login().await?;
        Ok(self.token.lock().await.clone().expect("login stored a token"))
    }

    async fn page(
        &self,
        token: &SecretString,
        browse_id: &str,
        filters: &[Filter],
        page: u32,
        call_id: &str,
        page_size: u32,
    ) -> Result<(Vec<Row>, bool), PageError> {
        let what = format!("browse {browse_id} page {page}");
        let mut query: Vec<(&str, String)> = vec![
            ("browseId", browse_id.to_string()),
            ("page", page.to_string()),
            ("pageSize", page_size.to_string()),
            // Both page and pageAction always: without them QAD answers 200 with no rows.
            ("pageAction", if page == 1 { "first" } else { "next" }.to_string()),
            ("callId", call_id.to_string()),
        ];
        query.extend(filters.iter().map(|f| ("filter", f.render())));
        let attempt = || async {
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let sent = self
                .http
                .get(self.url("/api/qracore/browses"))
                .bearer_auth(token.expose())
                .header("x-qad-workspace-id", &self.cfg.workspace)
                .query(&query)
                .send()
                .await;
            Self::json_of(&what, sent).await
        };
        let body = attempt
            .retry(self.backoff())
            .when(QadError::is_transient)
            .await
            .map_err(|e| match e {
                e @ QadError::Unauthorized { .. } => PageError::Unauthorized(e),
                e => PageError::Other(e),
            })?;
        let shape = |problem: &str| {
            PageError::Other(QadError::Shape {
                what: what.clone(),
                problem: problem.into(),
            })
        };
        let rows = body["data"].as_array().ok_or_else(|| shape("no data array"))?;
        let rows: Vec<Row> = rows.iter().map(|r| r.as_object().cloned().unwrap_or_default()).collect();
        // QAD spells it "auxillary"; the flag is a string.
        let flag = &body["auxillaryData"]["HasMoreParams"];
        let more = flag.as_str() == Some("true") || flag.as_bool() == Some(true);
        self.counters.rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
        self.counters.pages.fetch_add(1, Ordering::Relaxed);
        Ok((rows, more))
    }

    /// Every row of a browse matching all `filters`, page by page.
    pub async fn browse(&self, browse_id: &str, filters: &[Filter]) -> Result<Vec<Row>, QadError> {
        let mut reauthenticated = false;
        'restart: loop {
            let token = self.current_token().await?;
            let call_id = uuid::Uuid::new_v4().to_string();
            let mut rows = Vec::new();
            let mut page = 1;
            loop {
                match self.page(&token, browse_id, filters, page, &call_id, self.cfg.page_size).await {
                    Ok((mut got, more)) => {
                        rows.append(&mut got);
                        if !more {
                            return Ok(rows);
                        }
                        if let Some(e) = self.past_ceiling(browse_id, page) {
                            return Err(e);
                        }
                        page += 1;
                    }
                    Err(PageError::Unauthorized(e)) => {
                        if reauthenticated {
                            return Err(e);
                        }
                        // Expired mid-poll: log in again once and restart from page 1 with a new
                        // callId; rows already seen are de-duplicated by content version upstream.
                        reauthenticated = true;
                        tracing::info!(browse = browse_id, page, "QAD session expired; re-authenticating");
                        *self.token.lock().await = None;
                        self.login().await?;
                        continue 'restart;
                    }
                    Err(PageError::Other(e)) => return Err(e),
                }
            }
        }
    }

    /// The first page of a browse with one row at most, in the tenant's workspace: what
    /// `TestConnection` reads of each stream to prove a poll may (a wrong domain or entity
    /// logs in, then is refused every browse). The number of rows read, 0 or 1.
    pub async fn probe(&self, browse_id: &str) -> Result<usize, QadError> {
        let token = self.current_token().await?;
        let call_id = uuid::Uuid::new_v4().to_string();
        match self.page(&token, browse_id, &[], 1, &call_id, 1).await {
            Ok((rows, _)) => Ok(rows.len()),
            Err(PageError::Unauthorized(e) | PageError::Other(e)) => Err(e),
        }
    }

    /// The workspace sent as `x-qad-workspace-id`.
    pub fn workspace(&self) -> &str {
        &self.cfg.workspace
    }

    /// POST a write (`submitResult` envelope). `success:false` is a failure even with 200.
    pub async fn write(&self, path: &str, body: &Value) -> Result<(), QadError> {
        let mut reauthenticated = false;
        loop {
            let token = self.current_token().await?;
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let sent = self
                .http
                .post(self.url(path))
                .bearer_auth(token.expose())
                .header("x-qad-workspace-id", &self.cfg.workspace)
                .json(body)
                .send()
                .await;
            let v = match Self::json_of(path, sent).await {
                Err(QadError::Unauthorized { .. }) if !reauthenticated => {
                    // Expired: log in again once and resend.
                    reauthenticated = true;
                    *self.token.lock().await = None;
                    self.login().await?;
                    continue;
                }
                other => other?,
            };
            return match v["submitResult"]["success"].as_bool() {
                Some(true) => Ok(()),
                Some(false) => Err(QadError::Rejected {
                    what: path.into(),
                    errors: v["submitResult"]["errors"].to_string(),
                }),
                None => Err(QadError::Shape {
                    what: path.into(),
                    problem: "no submitResult.success".into(),
                }),
            };
        }
    }
}
