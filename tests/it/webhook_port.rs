//! The webhook listener as the internet sees it: what the official validators (twilio-python
//! and twilio-node, independent peers) accept is accepted and nothing more, `bodySHA256`
//! covers the body that was sent, strangers' made-up tenants cost nothing, slow clients are
//! cut, and nothing internal is served.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ml_connector::dispatcher::SECRET_TWILIO_AUTH_TOKEN;
use ml_connector::inbox::Inbox;
use ml_connector::secrets::SecretString;
use ml_connector::webhooks::{HttpLimits, IntakeCounters, TOKEN_CACHE_ENTRIES, WebhookServer};
use ml_connector_tests::{Harness, harness, morning};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "auth-token-of-the-webhook-port-00";

struct Port {
    h: Harness,
    server: WebhookServer,
    counters: Arc<IntakeCounters>,
    /// The listener's base URL, which is also the public URL.
    url: String,
}

async fn start(limits: HttpLimits) -> Port {
    let h = harness("sqlite").await;
    let s = &h.db.store;
    let twilio = ml_connector::secrets::Origin::of(ml_connector::twilio::DEFAULT_BASE_URL).unwrap();
    s.set_secret(
        &h.keys,
        &h.tenant.id,
        SECRET_TWILIO_AUTH_TOKEN,
        &twilio,
        &SecretString::new(TOKEN),
        morning(),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = WebhookServer::new(Inbox::new(h.poller.clone()), &url).with_limits(limits);
    let counters = server.counters.clone();
    server.clone().serve(listener);
    Port { h, server, counters, url }
}

impl Port {
    fn status_url(&self) -> String {
        format!("{}/twilio/{}/messages/status", self.url, self.h.tenant.id)
    }

    async fn post(&self, url: &str, content_type: &str, body: impl Into<reqwest::Body>, sig: &str) -> u16 {
        reqwest::Client::new()
            .post(url)
            .header("content-type", content_type)
            .header("x-twilio-signature", sig)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn stored(&self) -> Vec<Vec<(String, String)>> {
        let events = self.h.db.store.webhooks(&self.h.tenant.id).await.unwrap();
        events.into_iter().map(|e| e.params).collect()
    }
}

const FORM: &str = "application/x-www-form-urlencoded";

fn form(params: &[(String, String)]) -> String {
    serde_urlencoded::to_string(params).unwrap()
}

fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Runs `script` with the official `twilio` package for Node (installed by `cargo xtask
/// test`); `arg` is its `process.argv[1]`; the script prints JSON.
fn node_twilio(script: &str, arg: &Value) -> Value {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/node/node_modules");
    let out = Command::new("node")
        .args(["-e", script, &arg.to_string()])
        .env("NODE_PATH", modules)
        .output()
        .expect("node with the twilio package (cargo xtask test installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `script` with the official `twilio` package for Python (installed by `cargo xtask
/// test`); `arg` is its `sys.argv[1]`; the script prints JSON.
fn python_twilio(script: &str, arg: &Value) -> Value {
    let out = Command::new("python3")
        .args(["-c", script, &arg.to_string()])
        .output()
        .expect("python3 with the twilio library (cargo xtask test installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// twilio-python signs repeated names through a MultiDict-like `getall`.
const PYTHON_SIGN: &str = r#"
import json, sys
from twilio.request_validator import RequestValidator
a = json.loads(sys.argv[1])
class Multi(dict):
    def getall(self, k): return [v for (n, v) in a["params"] if n == k]
params = Multi({n: v for (n, v) in a["params"]})
print(json.dumps(RequestValidator(a["token"]).compute_signature(a["url"], params)))
"#;

/// twilio-node signs an object whose repeated names hold arrays, and says whether its own
/// validator accepts that signature on the URL as received.
const NODE_SIGN: &str = r#"
const twilio = require("twilio");
const a = JSON.parse(process.argv[1]);
const params = {};
for (const [n, v] of a.params) params[n] = n in params ? [].concat(params[n], v) : v;
const sig = twilio.getExpectedTwilioSignature(a.token, a.signed_url, params);
console.log(JSON.stringify({sig, accepts: twilio.validateRequest(a.token, sig, a.received_url, params)}));
"#;

fn python_sig(url: &str, params: &[(String, String)]) -> String {
    let v = python_twilio(PYTHON_SIGN, &json!({"token": TOKEN, "url": url, "params": params}));
    v.as_str().unwrap().to_string()
}

/// twilio-node's signature over `signed_url`, checked by twilio-node's own validator on
/// `received_url` first (so each case is one the official library accepts).
fn node_sig(signed_url: &str, received_url: &str, params: &[(String, String)]) -> String {
    let arg = json!({"token": TOKEN, "signed_url": signed_url, "received_url": received_url, "params": params});
    let v = node_twilio(NODE_SIGN, &arg);
    assert_eq!(v["accepts"], true, "twilio-node accepts {received_url} signed as {signed_url}: {v}");
    v["sig"].as_str().unwrap().to_string()
}

/// Three things twilio-node's `validateRequest` accepts that the host once refused, each
/// signed by an official library, each then changed by one value and refused.
#[tokio::test]
async fn what_the_official_validators_accept_is_accepted_and_a_changed_value_is_not() {
    let port = start(HttpLimits::default()).await;
    let url = port.status_url();
    let repeated = |sid: &str| p(&[("MessageSid", sid), ("MessageStatus", "sent"), ("X", "～"), ("X", "😀")]);

    // Repeated values in the orders the two libraries sort them: UTF-16 code units (Node)
    // and code points (Python) put U+1F600 and U+FF5E the other way round.
    let by_node = node_sig(&url, &url, &repeated("SMnode"));
    let by_python = python_sig(&url, &repeated("SMpython"));
    assert_ne!(by_node, python_sig(&url, &repeated("SMnode")), "the two orders sign differently");
    assert_eq!(port.post(&url, FORM, form(&repeated("SMnode")), &by_node).await, 204);
    assert_eq!(port.post(&url, FORM, form(&repeated("SMpython")), &by_python).await, 204);
    let mut changed = repeated("SMnode");
    changed[3].1 = "😁".into();
    assert_eq!(port.post(&url, FORM, form(&changed), &by_node).await, 403);

    // The query re-encoded: signed as `a%20b`, received as `a+b`.
    let params = p(&[("MessageSid", "SMquery"), ("MessageStatus", "sent")]);
    let (signed, received) = (format!("{url}?delivery=7&note=a%20b"), format!("{url}?delivery=7&note=a+b"));
    let sig = node_sig(&signed, &received, &params);
    assert_eq!(port.post(&received, FORM, form(&params), &sig).await, 204);
    let other = format!("{url}?delivery=7&note=a+c");
    assert_eq!(port.post(&other, FORM, form(&params), &sig).await, 403);

    // Content-Type is case-insensitive, parameters and all.
    let params = p(&[("MessageSid", "SMcase"), ("MessageStatus", "sent")]);
    let sig = python_sig(&url, &params);
    let shouting = "Application/X-WWW-Form-URLEncoded; Charset=UTF-8";
    assert_eq!(port.post(&url, shouting, form(&params), &sig).await, 204);
    let wrong = p(&[("MessageSid", "SMcase"), ("MessageStatus", "delivered")]);
    assert_eq!(port.post(&url, shouting, form(&wrong), &sig).await, 403);

    let f = port.counters.figures();
    assert_eq!((f.accepted, f.forged), (4, 3));
    let sids: Vec<String> = port.stored().await.iter().map(|e| e[0].1.clone()).collect();
    assert_eq!(sids, ["SMnode", "SMpython", "SMquery", "SMcase"]);
}

fn sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// With `bodySHA256` in the URL, Twilio signs the URL alone and the hash covers the body:
/// the body actually received is hashed, whatever its content type.
#[tokio::test]
async fn body_sha256_covers_the_body_that_was_sent() {
    let port = start(HttpLimits::default()).await;
    let url = port.status_url();
    let body = form(&p(&[("MessageSid", "SMforged"), ("MessageStatus", "delivered")]));

    // Signed for an empty body, sent with a form: refused, nothing stored.
    let empty = format!("{url}?bodySHA256={}", sha256_hex(b""));
    let sig = node_sig(&empty, &empty, &[]);
    assert_eq!(port.post(&empty, FORM, body.clone(), &sig).await, 403);
    assert!(port.stored().await.is_empty());

    // Signed for this very form body: taken, its parameters stored.
    let covered = format!("{url}?bodySHA256={}", sha256_hex(body.as_bytes()));
    let sig = node_sig(&covered, &covered, &[]);
    assert_eq!(port.post(&covered, FORM, body.clone(), &sig).await, 204);
    assert_eq!(
        port.stored().await,
        [p(&[("MessageSid", "SMforged"), ("MessageStatus", "delivered")])]
    );

    // A JSON body with a valid hash and signature: not a callback these paths take.
    let json_body = r#"{"MessageSid":"SMjson","MessageStatus":"delivered"}"#;
    let with_json = format!("{url}?bodySHA256={}", sha256_hex(json_body.as_bytes()));
    let sig = node_sig(&with_json, &with_json, &[]);
    let verdict = node_twilio(
        "const t=require('twilio');const a=JSON.parse(process.argv[1]);console.log(JSON.stringify(t.validateRequestWithBody(a.token,a.sig,a.url,a.body)))",
        &json!({"token": TOKEN, "sig": sig, "url": with_json, "body": json_body}),
    );
    assert_eq!(verdict, true, "twilio-node takes the JSON body as signed");
    assert_eq!(port.post(&with_json, "application/json", json_body, &sig).await, 415);
    // The same signature over a changed body: refused as forged, before its type matters.
    let changed = json_body.replace("SMjson", "SMjsoN");
    assert_eq!(port.post(&with_json, "application/json", changed, &sig).await, 403);

    assert_eq!(port.stored().await.len(), 1);
    let f = port.counters.figures();
    assert_eq!((f.accepted, f.forged, f.unidentified), (1, 2, 1));
}

/// 3,000 unsigned requests to tenants that do not exist (a third with 20 KB ids, which may
/// be refused with 431 before routing, the request head being past 16 KiB; a third with
/// 10 KB ids; a third with ids of a tenant's shape): every one refused, each 403 counted,
/// the token cache bounded.
#[tokio::test]
async fn made_up_tenants_cost_nothing() {
    let port = start(HttpLimits::default()).await;
    let http = reqwest::Client::new();
    let mut seed = 0x5eed_u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        seed >> 33
    };
    let mut forbidden = 0;
    let ids: Vec<String> = (0..3000)
        .map(|i| {
            let len = [20_000, 10_000, 63][i % 3];
            (0..len).map(|_| (b'a' + (next() % 26) as u8) as char).collect()
        })
        .collect();
    for chunk in ids.chunks(32) {
        let sends = chunk.iter().map(|id| {
            http.post(format!("{}/twilio/{id}/messages/status", port.url))
                .header("content-type", FORM)
                .body("MessageSid=SM1&MessageStatus=sent")
                .send()
        });
        for (r, id) in futures_join(sends).await.into_iter().zip(chunk) {
            let status = r.unwrap().status().as_u16();
            let allowed: &[u16] = if id.len() == 20_000 { &[403, 431] } else { &[403] };
            assert!(allowed.contains(&status), "{status} for an id of {} bytes", id.len());
            forbidden += usize::from(status == 403);
        }
    }
    assert!(forbidden >= 2000);
    assert_eq!(port.counters.figures().forged, forbidden as u64);
    let cached = port.server.cached_tokens();
    assert!(cached <= TOKEN_CACHE_ENTRIES, "{cached} tokens cached");
    // The real tenant still gets through.
    let params = p(&[("MessageSid", "SMreal"), ("MessageStatus", "sent")]);
    let url = port.status_url();
    let sig = python_sig(&url, &params);
    assert_eq!(port.post(&url, FORM, form(&params), &sig).await, 204);
    // A made-up tenant costs no query: with the database gone, it is still a plain 403
    // (a lookup would have answered 503).
    port.h.db.store.close().await;
    let r = http
        .post(format!("{}/twilio/no-such-tenant/messages/status", port.url))
        .header("content-type", FORM)
        .body("MessageSid=SM1&MessageStatus=sent")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = fs.map(|f| Box::pin(f)).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}

/// Whether the server closes `stream` while `drip` keeps it busy, before `guard` runs out.
async fn closed_by_server(mut stream: tokio::net::TcpStream, drip: bool, guard: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + guard;
    if drip {
        let _ = stream.write_all(b"POST /twilio/x/messages/status HTTP/1.1\r\nHost: h\r\n").await;
    }
    let mut buf = [0u8; 256];
    while tokio::time::Instant::now() < deadline {
        if drip && stream.write_all(b"X").await.is_err() {
            return true;
        }
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or similar before closing: read on until the close.
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
    }
    false
}

/// A connection that sends nothing, and one that drips a header byte at a time, are both
/// closed by the server (here after a 1 s header deadline; the guard is far longer).
#[tokio::test]
async fn slow_and_silent_clients_are_cut() {
    let limits = HttpLimits {
        header_timeout: Duration::from_secs(1),
        ..HttpLimits::default()
    };
    let port = start(limits).await;
    let addr = port.url.trim_start_matches("http://").to_string();
    let silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let dripping = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let guard = Duration::from_secs(30);
    let (silent, dripping) = tokio::join!(closed_by_server(silent, false, guard), closed_by_server(dripping, true, guard));
    assert!(silent, "a silent connection is closed");
    assert!(dripping, "a dripping client is cut");
    // A prompt client is served as ever.
    let r = reqwest::get(format!("{}/healthz", port.url)).await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A client that keeps its connection busy with a request every few hundred milliseconds
/// gives the slot back at the connection's maximum age; headers past 16 KiB are refused.
#[tokio::test]
async fn a_busy_connection_is_closed_at_its_age_and_huge_headers_are_refused() {
    let limits = HttpLimits {
        max_connection_age: Duration::from_secs(1),
        ..HttpLimits::default()
    };
    let port = start(limits).await;
    let addr = port.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut answered = 0;
    let mut closed = false;
    let mut buf = [0u8; 4096];
    while tokio::time::Instant::now() < deadline {
        if stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n").await.is_err() {
            closed = true;
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => answered += 1,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(closed, "a busy keep-alive connection is closed at its age ({answered} answers)");
    assert!(answered >= 1, "it was served until then");
    let r = reqwest::Client::new()
        .get(format!("{}/healthz", port.url))
        .header("x-padding", "p".repeat(100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
}

/// The public listener serves no metrics, and `/readyz` says the database is unreachable
/// without the database's own words.
#[tokio::test]
async fn nothing_internal_on_the_public_listener() {
    let port = start(HttpLimits::default()).await;
    let r = reqwest::get(format!("{}/metrics", port.url)).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(reqwest::get(format!("{}/readyz", port.url)).await.unwrap().status(), 200);
    port.h.db.store.close().await;
    let r = reqwest::get(format!("{}/readyz", port.url)).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "database unreachable\n");
}

/// The real `serve`: its resident memory and its log after 3,000 refusals with 10 KB
/// tenant ids (20 KB ones no longer reach the router: 431). Before this was fixed, 3,000
/// with 20 KB ids grew it by 60–180 MB and wrote ~120 MB of log. Prints both figures.
#[tokio::test]
async fn three_thousand_refusals_grow_neither_memory_nor_log_much() {
    use ml_connector_tests::{TempDir, binary};
    let dir = TempDir::new("refusals");
    let log_path = dir.0.join("serve.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut host = tokio::process::Command::new(binary())
        .arg("serve")
        .env("ML_CONNECTOR_DATABASE_URL", format!("sqlite://{}", dir.0.join("r.db").display()))
        .env("ML_CONNECTOR_MASTER_KEY", ml_connector::secrets::generate_master_key())
        .env("ML_CONNECTOR_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("ML_CONNECTOR_GRPC_ADDR", "127.0.0.1:0")
        .env("ML_CONNECTOR_METRICS_ADDR", "127.0.0.1:0")
        .env("ML_CONNECTOR_LOG", "info")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..600 {
        if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "serve came up");
    let refuse = |n: usize, offset: usize| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            for chunk in (offset..offset + n).collect::<Vec<_>>().chunks(32) {
                let sends = chunk.iter().map(|i| {
                    let id: String = format!("{i:020}").repeat(500);
                    http.post(format!("{base}/twilio/{id}/messages/status"))
                        .header("content-type", FORM)
                        .body("MessageSid=SM1&MessageStatus=sent")
                        .send()
                });
                for r in futures_join(sends).await {
                    assert_eq!(r.unwrap().status(), 403);
                }
            }
        }
    };
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    let pid = host.id().unwrap();
    refuse(200, 0).await; // pools and buffers warmed
    let (rss_before, log_before) = (rss(pid), std::fs::metadata(&log_path).unwrap().len());
    refuse(3000, 200).await;
    let (rss_after, log_after) = (rss(pid), std::fs::metadata(&log_path).unwrap().len());
    let grown = rss_after.saturating_sub(rss_before);
    let logged = log_after - log_before;
    eprintln!(
        "3,000 refusals: RSS {:.1} -> {:.1} MB (+{:.1} MB), log +{:.1} KB",
        rss_before as f64 / 1e6,
        rss_after as f64 / 1e6,
        grown as f64 / 1e6,
        logged as f64 / 1e3
    );
    assert!(grown <= 30_000_000, "RSS grew {grown} bytes");
    assert!(logged <= 5_000_000, "the log grew {logged} bytes");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains('\u{1b}'), "no colour codes in a log file");
    assert!(
        log.contains("webhook refused"),
        "refusals are logged, clipped: {}",
        &log[..log.len().min(2000)]
    );
    host.kill().await.unwrap();
}
