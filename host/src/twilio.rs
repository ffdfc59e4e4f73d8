//! The Twilio adapter: `Messages.json` and `Calls.json` as `twilio_api_v2010.yaml` defines
//! them. Bodies are `application/x-www-form-urlencoded` (arrays as repeated keys), every
//! call carries HTTP Basic with the API Key SID and secret, the path names the account.
//! The base URL is configuration (tests and the demo point it at the Twilio sandbox).
//! What an answer means for the job is `core::dispatch::classify`'s call, not this module's.

use std::time::Duration;

use serde_json::Value;

use crate::core::dispatch::{self, ListedCall, ListedMessage, SendOutcome};
use crate::outbound::read_capped;
use crate::secrets::SecretString;

pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// The most of one Twilio answer read: 8 MiB. A list page of [`LIST_PAGE`] messages of the
/// longest bodies (1,600 characters) is about 3 MiB; a create's answer about 2 KiB. A larger
/// answer is not read on: a create's counts as having no body (its outcome then unknown,
/// reconciled before any resend), a list's or a check's as an error.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// An answer's JSON, read up to [`MAX_BODY_BYTES`].
async fn json_capped(resp: reqwest::Response) -> Result<Value, String> {
    let body = read_capped(resp, MAX_BODY_BYTES).await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))
}

#[derive(Debug, Clone)]
pub struct TwilioConfig {
    pub base_url: String,
    /// `AC…`: named in every path.
    pub account_sid: String,
    /// `SK…` and its secret: HTTP Basic on every call. The Auth Token is not used here.
    pub api_key_sid: String,
    pub api_key_secret: SecretString,
}

/// An SMS to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sms {
    pub to: String,
    pub from: String,
    pub body: String,
    pub status_callback: String,
}

/// A call to place, its script given as TwiML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub to: String,
    pub from: String,
    pub twiml: String,
    pub status_callback: String,
}

/// The status events a call reports to its StatusCallback.
pub const CALL_EVENTS: &[&str] = &["initiated", "ringing", "answered", "completed"];

/// Messages or calls read per page when reconciling one (Twilio's maximum).
pub const LIST_PAGE: usize = 1000;

#[derive(Clone)]
pub struct TwilioClient {
    http: reqwest::Client,
    cfg: TwilioConfig,
}

impl Sms {
    pub fn form(&self) -> Vec<(&'static str, String)> {
        vec![
            ("To", self.to.clone()),
            ("From", self.from.clone()),
            ("Body", self.body.clone()),
            ("StatusCallback", self.status_callback.clone()),
        ]
    }
}

impl Call {
    pub fn form(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("To", self.to.clone()),
            ("From", self.from.clone()),
            ("Twiml", self.twiml.clone()),
            ("StatusCallback", self.status_callback.clone()),
            ("StatusCallbackMethod", "POST".to_string()),
        ];
        f.extend(CALL_EVENTS.iter().map(|e| ("StatusCallbackEvent", e.to_string())));
        f
    }
}

/// What a create's answer says that matters here (the resource's other fields are not read,
/// so not built): its sid when accepted, Twilio's error code and message when not.
#[derive(Debug, Default, serde::Deserialize)]
struct CreateAnswer {
    sid: Option<String>,
    /// A number in Twilio's errors; kept loose so an odd answer cannot hide the sid.
    code: Option<Value>,
    message: Option<String>,
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

impl TwilioClient {
    pub fn new(http: reqwest::Client, mut cfg: TwilioConfig) -> Self {
        cfg.base_url = cfg.base_url.trim_end_matches('/').to_string();
        TwilioClient { http, cfg }
    }

    fn url(&self, resource: &str) -> String {
        format!("{}/2010-04-01/Accounts/{}/{resource}", self.cfg.base_url, self.cfg.account_sid)
    }

    async fn create(&self, resource: &str, form: &[(&'static str, String)]) -> SendOutcome {
        let body = serde_urlencoded::to_string(form).expect("strings always encode");
        let sent = self
            .http
            .post(self.url(resource))
            .basic_auth(&self.cfg.api_key_sid, Some(self.cfg.api_key_secret.expose()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            // Connection refused before anything was sent is the only error known not to have
            // reached Twilio; everything else may have.
            Err(e) if e.is_connect() => {
                crate::metrics::twilio_answered(0, None);
                return SendOutcome::Unreachable {
                    reason: format!("cannot connect to Twilio: {e}"),
                };
            }
            Err(e) => {
                crate::metrics::twilio_answered(0, None);
                return SendOutcome::Unknown {
                    reason: format!("no answer from Twilio: {e}"),
                };
            }
        };
        let status = resp.status().as_u16();
        let after = retry_after(&resp);
        let answer: CreateAnswer = json_capped(resp)
            .await
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let code = answer.code.as_ref().and_then(Value::as_u64).map(|c| c as u32);
        crate::metrics::twilio_answered(status, code);
        dispatch::classify(status, code, answer.message.as_deref().unwrap_or(""), answer.sid.as_deref(), after)
    }

    pub async fn send_sms(&self, sms: &Sms) -> SendOutcome {
        self.create("Messages.json", &sms.form()).await
    }

    pub async fn place_call(&self, call: &Call) -> SendOutcome {
        self.create("Calls.json", &call.form()).await
    }

    /// Messages to `to` from `from`, newest first, one page of [`LIST_PAGE`]: how an SMS whose
    /// outcome is unknown is reconciled. No date filter: Twilio filters messages by
    /// `DateSent`, which a message still waiting in the sender's queue does not have yet —
    /// filtered so, it would be missed and sent again — so creation dates are compared here,
    /// as for calls.
    pub async fn list_messages(&self, to: &str, from: &str) -> Result<Vec<ListedMessage>, String> {
        let page = LIST_PAGE.to_string();
        let v = self
            .read_list("Messages.json", &[("To", to), ("From", from), ("PageSize", page.as_str())])
            .await?;
        Ok(v["messages"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| ListedMessage {
                        sid: m["sid"].as_str().unwrap_or("").to_string(),
                        body: m["body"].as_str().unwrap_or("").to_string(),
                        created_at: created_at(m),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Calls to `to` from `from`, newest first, one page of [`LIST_PAGE`]: how a call whose
    /// outcome is unknown is reconciled. No date filter: Twilio filters calls by `StartTime`,
    /// which a call still queued does not have yet, so the dates are compared here.
    pub async fn list_calls(&self, to: &str, from: &str) -> Result<Vec<ListedCall>, String> {
        let page = LIST_PAGE.to_string();
        let v = self
            .read_list("Calls.json", &[("To", to), ("From", from), ("PageSize", page.as_str())])
            .await?;
        Ok(v["calls"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| ListedCall {
                        sid: c["sid"].as_str().unwrap_or("").to_string(),
                        created_at: created_at(c),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One page of a list resource (`Messages.json`, `Calls.json`) as JSON, or why not.
    async fn read_list(&self, file: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let resp = self
            .http
            .get(self.url(file))
            .basic_auth(&self.cfg.api_key_sid, Some(self.cfg.api_key_secret.expose()))
            .query(query)
            .send()
            .await
            .map_err(|e| format!("no answer from Twilio: {e}"))?;
        let status = resp.status();
        let v = json_capped(resp).await.map_err(|e| format!("Twilio's {file} list: {e}"))?;
        if !status.is_success() {
            return Err(format!("Twilio answered {status}: {}", v["message"].as_str().unwrap_or("")));
        }
        Ok(v)
    }

    /// One page of one message from the account's list: proves the API key opens this
    /// account (a read a standard key may make, changing nothing).
    pub async fn check_api_key(&self) -> Result<String, String> {
        let resp = self
            .http
            .get(self.url("Messages.json"))
            .basic_auth(&self.cfg.api_key_sid, Some(self.cfg.api_key_secret.expose()))
            .query(&[("PageSize", "1")])
            .send()
            .await
            .map_err(|e| format!("no answer from Twilio at {}: {e}", self.cfg.base_url))?;
        answered(resp, "listed one page of the account's messages with the API key").await
    }

    /// Fetch the account authenticated by its SID and Auth Token: proves the token Twilio
    /// signs webhooks with is the account's current one.
    pub async fn check_auth_token(&self, auth_token: &SecretString) -> Result<String, String> {
        let url = format!("{}/2010-04-01/Accounts/{}.json", self.cfg.base_url, self.cfg.account_sid);
        let resp = self
            .http
            .get(url)
            .basic_auth(&self.cfg.account_sid, Some(auth_token.expose()))
            .send()
            .await
            .map_err(|e| format!("no answer from Twilio at {}: {e}", self.cfg.base_url))?;
        answered(resp, "fetched the account with its SID and Auth Token").await
    }
}

/// A check's answer: `done` on 2xx, else Twilio's status, code and message.
async fn answered(resp: reqwest::Response, done: &str) -> Result<String, String> {
    let status = resp.status();
    if status.is_success() {
        return Ok(done.to_string());
    }
    let v = json_capped(resp).await.unwrap_or(Value::Null);
    Err(format!(
        "Twilio answered {status} (code {}): {}",
        v["code"].as_u64().map(|c| c.to_string()).unwrap_or_else(|| "none".into()),
        v["message"].as_str().unwrap_or("no message")
    ))
}

/// A listed resource's `date_created` (RFC 2822, as Twilio writes it), Unix seconds.
fn created_at(resource: &Value) -> Option<i64> {
    resource["date_created"]
        .as_str()
        .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
        .map(|d| d.timestamp())
}
