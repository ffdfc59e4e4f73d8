//! Webhook intake: signed, distinct status callbacks at the running host's HTTP endpoint,
//! validated and durably queued (committed to the store before the 2xx: SQLite in WAL mode
//! survives SIGKILL of the host right after the answer). The host runs in this process; the
//! load generator is this same binary re-executed as a separate process with 32 keep-alive
//! connections. Phase 1 measures the most it takes; phase 2 offers half that rate on a fixed
//! schedule and reports the latency percentiles (measured from each request's scheduled
//! time, so queueing is not hidden).
//!
//!     cargo bench -p ml-connector --bench webhook_ingest
//!     ML_CONNECTOR_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p ml-connector --bench webhook_ingest

use std::io::{BufRead, BufReader, Write};

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use ml_connector::clock::SystemClock;
use ml_connector::core::signature;
use ml_connector::dispatcher::SECRET_TWILIO_AUTH_TOKEN;
use ml_connector::inbox::Inbox;
use ml_connector::poller::Poller;
use ml_connector::qad_sandbox::SandboxConfig;
use ml_connector::sandbox::{example_tenant, provision_example};
use ml_connector::secrets::{Keyring, SecretString, generate_master_key};
use ml_connector::store::Store;
use ml_connector::webhooks::WebhookServer;

const CONNECTIONS: usize = 32;
const TOKEN: &str = "bench0auth0token00000000000000ff";
const PHASE: Duration = Duration::from_secs(6);

/// The allocator the host runs with (see `ml_connector::HostAllocator`).
#[global_allocator]
static ALLOCATOR: ml_connector::HostAllocator = ml_connector::HostAllocator;

fn main() {
    ml_connector::init_tls();
    if let Ok(spec) = std::env::var("WEBHOOK_INGEST_LOADGEN") {
        return loadgen(&spec);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(host());
}

async fn host() {
    let dir = std::env::temp_dir().join(format!("ml-connector-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = std::env::var("ML_CONNECTOR_BENCH_DATABASE_URL").unwrap_or(format!("sqlite://{}", dir.join("bench.db").display()));
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    if store.engine() == "postgres" {
        store.execute_raw("TRUNCATE webhook_events").await.unwrap();
    }
    let keys = Arc::new(Keyring::new(&generate_master_key(), &[]).unwrap());
    let cfg = SandboxConfig::new(chrono::Utc::now().date_naive());
    let mut tenant = example_tenant("http://127.0.0.1:9/clouderp", &cfg, 3600);
    tenant.id = format!("bench{}", std::process::id());
    provision_example(&store, &keys, &tenant, &cfg, chrono::Utc::now()).await.unwrap();
    store
        .set_secret(
            &keys,
            &tenant.id,
            SECRET_TWILIO_AUTH_TOKEN,
            &ml_connector::secrets::Origin::of(ml_connector::twilio::DEFAULT_BASE_URL).unwrap(),
            &SecretString::new(TOKEN),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let plugins = Arc::new(ml_connector::plugin::PluginRuntime::new(None).unwrap());
    let poller = Poller::new(store.clone(), keys, reqwest::Client::new(), Arc::new(SystemClock), plugins);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = WebhookServer::new(Inbox::new(poller), &base);
    let counters = server.counters.clone();
    server.serve(listener);
    let hook = format!("{base}/twilio/{}/messages/status?delivery=1", tenant.id);

    // The peer: a bare axum server on this machine that only reads the body and answers 204,
    // measured with the same generator (what HTTP alone costs here).
    let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare_url = format!("http://{}/twilio/bare/messages/status?delivery=1", bare.local_addr().unwrap());
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/twilio/{t}/{a}/{b}",
            axum::routing::post(|_body: axum::body::Bytes| async { axum::http::StatusCode::NO_CONTENT }),
        );
        axum::serve(bare, app).await.unwrap();
    });
    let peer = run_loadgen(&bare_url, 0.0);
    println!(
        "peer: bare axum reading the body and answering 204, same generator: {:.0} requests/s (p50 {:.2} ms, p99 {:.2} ms)",
        peer.rate, peer.p50, peer.p99
    );
    println!(
        "webhook ingest on {} ({CONNECTIONS} connections, load generator in its own process)",
        store.engine()
    );
    let max = run_loadgen(&hook, 0.0);
    println!(
        "  most it takes: {:>8.0} callbacks/s  (p50 {:.2} ms, p99 {:.2} ms, {} requests, {} not 204)",
        max.rate, max.p50, max.p99, max.n, max.errors
    );
    let half = run_loadgen(&hook, max.rate / 2.0);
    println!(
        "  at half that:  {:>8.0} callbacks/s  (p50 {:.2} ms, p99 {:.2} ms, {} requests, {} not 204)",
        half.rate, half.p50, half.p99, half.n, half.errors
    );
    let f = counters.figures();
    let stored = store.webhook_counts(&tenant.id).await.unwrap().values().sum::<i64>();
    println!(
        "  queued durably: {stored} of {} accepted; {} duplicates, {} refused",
        f.accepted, f.duplicates, f.forged
    );
    assert_eq!(stored as u64, f.accepted, "every accepted callback is in the store");
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

struct Figures {
    rate: f64,
    p50: f64,
    p99: f64,
    n: usize,
    errors: usize,
}

/// Run the load generator as a child process; `rate` 0 means as fast as it goes.
fn run_loadgen(hook: &str, rate: f64) -> Figures {
    let spec = format!("{hook} {rate} {}", PHASE.as_millis());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("WEBHOOK_INGEST_LOADGEN", spec)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    child.wait().unwrap();
    let v: Vec<f64> = line.split_whitespace().map(|x| x.parse().unwrap()).collect();
    Figures {
        rate: v[0],
        p50: v[1],
        p99: v[2],
        n: v[3] as usize,
        errors: v[4] as usize,
    }
}

/// Read one response (headers, then `Content-Length` bytes of body); its status.
async fn read_status(conn: &mut tokio::net::TcpStream, buf: &mut [u8]) -> Option<u16> {
    let mut have = 0;
    loop {
        let n = conn.read(&mut buf[have..]).await.ok()?;
        if n == 0 {
            return None;
        }
        have += n;
        let text = std::str::from_utf8(&buf[..have]).ok()?;
        if let Some(end) = text.find("\r\n\r\n") {
            let status = text.get(9..12)?.parse().ok()?;
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while have < end + 4 + len {
                let n = conn.read(&mut buf[have..]).await.ok()?;
                if n == 0 {
                    return None;
                }
                have += n;
            }
            return Some(status);
        }
    }
}

fn loadgen(spec: &str) {
    let mut it = spec.split_whitespace();
    let hook = it.next().unwrap().to_string();
    let rate: f64 = it.next().unwrap().parse().unwrap();
    let phase = Duration::from_millis(it.next().unwrap().parse().unwrap());
    // Optionally, the hosts to spread the connections over (behind one public URL).
    let hosts: Option<Vec<String>> = it.next().map(|h| h.split(',').map(String::from).collect());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let out = rt.block_on(async move {
        let url = url::Url::parse(&hook).unwrap();
        let own = vec![format!("{}:{}", url.host_str().unwrap(), url.port_or_known_default().unwrap())];
        let addrs = hosts.unwrap_or(own);
        let path = &hook[hook.find(url.path()).unwrap()..];
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..CONNECTIONS {
            let (hook, addr, path) = (hook.clone(), addrs[c % addrs.len()].clone(), path.to_string());
            tasks.push(tokio::spawn(async move {
                // A plain HTTP/1.1 keep-alive connection: the generator must cost far less than
                // the server it measures (reqwest's client alone capped it near 10,000/s).
                let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
                conn.set_nodelay(true).unwrap();
                let mut buf = vec![0u8; 4096];
                let mut lat = Vec::new();
                let mut errors = 0usize;
                let pid = std::process::id();
                for i in 0u64.. {
                    let due = if rate > 0.0 {
                        let at = start + Duration::from_secs_f64((i as f64 * CONNECTIONS as f64 + c as f64) / rate);
                        tokio::time::sleep_until(at.into()).await;
                        at
                    } else {
                        Instant::now()
                    };
                    if due.duration_since(start) >= phase {
                        break;
                    }
                    // A distinct callback each time, signed as Twilio signs it.
                    let sid = format!("SM{pid:08x}{c:04x}{i:020x}");
                    let params = vec![
                        ("AccountSid".to_string(), "AC0123456789abcdef0123456789abcdef".to_string()),
                        ("ApiVersion".to_string(), "2010-04-01".to_string()),
                        ("From".to_string(), "+13125550100".to_string()),
                        ("MessageSid".to_string(), sid.clone()),
                        ("MessageStatus".to_string(), "delivered".to_string()),
                        ("SmsSid".to_string(), sid),
                        ("SmsStatus".to_string(), "delivered".to_string()),
                        ("To".to_string(), "+13125550120".to_string()),
                    ];
                    let sig = signature::sign(TOKEN, &hook, &params);
                    let body = serde_urlencoded::to_string(&params).unwrap();
                    let req = format!(
                        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: {sig}\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    conn.write_all(req.as_bytes()).await.unwrap();
                    match read_status(&mut conn, &mut buf).await {
                        Some(204) => lat.push(due.elapsed()),
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
        let mut lat = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await.unwrap();
            lat.extend(l);
            errors += e;
        }
        let elapsed = start.elapsed().as_secs_f64();
        lat.sort();
        let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).map_or(0.0, |d| d.as_secs_f64() * 1e3);
        format!("{} {} {} {} {}", lat.len() as f64 / elapsed, pct(0.50), pct(0.99), lat.len(), errors)
    });
    let mut so = std::io::stdout();
    writeln!(so, "{out}").unwrap();
}
