//! Several hosts on one PostgreSQL: dispatch and webhook-ingest throughput with one, two and
//! three real `ml-connector serve` processes (release build) sharing one database, each
//! measured on a fresh schema. Dispatch: 10,000 send jobs committed at once (the jobs a poll
//! would have queued, plugin work already done), timed until the last is accepted by the
//! Twilio stand-in (its own process, answering at once). Ingest: signed, distinct status
//! callbacks from the webhook bench's load generator (its own process, 32 keep-alive
//! connections spread over the hosts, signed for the one public URL they share), each
//! answered only once committed. Everything shares this machine's two cores.
//!
//!     ML_CONNECTOR_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p ml-connector --bench hosts

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ml_connector::core::people::{Recipient, Role};
use ml_connector::core::routing::{AlertInput, Channel, Delivery, Message, Routed};
use ml_connector::dispatcher::{SECRET_TWILIO_API_KEY_SECRET, SECRET_TWILIO_API_KEY_SID, SECRET_TWILIO_AUTH_TOKEN};
use ml_connector::poller::{Routing, send_jobs};
use ml_connector::qad_sandbox::SandboxConfig;
use ml_connector::sandbox::{example_tenant, provision_example};
use ml_connector::secrets::{Keyring, SecretString, generate_master_key};
use ml_connector::store::{Store, TwilioAccount};
use ml_connector::twilio_sandbox::TwilioSandboxConfig;

const JOBS: usize = 10_000;
const TENANTS: usize = 2;
const TOKEN: &str = "bench0auth0token00000000000000ff";
const PUBLIC_URL: &str = "http://ml-connector.example";

#[path = "support/mod.rs"]
mod support;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The allocator the host runs with (see `ml_connector::HostAllocator`).
#[global_allocator]
static ALLOCATOR: ml_connector::HostAllocator = ml_connector::HostAllocator;

fn main() {
    ml_connector::init_tls();
    // Without a PostgreSQL URL: the same measurement with one host on SQLite, for comparison.
    let base = std::env::var("ML_CONNECTOR_BENCH_DATABASE_URL").ok();
    tokio::runtime::Runtime::new().unwrap().block_on(run(base));
}

async fn run(base: Option<String>) {
    let stand_in = support::start(&["twilio-sandbox", "--addr", "127.0.0.1:0"]);
    let twilio = stand_in.base.clone();
    match &base {
        Some(base) => {
            println!(
                "several hosts on one PostgreSQL ({TENANTS} tenants, Twilio stand-in and load generator in their own processes, 2 cores in all)"
            );
            for hosts in 1..=3 {
                let schema = format!("bench_hosts_{}_{hosts}", std::process::id());
                let admin = Store::connect(base).await.unwrap();
                admin.execute_raw(&format!("CREATE SCHEMA {schema}")).await.unwrap();
                let sep = if base.contains('?') { '&' } else { '?' };
                one(&format!("{base}{sep}options=-c%20search_path%3D{schema}"), &twilio, hosts).await;
                admin.execute_raw(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
                admin.close().await;
            }
        }
        None => {
            println!(
                "one host on SQLite, the same measurement ({TENANTS} tenants, Twilio stand-in and load generator in their own processes)"
            );
            let dir = std::env::temp_dir().join(format!("ml-connector-hosts-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            one(&format!("sqlite://{}", dir.join("bench.db").display()), &twilio, 1).await;
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

async fn one(url: &str, twilio: &str, hosts: usize) {
    let url = url.to_string();
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let key = generate_master_key();
    let keys = Keyring::new(&key, &[]).unwrap();
    let now = chrono::Utc::now();
    let cfg = SandboxConfig::new(now.date_naive());
    let account = TwilioSandboxConfig::default();
    for i in 0..TENANTS {
        let mut t = example_tenant("http://127.0.0.1:9/clouderp", &cfg, 86_400);
        t.id = format!("t{i}");
        provision_example(&store, &keys, &t, &cfg, now).await.unwrap();
        let a = TwilioAccount {
            account_sid: account.account_sid.clone(),
            from: "+13125550100".into(),
            base_url: twilio.into(),
        };
        store.set_twilio_account(&t.id, &a).await.unwrap();
        for (f, v) in [
            (SECRET_TWILIO_API_KEY_SID, account.api_key_sid.as_str()),
            (SECRET_TWILIO_API_KEY_SECRET, account.api_key_secret.as_str()),
            (SECRET_TWILIO_AUTH_TOKEN, TOKEN),
        ] {
            let origin = ml_connector::secrets::Origin::of(twilio).unwrap();
            store
                .set_secret(&keys, &t.id, f, &origin, &SecretString::new(v), now)
                .await
                .unwrap();
        }
    }

    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..hosts {
        let addr = format!("127.0.0.1:{}", free_port());
        procs.push(Kill(
            Command::new(env!("CARGO_BIN_EXE_ml-connector"))
                .arg("serve")
                .env("ML_CONNECTOR_DATABASE_URL", &url)
                .env("ML_CONNECTOR_MASTER_KEY", &key)
                .env("ML_CONNECTOR_HTTP_ADDR", &addr)
                .env("ML_CONNECTOR_PUBLIC_URL", PUBLIC_URL)
                .env("ML_CONNECTOR_GRPC_ADDR", "127.0.0.1:0")
                .env("ML_CONNECTOR_METRICS_ADDR", "127.0.0.1:0")
                .env("ML_CONNECTOR_LOG", "error")
                .spawn()
                .unwrap(),
        ));
        addrs.push(addr);
    }
    let http = reqwest::Client::new();
    for a in &addrs {
        for _ in 0..200 {
            if http
                .get(format!("http://{a}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Dispatch: the jobs a poll would have committed, all at once.
    let payload = send_payload();
    let before = stand_in_created(twilio).await;
    let started = Instant::now();
    // Payloads first, under the ids the jobs are about to get (a fresh schema numbers them
    // from 1): a host that claims a job finds its payload already there. Were the ids other,
    // the jobs would fail for want of a payload, and the wait below stops on that.
    store
        .execute_raw(&format!(
            "INSERT INTO job_payloads (job_id, payload)
             WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {JOBS})
             SELECT g, '{}' FROM s",
            payload.replace('\'', "''")
        ))
        .await
        .unwrap();
    store
        .execute_raw(&format!(
            "INSERT INTO jobs (job_key, tenant_id, kind, record_kind, record_key, episode, state, run_at, created_at, updated_at)
             WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {JOBS})
             SELECT 'bench/' || g, 't' || (g % {TENANTS}), 'send', 'supplier_invoice', 'SI-' || g, 1, 'queued', {ms}, {ms}, {ms} FROM s ORDER BY g",
            ms = chrono::Utc::now().timestamp_millis()
        ))
        .await
        .unwrap();
    let done = || async {
        let mut n = 0;
        for i in 0..TENANTS {
            let counts = store.job_counts(&format!("t{i}")).await.unwrap();
            // A job without its payload fails at once: stop rather than wait for it.
            assert_eq!(counts.get("failed"), None, "jobs failed: {counts:?}");
            n += counts.get("done").copied().unwrap_or(0);
        }
        n as usize
    };
    while done().await < JOBS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let created = stand_in_created(twilio).await - before;
    println!(
        "  {hosts} host{}: dispatch {:>6.0} alerts/s ({JOBS} in {:.2} s, {created} created at the stand-in)",
        if hosts == 1 { " " } else { "s" },
        JOBS as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    assert_eq!(created, JOBS as u64, "each alert sent once");

    // Ingest: the webhook bench's generator, its connections spread over the hosts.
    let hook = format!("{PUBLIC_URL}/twilio/t0/messages/status?delivery=1");
    let mut generator = Command::new(loadgen_binary())
        .env("WEBHOOK_INGEST_LOADGEN", format!("{hook} 0 6000 {}", addrs.join(",")))
        .stdout(Stdio::piped())
        .spawn()
        .expect("the webhook_ingest bench binary");
    let mut out = String::new();
    BufReader::new(generator.stdout.as_mut().unwrap()).read_line(&mut out).unwrap();
    generator.wait().unwrap();
    let v: Vec<f64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let stored: i64 = store.webhook_counts("t0").await.unwrap().values().sum();
    println!(
        "           ingest {:>6.0} callbacks/s (p50 {:.2} ms, p99 {:.2} ms; {} answered 204, {} not; {stored} stored)",
        v[0], v[1], v[2], v[3], v[4]
    );
    drop(procs);
    store.close().await;
}

/// The webhook bench's binary (its load generator), newest first, beside this bench.
fn loadgen_binary() -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let mut found: Vec<_> = std::fs::read_dir(&deps)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("webhook_ingest-") && !name.contains('.')
        })
        .collect();
    found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    found
        .pop()
        .expect("run `cargo bench -p ml-connector --bench webhook_ingest --no-run` first")
}

async fn stand_in_created(twilio: &str) -> u64 {
    let s: serde_json::Value = reqwest::get(format!("{twilio}/_sandbox/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    s["messages_created"].as_u64().unwrap() + s["calls_created"].as_u64().unwrap()
}

/// A send job's payload as the poller writes it: the plugin's delivery and words, and the alert.
fn send_payload() -> String {
    let person = Recipient {
        role: Role::ApClerk,
        name: "Grace Liu".into(),
        source: "profile".into(),
        phone: "+13125550130".into(),
    };
    let alert = AlertInput {
        key: "SI-1".into(),
        people: vec![person.clone()],
        ..support::invoice(0, 0)
    };
    let routed = Routed {
        delivery: Delivery {
            to: person,
            channel: Channel::Sms,
            delay_minutes: 0,
            escalation_step: 0,
        },
        message: Message::Sms {
            body: "Invoice SI-1 from Windy City Machining, 12500.00 USD: price variance. Reply SEEN K7QM2X.".into(),
        },
    };
    let routing = Routing::Routed {
        plugin: "default".into(),
        routed: vec![routed],
    };
    send_jobs("t0", &alert, 1, &routing, chrono::Utc::now())[0].payload.to_string()
}
