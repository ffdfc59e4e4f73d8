//! Operating the real `serve`: its Prometheus metrics agree with what happened, and the
//! deploy/ dashboard and alert rules use only metrics it exports.

use std::collections::BTreeSet;
use std::time::Duration;

use ml_connector::sandbox::{connect_twilio, example_answers, example_tenant, install_example_plugin, provision_example};
use ml_connector::secrets::{Keyring, generate_master_key};
use ml_connector::twilio_sandbox::{TwilioFaults, TwilioSandbox, TwilioSandboxConfig};
use ml_connector_tests::{Qad, binary, fresh_db, plugins};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The sum of every series of `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            (n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))).then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}

/// The example tenant against both sandboxes on a fresh SQLite file, ready for `serve`.
struct Story {
    qad: Qad,
    twilio: TwilioSandbox,
    db: ml_connector_tests::TestDb,
    key: String,
    tenant: ml_connector::store::Tenant,
    _twilio_task: tokio::task::JoinHandle<()>,
}

async fn story(qad: Qad, twilio_cfg: TwilioSandboxConfig, faults: TwilioFaults) -> Story {
    let twilio = TwilioSandbox::new(twilio_cfg.clone());
    twilio.set_faults(faults);
    let (twilio_base, task) = twilio.clone().spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let db = fresh_db("sqlite").await;
    let key = generate_master_key();
    let keys = Keyring::new(&key, &[]).unwrap();
    let now = chrono::Utc::now();
    let tenant = example_tenant(&qad.base, &qad.config, 3600);
    provision_example(&db.store, &keys, &tenant, &qad.config, now).await.unwrap();
    connect_twilio(&db.store, &keys, &tenant.id, &twilio_cfg, &twilio_base, now)
        .await
        .unwrap();
    Story {
        qad,
        twilio,
        db,
        key,
        tenant,
        _twilio_task: task,
    }
}

impl Story {
    /// Wait until the first poll is done and every alert, callback and answer has played out.
    async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let store = &self.db.store;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "the story never settled");
            tokio::time::sleep(Duration::from_millis(100)).await;
            let polled = store
                .polls(&self.tenant.id, 1)
                .await
                .unwrap()
                .first()
                .is_some_and(|p| p.outcome == "ok");
            if polled
                && store.work_in_flight(&self.tenant.id, chrono::Utc::now()).await.unwrap() == 0
                && self.twilio.idle()
                && !store.jobs(&self.tenant.id).await.unwrap().is_empty()
            {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_the_story_match_what_happened() {
    let faults = TwilioFaults {
        duplicate_callbacks_share: 0.2,
        ..TwilioFaults::default()
    };
    let st = story(Qad::start().await, TwilioSandboxConfig::default(), faults).await;
    let (store, twilio, tenant, key, db) = (&st.db.store, &st.twilio, &st.tenant, &st.key, &st.db);
    install_example_plugin(store, &plugins(), &tenant.id, chrono::Utc::now())
        .await
        .unwrap();
    store.set_answer_settings(&tenant.id, true, true).await.unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    twilio.set_sms_url(&format!("{base}/twilio/{}/messages/inbound", tenant.id));
    twilio.set_scripts(example_answers());
    let _host = tokio::process::Command::new(binary())
        .arg("serve")
        .env("ML_CONNECTOR_DATABASE_URL", &db.url)
        .env("ML_CONNECTOR_MASTER_KEY", key)
        .env("ML_CONNECTOR_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("ML_CONNECTOR_PUBLIC_URL", &base)
        .env("ML_CONNECTOR_GRPC_ADDR", "127.0.0.1:0")
        .env("ML_CONNECTOR_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("ML_CONNECTOR_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The story plays out: alerts, statuses (some twice), answers, confirmations, comments.
    st.settle().await;
    // Three forgeries: refused, and counted.
    let http = reqwest::Client::new();
    for i in 0..3 {
        let r = http
            .post(format!("{base}/twilio/{}/messages/status", tenant.id))
            .header("x-twilio-signature", "Zm9yZ2Vk")
            .form(&[("MessageSid", format!("SMforged{i}")), ("MessageStatus", "delivered".into())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    // Metrics are on their own listener; the public one has nothing internal.
    assert_eq!(http.get(format!("{base}/metrics")).send().await.unwrap().status(), 404);
    let scrape = format!("http://127.0.0.1:{metrics_port}/metrics");
    let text = http.get(scrape).send().await.unwrap().text().await.unwrap();

    let st = twilio.stats();
    let sent = |kind: &str| metric(&text, "mlc_jobs_total", &[("kind", kind), ("outcome", "sent")]);
    assert_eq!(
        sent("send") + sent("confirm"),
        (st.messages_created + st.calls_created) as f64,
        "every message and call Twilio created is counted once"
    );
    assert_eq!(metric(&text, "mlc_alerts_total", &[("outcome", "sent")]), sent("send"));
    assert_eq!(
        metric(&text, "mlc_twilio_requests_total", &[("status", "2xx")]),
        (st.messages_created + st.calls_created) as f64
    );
    let stored = store.webhooks(&tenant.id).await.unwrap().len() as f64;
    let posts = (st.callbacks_sent + st.replies_sent + st.keypresses_sent) as f64;
    assert_eq!(metric(&text, "mlc_webhooks_total", &[("outcome", "accepted")]), stored);
    let duplicates = metric(&text, "mlc_webhooks_total", &[("outcome", "duplicate")]);
    assert!(duplicates > 0.0, "the sandbox sent some callbacks twice");
    assert_eq!(duplicates, posts - stored, "every duplicate dropped and counted");
    assert_eq!(metric(&text, "mlc_webhooks_total", &[("outcome", "forged")]), 3.0);
    let open = store.attention(&tenant.id, Some("open")).await.unwrap().len() as f64;
    assert_eq!(metric(&text, "mlc_records_needing_attention", &[("tenant", &tenant.id)]), open);
    assert!(open > 10.0);
    assert_eq!(metric(&text, "mlc_polls_total", &[("outcome", "ok")]), 1.0);
    assert_eq!(metric(&text, "mlc_queue_depth", &[]), 0.0);
    let cursors = store.cursors(&tenant.id).await.unwrap();
    assert!(!cursors.is_empty());
    for (stream, _, _) in &cursors {
        let lag = metric(&text, "mlc_poll_cursor_lag_seconds", &[("tenant", &tenant.id), ("stream", stream)]);
        assert!(lag > 0.0, "cursor lag of {stream}: {lag}");
    }
    let comments = store.job_counts_by_kind(&tenant.id).await.unwrap();
    let written = comments.get(&("qad_comment".to_string(), "done".to_string())).copied().unwrap_or(0) as f64;
    assert!(written > 0.0);
    assert_eq!(
        metric(&text, "mlc_jobs_total", &[("kind", "qad_comment"), ("outcome", "qad_written")]),
        written
    );
    let routed = store.audit_since(&tenant.id, 0, 100_000).await.unwrap();
    let routings = routed.iter().filter(|e| e.event == "routed" || e.event == "plugin_fault").count() as f64;
    let fallbacks = routed.iter().filter(|e| e.detail["plugin"] == "default (fallback)").count() as f64;
    assert_eq!(metric(&text, "mlc_plugin_call_seconds_count", &[]), routings - fallbacks);
}

/// The alert rules pass `promtool check rules`, and every metric the dashboard and the rules
/// query is one the service exports.
#[test]
fn deploy_rules_check_and_use_only_exported_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy");
    let rules = root.join("prometheus-rules.yml");
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: BTreeSet<&str> = ml_connector::metrics::ALL.into_iter().collect();
    for file in ["prometheus-rules.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let used: BTreeSet<String> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("mlc_"))
            .map(|w| {
                ["_bucket", "_count", "_sum"]
                    .iter()
                    .fold(w.to_string(), |w, suffix| w.strip_suffix(suffix).map(String::from).unwrap_or(w))
            })
            .collect();
        assert!(used.len() >= 5, "{file} queries the service");
        for m in &used {
            assert!(
                exported.contains(m.as_str()),
                "{file} queries {m}, which the service does not export"
            );
        }
    }
}

/// SIGTERM in the middle of dispatch: sends under way finish, claimed ones not started go
/// back to the queue, the process exits 0; started again, it sends the rest. Every alert
/// once, none lost. Deterministic: the Twilio sandbox holds the two sends in flight
/// (`ML_CONNECTOR_TWILIO_CONCURRENCY=2`) unanswered until the host has said it is stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_dispatch_loses_nothing_and_sends_nothing_twice() {
    use tokio::io::AsyncBufReadExt as _;
    let faults = TwilioFaults {
        hold_creates: true,
        ..TwilioFaults::default()
    };
    let st = story(Qad::start().await, TwilioSandboxConfig::default(), faults).await;
    let (store, twilio, tenant, key, db) = (&st.db.store, &st.twilio, &st.tenant, &st.key, &st.db);
    let serve = || {
        tokio::process::Command::new(binary())
            .arg("serve")
            .env("ML_CONNECTOR_DATABASE_URL", &db.url)
            .env("ML_CONNECTOR_MASTER_KEY", key)
            .env("ML_CONNECTOR_HTTP_ADDR", "127.0.0.1:0")
            .env("ML_CONNECTOR_PUBLIC_URL", "http://127.0.0.1:9")
            .env("ML_CONNECTOR_GRPC_ADDR", "127.0.0.1:0")
            .env("ML_CONNECTOR_METRICS_ADDR", "127.0.0.1:0")
            .env("ML_CONNECTOR_TWILIO_CONCURRENCY", "2")
            .env("ML_CONNECTOR_LOG", "info")
            .env("ML_CONNECTOR_LOG_FORMAT", "json")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let first_sends = |jobs: &[(String, String, i64)]| jobs.iter().filter(|(k, _, _)| k.starts_with("send/") && k.ends_with("/0")).count();
    let mut first = serve();
    let mut log = tokio::io::BufReader::new(first.stderr.take().unwrap()).lines();
    // Both slots taken by sends the sandbox has received and not answered, and more alerts
    // queued behind them than the slots hold.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let jobs = store.jobs(&tenant.id).await.unwrap();
        if twilio.stats().in_flight == 2 && first_sends(&jobs) > 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no sends in flight: {:?}", twilio.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(twilio.stats().messages_created + twilio.stats().calls_created, 0);
    let pid = first.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // Twilio answers only once the host has stopped starting sends: what it holds must
    // finish, what waits for a slot must go back to the queue.
    let said_stopping = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("stopping within") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(said_stopping, Ok(true), "the host logs that it is stopping");
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    twilio.set_faults(TwilioFaults::default());
    let status = tokio::time::timeout(Duration::from_secs(40), first.wait())
        .await
        .expect("exits within its grace period")
        .unwrap();
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}");
    let after = store.jobs(&tenant.id).await.unwrap();
    assert!(
        after.iter().all(|(_, st, _)| st != "running"),
        "nothing left holding a lease: {after:?}"
    );
    let sends_after: Vec<_> = after
        .iter()
        .filter(|(k, _, _)| k.starts_with("send/") && k.ends_with("/0"))
        .collect();
    let finished = sends_after.iter().filter(|(_, st, _)| st != "queued").count();
    assert_eq!(finished, 2, "the two sends in flight, and only they, finished: {after:?}");
    assert!(twilio.stats().messages_created + twilio.stats().calls_created <= 2);
    let queued_left = sends_after.iter().filter(|(_, st, _)| st == "queued").count();
    assert!(queued_left > 0, "claimed sends not started went back to the queue: {after:?}");

    let _second = serve();
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the restarted host never finished");
        let jobs = store.jobs(&tenant.id).await.unwrap();
        if jobs
            .iter()
            .filter(|(k, _, _)| k.ends_with("/0"))
            .all(|(_, st, _)| ["done", "failed", "dead", "unknown"].contains(&st.as_str()))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let jobs = store.jobs(&tenant.id).await.unwrap();
    let sends = first_sends(&jobs);
    let mut created = std::collections::HashMap::new();
    for m in twilio.messages().into_iter().chain(twilio.calls()) {
        *created.entry((m.to, m.body)).or_insert(0) += 1;
    }
    assert!(created.values().all(|n| *n == 1), "an alert sent twice: {created:?}");
    assert_eq!(created.len(), sends, "every alert sent once, none lost");
    assert!(
        jobs.iter().all(|(_, st, _)| st != "unknown"),
        "a graceful stop leaves no outcome unknown"
    );
}

/// A known secret in every place one can go (QAD password, Twilio API key secret and Auth
/// Token, the admin token, the master key), the whole story run at `LOG=trace` in JSON:
/// every line is JSON, and no line holds any secret, in clear or as the Basic credentials
/// sent on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_even_at_trace() {
    use base64::Engine as _;
    let qad_password = "qad-pw-LEAKCHECK-4711";
    let qad = Qad::start_with(ml_connector::qad_sandbox::QadSandbox::new(
        ml_connector::qad_sandbox::SandboxConfig {
            password: qad_password.into(),
            ..ml_connector::qad_sandbox::SandboxConfig::new(ml_connector_tests::today())
        },
    ))
    .await;
    let twilio_cfg = TwilioSandboxConfig {
        api_key_secret: "key-secret-LEAKCHECK-0815".into(),
        auth_token: "authtokenLEAKCHECK00000000000042".into(),
        ..TwilioSandboxConfig::default()
    };
    let st = story(qad, twilio_cfg.clone(), TwilioFaults::default()).await;
    let (tenant, key, db, qad) = (&st.tenant, &st.key, &st.db, &st.qad);
    let admin_token = "admin-token-LEAKCHECK-1234";
    let port = free_port();
    let grpc = format!("127.0.0.1:{}", free_port());
    let base = format!("http://127.0.0.1:{port}");
    let mut host = tokio::process::Command::new(binary())
        .arg("serve")
        .env("ML_CONNECTOR_DATABASE_URL", &db.url)
        .env("ML_CONNECTOR_MASTER_KEY", key)
        .env("ML_CONNECTOR_ADMIN_TOKEN", admin_token)
        .env("ML_CONNECTOR_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("ML_CONNECTOR_PUBLIC_URL", &base)
        .env("ML_CONNECTOR_METRICS_ADDR", "127.0.0.1:0")
        .env("ML_CONNECTOR_GRPC_ADDR", &grpc)
        .env("ML_CONNECTOR_LOG", "trace")
        .env("ML_CONNECTOR_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = host.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut s = String::new();
        let mut r = stderr;
        r.read_to_string(&mut s).await.unwrap();
        s
    });
    st.settle().await;
    // The admin token travels too: one call with it, one with a wrong one.
    for token in [admin_token, "wrong-LEAKCHECK"] {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client =
            ml_connector::grpc::pb::tenants_client::TenantsClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                Ok(req)
            });
        let _ = client.list_tenants(ml_connector::grpc::pb::ListTenantsRequest {}).await;
    }
    let pid = host.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    host.wait().await.unwrap();
    let text = log.await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 1000, "trace logs were written ({} lines)", lines.len());
    for l in &lines {
        assert!(serde_json::from_str::<serde_json::Value>(l).is_ok(), "not a JSON line: {l}");
    }
    // One record followed from its poll to its alert to Twilio's callback, by the span fields.
    let json: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let sent = json
        .iter()
        .find(|v| v["fields"]["message"] == "accepted by Twilio")
        .expect("a send is logged");
    let (record, sid) = (sent["span"]["record"].as_str().unwrap(), sent["fields"]["sid"].as_str().unwrap());
    assert_eq!(sent["span"]["name"], "job");
    assert!(sent["span"]["job_id"].is_number() && sent["span"]["tenant"] == tenant.id.as_str());
    let in_span = |v: &serde_json::Value, name: &str, field: &str, value: &str| {
        v["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == name && s[field] == value))
    };
    assert!(
        json.iter().any(|v| in_span(v, "record", "record", record)),
        "the poll's lines about {record}"
    );
    assert!(json.iter().any(|v| in_span(v, "webhook", "sid", sid)), "the callbacks about {sid}");

    let basic = |u: &str, p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    let secrets = [
        qad_password.to_string(),
        twilio_cfg.api_key_secret.clone(),
        twilio_cfg.auth_token.clone(),
        admin_token.to_string(),
        key.clone(),
        "LEAKCHECK".to_string(),
        basic(&twilio_cfg.api_key_sid, &twilio_cfg.api_key_secret),
        basic(&qad.config.user, qad_password),
    ];
    for s in &secrets {
        if let Some(l) = lines.iter().find(|l| l.contains(s.as_str())) {
            panic!("a log line holds a secret: {l}");
        }
    }
}

/// A host whose one tenant's QAD accepts connections and never answers (a poll hangs in
/// it), with a `Watch` stream open, started on a fresh SQLite file.
struct Stuck {
    host: tokio::process::Child,
    _qad: std::net::TcpListener,
    _watch: Option<tonic::Streaming<ml_connector::grpc::pb::WatchMessage>>,
    _db: ml_connector_tests::TestDb,
}

async fn stuck_host() -> Stuck {
    use ml_connector::qad_sandbox::SandboxConfig;
    // Connections land in the kernel's backlog: accepted, never answered.
    let qad = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = SandboxConfig::new(ml_connector_tests::today());
    let base = format!("http://{}{}", qad.local_addr().unwrap(), config.base_path);
    let db = fresh_db("sqlite").await;
    let key = generate_master_key();
    let tenant = example_tenant(&base, &config, 60);
    provision_example(&db.store, &Keyring::new(&key, &[]).unwrap(), &tenant, &config, chrono::Utc::now())
        .await
        .unwrap();
    let grpc = format!("127.0.0.1:{}", free_port());
    let host = tokio::process::Command::new(binary())
        .arg("serve")
        .env("ML_CONNECTOR_DATABASE_URL", &db.url)
        .env("ML_CONNECTOR_MASTER_KEY", &key)
        .env("ML_CONNECTOR_ADMIN_TOKEN", "stop-test-token")
        .env("ML_CONNECTOR_HTTP_ADDR", "127.0.0.1:0")
        .env("ML_CONNECTOR_GRPC_ADDR", &grpc)
        .env("ML_CONNECTOR_METRICS_ADDR", "127.0.0.1:0")
        .env("ML_CONNECTOR_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The poll is under way once the host has started it.
    let mut polling = false;
    for _ in 0..600 {
        if !db.store.polls(&tenant.id, 1).await.unwrap().is_empty() {
            polling = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(polling, "the host started a poll");
    let mut watch = None;
    for _ in 0..200 {
        let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let auth = |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("authorization", "Bearer stop-test-token".parse().unwrap());
            Ok(req)
        };
        let mut alerts = ml_connector::grpc::pb::alerts_client::AlertsClient::with_interceptor(channel, auth);
        let request = ml_connector::grpc::pb::WatchRequest {
            after_id: 0,
            tenant_id: String::new(),
        };
        if let Ok(stream) = alerts.watch(request).await {
            watch = Some(stream.into_inner());
            break;
        }
    }
    assert!(watch.is_some(), "a Watch stream is open");
    Stuck {
        host,
        _qad: qad,
        _watch: watch,
        _db: db,
    }
}

fn signal(host: &tokio::process::Child, name: &str) {
    let pid = host.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args([name, &pid]).status().unwrap().success());
}

/// SIGTERM with a poll hung on a QAD that never answers and a `Watch` stream open: the
/// process exits within the README's 30 s (the guard below is only "it did not hang").
/// Prints the time it took.
#[tokio::test]
async fn sigterm_ends_serve_within_thirty_seconds_whatever_hangs() {
    let mut s = stuck_host().await;
    let sent = std::time::Instant::now();
    signal(&s.host, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(90), s.host.wait()).await;
    let took = sent.elapsed();
    eprintln!(
        "SIGTERM with a hung poll and an open Watch: exited after {:.1} s",
        took.as_secs_f64()
    );
    assert!(status.is_ok(), "still running 90 s after SIGTERM");
    assert!(took <= ml_connector::cli::SHUTDOWN_GRACE, "exited after {took:?}");
}

/// A second signal while stopping ends the process at once (printed: how long it took).
#[tokio::test]
async fn a_second_signal_exits_at_once() {
    use tokio::io::AsyncBufReadExt;
    let mut s = stuck_host().await;
    let mut log = tokio::io::BufReader::new(s.host.stderr.take().unwrap()).lines();
    signal(&s.host, "-TERM");
    // The host says it is stopping once the second signal's handler is installed.
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), log.next_line()).await;
        let line = line.expect("the host says it is stopping").unwrap().expect("stderr open");
        if line.contains("a second signal exits at once") {
            break;
        }
    }
    let sent = std::time::Instant::now();
    signal(&s.host, "-INT");
    let status = tokio::time::timeout(Duration::from_secs(20), s.host.wait()).await;
    let took = sent.elapsed();
    eprintln!("second signal: exited after {:.2} s", took.as_secs_f64());
    let status = status.expect("the second signal ends the process").unwrap();
    assert!(!status.success(), "a forced exit says so: {status:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
