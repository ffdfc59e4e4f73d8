//! The gRPC control plane as an operator drives it: grpcurl itself against the real `serve`
//! process, from an empty database to a working tenant against the sandboxes; a Rust client
//! for the one thing grpcurl cannot do (read slowly).

use std::io::BufReader;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use ml_connector::grpc::pb;
use ml_connector::plugin::LAKESHORE_PLUGIN;
use ml_connector::secrets::generate_master_key;
use ml_connector::store::{NewAudit, Store};
use ml_connector::twilio_sandbox::{TwilioSandbox, TwilioSandboxConfig};
use ml_connector_tests::{Qad, binary, engines, fresh_db};
use serde_json::{Value, json};

pub(crate) const TOKEN: &str = "test-admin-token-0123456789";

/// A port free a moment ago: `serve` must be told its gRPC address to be reached by grpcurl.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub(crate) struct Host {
    pub(crate) child: tokio::process::Child,
    pub(crate) addr: String,
}

/// `ml-connector serve` on `url` with the admin token, gRPC on a free port; not waited for.
fn spawn_serve(url: &str, key: &str, env: &[(&str, &str)]) -> Host {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = tokio::process::Command::new(binary())
        .arg("serve")
        .env("ML_CONNECTOR_DATABASE_URL", url)
        .env("ML_CONNECTOR_MASTER_KEY", key)
        .env("ML_CONNECTOR_ADMIN_TOKEN", TOKEN)
        .env("ML_CONNECTOR_GRPC_ADDR", &addr)
        .env("ML_CONNECTOR_METRICS_ADDR", "127.0.0.1:0")
        .env("ML_CONNECTOR_HTTP_ADDR", "127.0.0.1:0")
        .env("ML_CONNECTOR_LOG", "warn")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Host { child, addr }
}

/// `ml-connector serve` on `url`, waited for until gRPC health says SERVING.
pub(crate) async fn serve(url: &str, key: &str, env: &[(&str, &str)]) -> Host {
    let host = spawn_serve(url, key, env);
    for _ in 0..300 {
        // Health needs no token: only reflection (to find the method) is given one.
        let (ok, out, _) = grpcurl(
            &host.addr,
            &["-reflect-header", &format!("authorization: Bearer {TOKEN}")],
            "grpc.health.v1.Health/Check",
            None,
        )
        .await;
        if ok && out.contains("\"SERVING\"") {
            return host;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("serve never reported SERVING on {}", host.addr);
}

/// Run grpcurl; (success, stdout, stderr).
async fn grpcurl(addr: &str, flags: &[&str], method: &str, data: Option<&Value>) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new("grpcurl");
    cmd.arg("-plaintext").args(flags);
    if data.is_some() {
        cmd.args(["-d", "@"]);
    }
    cmd.arg(addr);
    if !method.is_empty() {
        cmd.args(method.split(' '));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("grpcurl on PATH (cargo xtask test installs it)");
    if let Some(d) = data {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(d.to_string().as_bytes()).await.unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every answer the tests received, to search for secrets afterwards.
#[derive(Default)]
struct Transcript(String);

impl Transcript {
    async fn call(&mut self, addr: &str, method: &str, data: Value) -> Value {
        let (ok, out, err) = grpcurl(addr, &["-H", &format!("authorization: Bearer {TOKEN}")], method, Some(&data)).await;
        self.0.push_str(&out);
        self.0.push_str(&err);
        assert!(ok, "{method} {data}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{method} answered {out:?}: {e}"))
    }

    /// A call that must fail: its grpcurl error text (code and message).
    async fn refused(&mut self, addr: &str, method: &str, data: Value) -> String {
        let (ok, out, err) = grpcurl(addr, &["-H", &format!("authorization: Bearer {TOKEN}")], method, Some(&data)).await;
        self.0.push_str(&out);
        self.0.push_str(&err);
        assert!(!ok, "{method} {data} should have been refused: {out}");
        err
    }
}

/// protojson writes int64 as a string and leaves zero values out.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        Value::Number(n) => n.as_i64().unwrap(),
        Value::Null => 0,
        other => panic!("not an integer: {other}"),
    }
}

fn list<'a>(v: &'a Value, field: &str) -> &'a [Value] {
    v[field].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Read grpcurl's stream of JSON messages from a Watch until `enough` says so.
fn watch_until(addr: &str, request: Value, enough: impl Fn(&[Value]) -> bool + Send + 'static) -> std::thread::JoinHandle<Vec<Value>> {
    let mut child = std::process::Command::new("grpcurl")
        .args([
            "-plaintext",
            "-H",
            &format!("authorization: Bearer {TOKEN}"),
            "-d",
            &request.to_string(),
            addr,
        ])
        .arg("mlconnector.v1.Alerts/Watch")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for msg in serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>() {
            seen.push(msg.expect("grpcurl prints JSON messages"));
            if enough(&seen) {
                break;
            }
        }
        // The consumer goes away mid-stream, as a crashed service would.
        let _ = child.kill();
        let _ = child.wait();
        seen
    })
}

async fn joined(h: std::thread::JoinHandle<Vec<Value>>) -> Vec<Value> {
    tokio::time::timeout(Duration::from_secs(60), tokio::task::spawn_blocking(move || h.join().unwrap()))
        .await
        .expect("the watch delivered what was expected")
        .unwrap()
}

fn event_ids(msgs: &[Value]) -> Vec<i64> {
    msgs.iter()
        .filter(|m| m["event"].is_object())
        .map(|m| int(&m["event"]["id"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_takes_an_operator_from_an_empty_database_to_a_working_tenant() {
    for engine in engines() {
        operator_session(engine).await;
    }
}

async fn operator_session(engine: &str) {
    let qad = Qad::start().await;
    let twilio = TwilioSandbox::new(TwilioSandboxConfig::default());
    let (twilio_base, _t) = twilio.clone().spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let tw = twilio.config();
    let db = fresh_db(engine).await;
    let key = generate_master_key();
    let mut host = serve(&db.url, &key, &[]).await;
    let addr = host.addr.clone();
    let mut t = Transcript::default();

    // Without the token nothing but health answers; with it, reflection lists every service.
    let (ok, _, err) = grpcurl(&addr, &[], "list", None).await;
    assert!(!ok && err.contains("Unauthenticated"), "{err}");
    let (ok, _, err) = grpcurl(&addr, &["-H", "authorization: Bearer wrong"], "list", None).await;
    assert!(!ok && err.contains("Unauthenticated"), "{err}");
    let (ok, out, err) = grpcurl(&addr, &["-H", &format!("authorization: Bearer {TOKEN}")], "list", None).await;
    assert!(ok, "{err}");
    for s in [
        "grpc.health.v1.Health",
        "mlconnector.v1.Alerts",
        "mlconnector.v1.Plugins",
        "mlconnector.v1.Polls",
        "mlconnector.v1.Tenants",
    ] {
        assert!(out.lines().any(|l| l == s), "{s} listed: {out}");
    }
    let (ok, out, _) = grpcurl(
        &addr,
        &["-H", &format!("authorization: Bearer {TOKEN}")],
        "describe mlconnector.v1.Tenant",
        None,
    )
    .await;
    assert!(
        ok && out.contains("Which credentials are set and when; never their values."),
        "{out}"
    );

    // The tenant, refused field by field first.
    let (domain, entity) = qad.config.workspace.split_once('_').unwrap();
    let mut tenant = json!({
        "id": "acme", "name": "Acme Castings",
        "qad": {"base_url": qad.base, "domain": domain, "entity": entity},
        "twilio": {"account_sid": tw.account_sid, "from_number": "(312) 55-01", "base_url": twilio_base},
        "schedule": {"every_seconds": 86400, "time_zone": "America/Chicago"},
        "execute_decisions": false, "call_opted_out": true,
    });
    let err = t
        .refused(&addr, "mlconnector.v1.Tenants/CreateTenant", json!({"tenant": tenant}))
        .await;
    assert!(
        err.contains("InvalidArgument") && err.contains("tenant.twilio.from_number"),
        "{err}"
    );
    tenant["twilio"]["from_number"] = json!("+13125550100");
    tenant["schedule"]["cron"] = json!("every tuesday");
    let err = t
        .refused(&addr, "mlconnector.v1.Tenants/CreateTenant", json!({"tenant": tenant}))
        .await;
    assert!(err.contains("InvalidArgument") && err.contains("tenant.schedule"), "{err}");
    tenant["schedule"]["cron"] = json!("");
    let created = t
        .call(&addr, "mlconnector.v1.Tenants/CreateTenant", json!({"tenant": tenant}))
        .await;
    assert_eq!(created["id"], "acme");
    let err = t
        .refused(&addr, "mlconnector.v1.Tenants/CreateTenant", json!({"tenant": tenant}))
        .await;
    assert!(err.contains("AlreadyExists"), "{err}");

    // Twilio first: alerts can go out from the first poll on.
    let wrong_token = "not-the-auth-token-fedcba98765432";
    t.call(
        &addr,
        "mlconnector.v1.Tenants/SetTwilioCredentials",
        json!({"tenant_id": "acme", "api_key_sid": tw.api_key_sid, "api_key_secret": tw.api_key_secret, "auth_token": wrong_token}),
    )
    .await;
    // Update only what the mask names; schedule checked as on create.
    let renamed = t
        .call(
            &addr,
            "mlconnector.v1.Tenants/UpdateTenant",
            json!({"tenant": {"id": "acme", "name": "Acme Castings Inc."}, "update_mask": ["name"]}),
        )
        .await;
    assert_eq!(renamed["name"], "Acme Castings Inc.");
    assert_eq!(renamed["qad"]["domain"], domain);
    let err = t
        .refused(
            &addr,
            "mlconnector.v1.Tenants/SetSchedule",
            json!({"tenant_id": "acme", "schedule": {"every_seconds": 60, "time_zone": "Mars/Olympus"}}),
        )
        .await;
    assert!(err.contains("InvalidArgument") && err.contains("schedule"), "{err}");
    let listed = t.call(&addr, "mlconnector.v1.Tenants/ListTenants", json!({})).await;
    assert_eq!(list(&listed, "tenants").len(), 1);

    // Plugins: garbage refused naming the field; the example plugin uploaded and activated.
    let err = t
        .refused(
            &addr,
            "mlconnector.v1.Plugins/UploadPlugin",
            json!({"tenant_id": "acme", "wasm": base64::engine::general_purpose::STANDARD.encode(b"\0asm not really")}),
        )
        .await;
    assert!(err.contains("InvalidArgument") && err.contains("wasm:"), "{err}");
    let future = base64::engine::general_purpose::STANDARD.encode(std::fs::read(env!("FUTURE_PLUGIN_WASM")).unwrap());
    let err = t
        .refused(
            &addr,
            "mlconnector.v1.Plugins/UploadPlugin",
            json!({"tenant_id": "acme", "wasm": future}),
        )
        .await;
    assert!(
        err.contains("InvalidArgument") && err.contains("wasm:") && err.contains("WrongWorld"),
        "a plugin of another world: {err}"
    );
    let wasm = base64::engine::general_purpose::STANDARD.encode(LAKESHORE_PLUGIN);
    let v1 = t
        .call(
            &addr,
            "mlconnector.v1.Plugins/UploadPlugin",
            json!({"tenant_id": "acme", "wasm": wasm}),
        )
        .await;
    assert_eq!(int(&v1["version"]), 1);
    assert!(v1["world"].as_str().unwrap().starts_with("ml-connector:plugin@"), "{v1}");
    let activated = t
        .call(
            &addr,
            "mlconnector.v1.Plugins/ActivatePlugin",
            json!({"tenant_id": "acme", "version": 1}),
        )
        .await;
    assert_eq!(int(&activated["previousVersion"]), 0);
    let versions = t
        .call(&addr, "mlconnector.v1.Plugins/ListPluginVersions", json!({"tenant_id": "acme"}))
        .await;
    let active: Vec<i64> = list(&versions, "versions")
        .iter()
        .filter(|v| v["active"] == true)
        .map(|v| int(&v["version"]))
        .collect();
    assert_eq!(active, [1]);
    t.call(
        &addr,
        "mlconnector.v1.Tenants/UpdateTenant",
        json!({"tenant": {"id": "acme", "plugin_settings_json": "{\"config\": {\"call_over\": \"25000\"}, \"fallback_to_default\": true}"}, "update_mask": ["plugin_settings_json"]}),
    )
    .await;

    // Watch from the beginning while the tenant is polled: its events arrive in id order.
    let first_watch = watch_until(&addr, json!({"tenant_id": "acme"}), |seen| {
        seen.iter().any(|m| m["event"]["event"] == "routed") && seen.len() >= 40
    });
    let after = t
        .call(
            &addr,
            "mlconnector.v1.Tenants/SetQadCredentials",
            json!({"tenant_id": "acme", "username": qad.config.user, "password": qad.config.password}),
        )
        .await;
    assert_eq!(list(&after, "credentials").len(), 5);
    // Setting the QAD credentials lets the scheduler poll the tenant at once (it was held
    // back for want of them). The connection test names what fails.
    let test = t
        .call(&addr, "mlconnector.v1.Tenants/TestConnection", json!({"tenant_id": "acme"}))
        .await;
    let check = |name: &str| list(&test, "checks").iter().find(|c| c["name"] == name).cloned().unwrap();
    assert_eq!(test["ok"], Value::Null, "a failed check makes the whole test fail: {test}");
    assert_eq!(check("qad.login")["ok"], true, "{test}");
    assert_eq!(check("twilio.api_key")["ok"], true, "{test}");
    assert!(check("twilio.auth_token")["ok"].is_null(), "{test}");
    assert!(
        check("twilio.auth_token")["detail"].as_str().unwrap().contains("20003"),
        "the failure says what Twilio said: {test}"
    );
    t.call(
        &addr,
        "mlconnector.v1.Tenants/SetTwilioCredentials",
        json!({"tenant_id": "acme", "auth_token": tw.auth_token}),
    )
    .await;
    let test = t
        .call(&addr, "mlconnector.v1.Tenants/TestConnection", json!({"tenant_id": "acme"}))
        .await;
    assert_eq!(test["ok"], true, "{test}");
    let got = t.call(&addr, "mlconnector.v1.Tenants/GetTenant", json!({"id": "acme"})).await;
    let fields: Vec<&str> = list(&got, "credentials").iter().map(|c| c["field"].as_str().unwrap()).collect();
    assert_eq!(
        fields,
        [
            "qad.password",
            "qad.username",
            "twilio.api_key_secret",
            "twilio.api_key_sid",
            "twilio.auth_token"
        ]
    );
    assert!(list(&got, "credentials").iter().all(|c| c["setAt"].is_string()));

    let mut scheduled = Value::Null;
    for _ in 0..600 {
        let history = t.call(&addr, "mlconnector.v1.Polls/ListPolls", json!({"tenant_id": "acme"})).await;
        if let Some(p) = list(&history, "polls").iter().find(|p| p["finishedAt"].is_string()) {
            scheduled = p.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(scheduled["outcome"], "ok", "{scheduled}");
    assert_eq!(scheduled["requestedBy"], "schedule");
    assert!(int(&scheduled["opened"]) > 10, "{scheduled}");
    let poll = t.call(&addr, "mlconnector.v1.Polls/PollNow", json!({"tenant_id": "acme"})).await;
    assert_eq!(poll["outcome"], "ok", "{poll}");
    assert_eq!(poll["requestedBy"], "grpc");
    let err = t
        .refused(&addr, "mlconnector.v1.Polls/PollNow", json!({"tenant_id": "nobody"}))
        .await;
    assert!(err.contains("NotFound"), "{err}");
    let history = t.call(&addr, "mlconnector.v1.Polls/ListPolls", json!({"tenant_id": "acme"})).await;
    assert_eq!(int(&list(&history, "polls")[0]["id"]), int(&poll["id"]));
    let cursors = t
        .call(&addr, "mlconnector.v1.Polls/ListCursors", json!({"tenant_id": "acme"}))
        .await;
    assert!(!list(&cursors, "cursors").is_empty(), "{cursors}");
    let first = joined(first_watch).await;
    let ids = event_ids(&first);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ordered ids: {ids:?}");
    assert!(first.iter().all(|m| m["event"]["tenantId"] == "acme"));

    // A consumer that went away resumes after the last id it saw: nothing skipped, nothing repeated.
    let resume_after = ids[19];
    let expected_next = ids[20];
    let second = joined(watch_until(&addr, json!({"tenant_id": "acme", "after_id": resume_after}), |seen| {
        !seen.is_empty()
    }))
    .await;
    assert_eq!(event_ids(&second), [expected_next]);
    assert_eq!(second[0], first[20], "the same event, byte for byte");

    // Records, alerts, a record's history, paging.
    let open = t
        .call(
            &addr,
            "mlconnector.v1.Alerts/ListRecords",
            json!({"tenant_id": "acme", "state": "open", "page": {"page_size": 5}}),
        )
        .await;
    assert_eq!(list(&open, "records").len(), 5);
    let next = open["nextPageToken"].as_str().unwrap().to_string();
    let page2 = t
        .call(
            &addr,
            "mlconnector.v1.Alerts/ListRecords",
            json!({"tenant_id": "acme", "state": "open", "page": {"page_size": 5, "page_token": next}}),
        )
        .await;
    let keys = |v: &Value| -> Vec<String> {
        list(v, "records")
            .iter()
            .map(|r| format!("{}/{}", r["kind"], r["recordKey"]))
            .collect()
    };
    assert!(keys(&page2).iter().all(|k| !keys(&open).contains(k)), "pages do not overlap");
    let sent = t
        .call(
            &addr,
            "mlconnector.v1.Alerts/ListAlerts",
            json!({"tenant_id": "acme", "kind": "send", "state": "done", "page": {"page_size": 1000}}),
        )
        .await;
    // An SMS alert, killed below by hand as running out of attempts would leave it.
    let escalation = list(&sent, "alerts")
        .iter()
        .find(|a| a["delivery"]["channel"] == "sms")
        .cloned()
        .unwrap_or_else(|| panic!("an SMS was sent: {sent}"));
    let (kind, record) = (
        escalation["recordKind"].as_str().unwrap().to_string(),
        escalation["recordKey"].as_str().unwrap().to_string(),
    );
    let detail = t
        .call(
            &addr,
            "mlconnector.v1.Alerts/GetRecord",
            json!({"tenant_id": "acme", "kind": kind, "record_key": record}),
        )
        .await;
    let events: Vec<&str> = list(&detail, "audit").iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert!(events.contains(&"routed") && events.contains(&"queued"), "{events:?}");
    assert!(!list(&detail, "episodes").is_empty() && !detail["dataJson"].as_str().unwrap().is_empty());

    // Dry-run: the active plugin on what it was given for this record, and the default on the samples.
    let dry = t
        .call(
            &addr,
            "mlconnector.v1.Plugins/DryRun",
            json!({"tenant_id": "acme", "version": -1, "record_kind": kind, "record_key": record}),
        )
        .await;
    let result = &list(&dry, "results")[0];
    assert!(result["fault"].is_null(), "{dry}");
    let deliveries = list(result, "deliveries");
    assert!(!deliveries.is_empty(), "{dry}");
    assert!(deliveries.iter().all(|d| !d["body"].as_str().unwrap().is_empty()));
    let samples = t
        .call(
            &addr,
            "mlconnector.v1.Plugins/DryRun",
            json!({"tenant_id": "acme", "version": 0, "samples": true}),
        )
        .await;
    assert!(list(&samples, "results").len() >= 3, "{samples}");

    // Replay of a dead job: acts once, however often it is asked.
    let job_id = int(&escalation["id"]);
    let messages_before = twilio.stats().messages_created;
    db.store
        .execute_raw(&format!(
            "UPDATE jobs SET state = 'dead', outcome = '{{\"error\": \"out of attempts (test)\"}}' WHERE id = {job_id}"
        ))
        .await
        .unwrap();
    let replay = json!({"tenant_id": "acme", "alert_id": job_id});
    let once = t.call(&addr, "mlconnector.v1.Alerts/Replay", replay.clone()).await;
    assert_eq!(once["replayed"], true, "{once}");
    let twice = t.call(&addr, "mlconnector.v1.Alerts/Replay", replay.clone()).await;
    assert!(twice["replayed"].is_null(), "the second replay changes nothing: {twice}");
    let mut state = String::new();
    for _ in 0..400 {
        let a = t
            .call(
                &addr,
                "mlconnector.v1.Alerts/ListAlerts",
                json!({"tenant_id": "acme", "kind": "send", "page": {"page_size": 1000}}),
            )
            .await;
        state = list(&a, "alerts")
            .iter()
            .find(|x| int(&x["id"]) == job_id)
            .map(|x| x["state"].as_str().unwrap().to_string())
            .unwrap();
        if state == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "done");
    t.call(&addr, "mlconnector.v1.Alerts/Replay", replay).await;
    assert_eq!(
        twilio.stats().messages_created,
        messages_before + 1,
        "the replayed SMS was sent once"
    );
    let err = t
        .refused(
            &addr,
            "mlconnector.v1.Alerts/Replay",
            json!({"tenant_id": "acme", "alert_id": 999999}),
        )
        .await;
    assert!(err.contains("NotFound"), "{err}");

    // Deleting the tenant keeps its records' trail readable.
    let mut unfinished = 0;
    for state in ["queued", "running"] {
        let a = t
            .call(
                &addr,
                "mlconnector.v1.Alerts/ListAlerts",
                json!({"tenant_id": "acme", "state": state, "page": {"page_size": 1000}}),
            )
            .await;
        unfinished += list(&a, "alerts").len() as i64;
    }
    let deleted = t.call(&addr, "mlconnector.v1.Tenants/DeleteTenant", json!({"id": "acme"})).await;
    assert_eq!(
        int(&deleted["jobsCancelled"]),
        unfinished,
        "work still queued is cancelled: {deleted}"
    );
    let err = t.refused(&addr, "mlconnector.v1.Tenants/GetTenant", json!({"id": "acme"})).await;
    assert!(err.contains("NotFound"), "{err}");
    let kept = t
        .call(
            &addr,
            "mlconnector.v1.Alerts/GetRecord",
            json!({"tenant_id": "acme", "kind": kind, "record_key": record}),
        )
        .await;
    let kept_events: Vec<&str> = list(&kept, "audit").iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert!(kept_events.starts_with(&events), "nothing lost: {kept_events:?}");
    assert!(kept_events[events.len()..].contains(&"replayed"), "{kept_events:?}");

    // No secret in any answer, and none in the database file.
    let secrets = [
        qad.config.password.as_str(),
        tw.api_key_secret.as_str(),
        tw.auth_token.as_str(),
        wrong_token,
    ];
    for s in secrets {
        if let Some(at) = t.0.find(s) {
            panic!("a gRPC answer held a secret: …{}…", &t.0[at.saturating_sub(300)..at]);
        }
    }
    let pid = host.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(15), host.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    if let Some(path) = db.sqlite_path() {
        db.store.checkpoint().await.unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend(std::fs::read(path.with_extension("db-wal")).unwrap_or_default());
        for s in secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "the database file holds a secret in the clear"
            );
        }
    }
}

type AuthedAlerts = pb::alerts_client::AlertsClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

fn with_token(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    Ok(req)
}

/// Every tenant's events after `after_id`.
async fn watch_all(client: &mut AuthedAlerts, after_id: i64) -> tonic::Streaming<pb::WatchMessage> {
    let request = pb::WatchRequest {
        after_id,
        tenant_id: String::new(),
    };
    client.watch(request).await.unwrap().into_inner()
}

/// A consumer that stops reading is told it lagged, with the id to resume after; resuming
/// there gets every event after it exactly once. The host never waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_told_it_lagged_and_resumes_without_a_gap() {
    let db = fresh_db("sqlite").await;
    let key = generate_master_key();
    let host = serve(&db.url, &key, &[("ML_CONNECTOR_WATCH_BUFFER", "8")]).await;
    let endpoint = format!("http://{}", host.addr);
    let store: Store = db.store.clone();
    let start = store.last_event_id().await.unwrap();
    let connect = || async {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let auth: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> = with_token;
        pb::alerts_client::AlertsClient::with_interceptor(channel, auth)
    };
    let mut slow_client = connect().await;
    let mut slow = watch_all(&mut slow_client, start).await;
    // A brisk consumer proves when the host has published everything.
    let mut brisk_client = connect().await;
    let mut brisk = watch_all(&mut brisk_client, start).await;
    // 24 MB of events: more than HTTP/2 flow control and every buffer hold for the slow one.
    let total = 3000;
    let padding = "x".repeat(8000);
    for chunk in 0..30 {
        let entries: Vec<NewAudit> = (0..100)
            .map(|i| NewAudit {
                kind: "test".into(),
                record_key: format!("R-{}", chunk * 100 + i),
                event: "flood".into(),
                detail: json!({"n": chunk * 100 + i, "padding": padding}),
            })
            .collect();
        store.append_audit("flood", &entries, chrono::Utc::now()).await.unwrap();
    }
    let last = store.last_event_id().await.unwrap();
    let mut brisk_seen = 0;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), brisk.message())
            .await
            .unwrap()
            .unwrap();
        match m.expect("the stream goes on").message.unwrap() {
            pb::watch_message::Message::Event(e) => {
                brisk_seen += 1;
                if e.id == last {
                    break;
                }
            }
            // Even a brisk reader may be told it lagged in a burst; it resumes as documented.
            pb::watch_message::Message::Lagged(l) => {
                brisk = watch_all(&mut brisk_client, l.resume_after_id).await;
            }
        }
    }
    assert_eq!(brisk_seen, total);

    // Now the slow one reads: some events, then the lag notice naming the last it got.
    let mut got = Vec::new();
    let resume = loop {
        let m = tokio::time::timeout(Duration::from_secs(60), slow.message())
            .await
            .unwrap()
            .unwrap()
            .expect("the stream ends with a lag notice, not silently");
        match m.message.unwrap() {
            pb::watch_message::Message::Event(e) => got.push(e.id),
            pb::watch_message::Message::Lagged(l) => break l.resume_after_id,
        }
    };
    assert!(got.len() < total, "it lagged before the end ({} of {total})", got.len());
    assert_eq!(resume, *got.last().unwrap_or(&start), "resume after the last event received");
    assert!(slow.message().await.unwrap().is_none(), "the stream ends after the notice");
    let mut again = watch_all(&mut slow_client, resume).await;
    while got.last() != Some(&last) {
        match tokio::time::timeout(Duration::from_secs(60), again.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .message
            .unwrap()
        {
            pb::watch_message::Message::Event(e) => got.push(e.id),
            pb::watch_message::Message::Lagged(l) => panic!("catching up from the database never lags ({})", l.resume_after_id),
        }
    }
    let expected: Vec<i64> = (start + 1..=last).collect();
    assert_eq!(got, expected, "every event once, in order");
    drop(host);
}

/// With a certificate and key, gRPC is served over TLS only: grpcurl trusting the
/// certificate lists the services; plaintext gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_serves_tls_from_a_certificate_and_key() {
    let dir = ml_connector_tests::TempDir::new("tls");
    let (cert, key_file) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout"])
        .arg(&key_file)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl makes a test certificate");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let db = fresh_db("sqlite").await;
    let (cert_path, key_path) = (cert.display().to_string(), key_file.display().to_string());
    let host = spawn_serve(
        &db.url,
        &generate_master_key(),
        &[("ML_CONNECTOR_GRPC_TLS_CERT", &cert_path), ("ML_CONNECTOR_GRPC_TLS_KEY", &key_path)],
    );
    let addr = host.addr.clone();
    let auth = format!("authorization: Bearer {TOKEN}");
    let mut listed = String::new();
    for _ in 0..300 {
        let out = tokio::process::Command::new("grpcurl")
            .arg("-cacert")
            .arg(&cert)
            .args(["-H", &auth, &addr, "list"])
            .output()
            .await
            .unwrap();
        if out.status.success() {
            listed = String::from_utf8_lossy(&out.stdout).into_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(listed.contains("mlconnector.v1.Tenants"), "listed over TLS: {listed:?}");
    let (ok, _, _) = grpcurl(&addr, &["-H", &auth], "list", None).await;
    assert!(!ok, "plaintext is refused when TLS is configured");
}

/// Health says NOT_SERVING while the migrations run (here held back by a lock the test
/// takes on the migrations table), then SERVING; it needs no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_until_the_migrations_are_applied() {
    if !engines().contains(&"postgres") {
        eprintln!("no ML_CONNECTOR_TEST_DATABASE_URL: this test holds a PostgreSQL lock");
        return;
    }
    let db = fresh_db("postgres").await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let host = spawn_serve(&db.url, &generate_master_key(), &[]);
    let addr = host.addr.clone();
    let reflect = ["-reflect-header", &format!("authorization: Bearer {TOKEN}")];
    let status = || async {
        let (ok, out, _) = grpcurl(&addr, &reflect, "grpc.health.v1.Health/Check", None).await;
        ok.then(|| {
            serde_json::from_str::<Value>(&out).unwrap()["status"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "gRPC never answered health");
        if let Some(s) = status().await {
            assert_eq!(s, "NOT_SERVING", "not serving while the migrations wait");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still waiting on the lock: still not serving.
    assert_eq!(status().await.as_deref(), Some("NOT_SERVING"));
    blocker.rollback().await.unwrap();
    loop {
        assert!(tokio::time::Instant::now() < deadline, "never SERVING after the migrations");
        if status().await.as_deref() == Some("SERVING") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `serve` on `addr` (not waited for), with `env` on top of the usual.
fn spawn_serve_on(url: &str, key: &str, addr: &str, env: &[(&str, &str)]) -> tokio::process::Child {
    tokio::process::Command::new(binary())
        .arg("serve")
        .env("ML_CONNECTOR_DATABASE_URL", url)
        .env("ML_CONNECTOR_MASTER_KEY", key)
        .env("ML_CONNECTOR_ADMIN_TOKEN", TOKEN)
        .env("ML_CONNECTOR_GRPC_ADDR", addr)
        .env("ML_CONNECTOR_HTTP_ADDR", "127.0.0.1:0")
        .env("ML_CONNECTOR_METRICS_ADDR", "127.0.0.1:0")
        .env("ML_CONNECTOR_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Whether the server has closed `conn`: a read sees the end (or a reset) rather than bytes.
/// Whatever the server sends first (its HTTP/2 settings) is read past.
async fn closed_by_server(conn: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

/// A connection that sends nothing, and one that drips a valid HTTP/2 start a byte at a
/// time, are both closed by the host (here after a header timeout of one second); a real
/// client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_closes_connections_that_send_nothing_or_drip() {
    use tokio::io::AsyncWriteExt;
    let db = fresh_db("sqlite").await;
    let host = serve(
        &db.url,
        &generate_master_key(),
        &[
            ("ML_CONNECTOR_GRPC_HEADER_TIMEOUT_SECONDS", "1"),
            ("ML_CONNECTOR_GRPC_IDLE_TIMEOUT_SECONDS", "1"),
        ],
    )
    .await;
    // "Eventually" only: without the timeout neither connection would ever be closed.
    let eventually = Duration::from_secs(30);
    let mut silent = tokio::net::TcpStream::connect(&host.addr).await.unwrap();
    let closed = tokio::time::timeout(eventually, closed_by_server(&mut silent)).await;
    assert!(closed.is_ok(), "a connection that sent nothing was still open after {eventually:?}");

    // The preface, then a SETTINGS frame announcing 16,380 bytes of settings, dripped: a
    // valid start that would take hours to finish.
    let mut drip: Vec<u8> = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    drip.extend([0x00, 0x3f, 0xfc, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00]);
    drip.extend(std::iter::repeat_n(0u8, 16_380));
    let dripper = tokio::net::TcpStream::connect(&host.addr).await.unwrap();
    let (mut read, mut write) = dripper.into_split();
    let dripping = tokio::spawn(async move {
        for b in drip {
            if write.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the whole frame was dripped without the host closing the connection");
    });
    let closed = tokio::time::timeout(eventually, async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a dripping connection was still open after {eventually:?}");
    dripping.abort();

    // A client that calls is served as before.
    let (ok, out, err) = grpcurl(
        &host.addr,
        &["-reflect-header", &format!("authorization: Bearer {TOKEN}")],
        "grpc.health.v1.Health/Check",
        None,
    )
    .await;
    assert!(ok && out.contains("SERVING"), "health after the slow clients: {out} {err}");
}

/// `Watch` streams are capped per host: one past the cap is refused with RESOURCE_EXHAUSTED
/// naming the limit; a consumer that goes gives its place back; an open stream is not idle
/// (the idle timeout, one second here, does not cut it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_past_the_cap_are_refused_and_open_ones_are_not_idle() {
    let db = fresh_db("sqlite").await;
    let host = serve(
        &db.url,
        &generate_master_key(),
        &[
            ("ML_CONNECTOR_WATCH_MAX_STREAMS", "2"),
            ("ML_CONNECTOR_GRPC_HEADER_TIMEOUT_SECONDS", "1"),
            ("ML_CONNECTOR_GRPC_IDLE_TIMEOUT_SECONDS", "1"),
        ],
    )
    .await;
    let store: Store = db.store.clone();
    let start = store.last_event_id().await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", host.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auth: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> = with_token;
    let mut client = pb::alerts_client::AlertsClient::with_interceptor(channel, auth);
    let first = watch_all(&mut client, start).await;
    let mut second = watch_all(&mut client, start).await;
    let request = pb::WatchRequest {
        after_id: start,
        tenant_id: String::new(),
    };
    let refused = client.watch(request.clone()).await.map(|_| ()).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("ML_CONNECTOR_WATCH_MAX_STREAMS") && refused.message().contains('2'),
        "the refusal names the limit: {}",
        refused.message()
    );

    // The first consumer goes: its place is given back (eventually), events or not.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut third = loop {
        match client.watch(request.clone()).await {
            Ok(s) => break s.into_inner(),
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < deadline, "a closed Watch never gave its place back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    };

    // Quiet for longer than the idle timeout: the streams stay open and get the next event.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let entry = NewAudit {
        kind: "test".into(),
        record_key: "R-1".into(),
        event: "after-quiet".into(),
        detail: json!({}),
    };
    store.append_audit("quiet", &[entry], chrono::Utc::now()).await.unwrap();
    let last = store.last_event_id().await.unwrap();
    for stream in [&mut second, &mut third] {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .expect("the event arrives")
                .expect("the stream is still open")
                .expect("the stream goes on");
            if let Some(pb::watch_message::Message::Event(e)) = m.message
                && e.id == last
            {
                break;
            }
        }
    }
}

/// Plaintext gRPC only on loopback: `serve` on a non-loopback address without TLS refuses
/// to start, naming the option; with ML_CONNECTOR_GRPC_ALLOW_PLAINTEXT it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_plaintext_grpc_off_loopback_unless_allowed() {
    let db = fresh_db("sqlite").await;
    let key = generate_master_key();
    let port = free_port();
    let everywhere = format!("0.0.0.0:{port}");
    let refused = spawn_serve_on(&db.url, &key, &everywhere, &[]);
    let out = tokio::time::timeout(Duration::from_secs(60), refused.wait_with_output())
        .await
        .expect("serve exits")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve started plaintext gRPC on {everywhere}");
    assert!(
        stderr.contains("ML_CONNECTOR_GRPC_ALLOW_PLAINTEXT") && stderr.contains("ML_CONNECTOR_GRPC_TLS_CERT"),
        "the error names the options: {stderr}"
    );
    assert!(stderr.lines().count() <= 3, "a short error: {stderr}");

    let _allowed = spawn_serve_on(&db.url, &key, &everywhere, &[("ML_CONNECTOR_GRPC_ALLOW_PLAINTEXT", "true")]);
    let local = format!("127.0.0.1:{port}");
    for _ in 0..600 {
        let (ok, out, _) = grpcurl(
            &local,
            &["-reflect-header", &format!("authorization: Bearer {TOKEN}")],
            "grpc.health.v1.Health/Check",
            None,
        )
        .await;
        if ok && out.contains("\"SERVING\"") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("serve with ML_CONNECTOR_GRPC_ALLOW_PLAINTEXT never served on {everywhere}");
}

/// Health checks, and calls the admin token refuses, do not count as activity: a client that
/// makes only those, however often, loses its connection at the header timeout (observed as
/// the client having to connect again), while an admitted call keeps its connection.
#[tokio::test]
async fn health_checks_and_refused_calls_do_not_keep_a_connection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let db = fresh_db("sqlite").await;
    let key = generate_master_key();
    let timeouts = [
        ("ML_CONNECTOR_GRPC_HEADER_TIMEOUT_SECONDS", "1"),
        ("ML_CONNECTOR_GRPC_IDLE_TIMEOUT_SECONDS", "1"),
    ];
    let host = serve(&db.url, &key, &timeouts).await;
    // A channel that counts the TCP connections it had to open.
    let connect = || {
        let opened = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = opened.clone();
        let addr = host.addr.clone();
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            counter.fetch_add(1, Ordering::SeqCst);
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.map(hyper_util::rt::TokioIo::new) }
        });
        let endpoint = tonic::transport::Endpoint::from_static("http://grpc.test");
        let channel = endpoint.connect_with_connector_lazy(connector);
        (channel, opened)
    };
    // Health only, every 250 ms for 4 s.
    let (channel, opened) = connect();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for _ in 0..16 {
        let _ = health.check(tonic_health::pb::HealthCheckRequest::default()).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let health_connections = opened.load(Ordering::SeqCst);
    // Refused calls (a wrong token), the same way.
    let (channel, refused_opened) = connect();
    let wrong = |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", "Bearer wrong".parse().unwrap());
        Ok(req)
    };
    let mut tenants = pb::tenants_client::TenantsClient::with_interceptor(channel, wrong);
    for _ in 0..16 {
        let r = tenants.list_tenants(pb::ListTenantsRequest::default()).await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::Unauthenticated);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let refused_connections = refused_opened.load(Ordering::SeqCst);
    // Admitted calls, the same way: one connection throughout.
    let (channel, admitted_opened) = connect();
    let right = |mut req: tonic::Request<()>| {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        Ok(req)
    };
    let mut tenants = pb::tenants_client::TenantsClient::with_interceptor(channel, right);
    for _ in 0..16 {
        tenants.list_tenants(pb::ListTenantsRequest::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let admitted_connections = admitted_opened.load(Ordering::SeqCst);
    eprintln!("connections opened over 4 s: health {health_connections}, refused {refused_connections}, admitted {admitted_connections}");
    assert!(health_connections > 1, "health checks kept their connection");
    assert!(refused_connections > 1, "refused calls kept their connection");
    assert_eq!(admitted_connections, 1, "admitted calls every 250 ms keep one connection");
}
