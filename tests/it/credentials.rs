//! Credentials never follow a URL elsewhere (issue 22, item 3) and `TestConnection` tests
//! what a poll needs (item 4): a base URL moved to another server gets no credential, a
//! redirect is not followed, plain http:// only to loopback unless the tenant allows it,
//! answers read up to a cap, values of the previous release re-sealed with their origin;
//! a wrong domain and a role that reaches nobody fail the connection test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::response::IntoResponse;
use base64::Engine as _;
use ml_connector::outbound;
use ml_connector::poller::{SECRET_QAD_PASSWORD, SECRET_QAD_USER};
use ml_connector::qad::{QadClient, QadConfig, QadError, RetryPolicy};
use ml_connector::secrets::{Keyring, Origin, SecretString, generate_master_key};
use ml_connector::twilio::{TwilioClient, TwilioConfig};
use ml_connector::twilio_sandbox::{TwilioSandbox, TwilioSandboxConfig};
use ml_connector_tests::{Qad, engines, fresh_db, harness, morning};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::grpc::TOKEN;

/// Everything a server elsewhere was sent: request lines, headers (Basic decoded) and bodies.
#[derive(Clone, Default)]
struct Heard(Arc<Mutex<String>>);

impl Heard {
    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

async fn record(heard: &Heard, req: Request) -> (String, String) {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let mut text = format!("{} {}\n", parts.method, parts.uri);
    for (name, value) in &parts.headers {
        let value = value.to_str().unwrap_or("");
        text.push_str(&format!("{name}: {value}\n"));
        if let Some(b64) = value.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
            text.push_str(&format!("basic decoded: {}\n", String::from_utf8_lossy(&decoded)));
        }
    }
    text.push_str(&String::from_utf8_lossy(&body));
    text.push('\n');
    heard.0.lock().unwrap().push_str(&text);
    (parts.uri.path().to_string(), parts.uri.query().unwrap_or("").to_string())
}

/// A server elsewhere that looks like QAD enough to be sent a password: it hands out a
/// client id, so a client that followed a redirect to it would go on to post the password.
async fn elsewhere() -> (String, Heard) {
    let heard = Heard::default();
    let h = heard.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let h = h.clone();
        async move {
            let (path, _) = record(&h, req).await;
            if path.ends_with("/securityControl") {
                axum::Json(json!({"data": {"securityControls": [{"clientId": "thief"}]}})).into_response()
            } else {
                axum::Json(json!({"access_token": "t", "data": [], "sid": "AC"})).into_response()
            }
        }
    });
    (spawn(app).await, heard)
}

/// A server that answers every request with a 307 to the same path on `to`.
async fn redirector(to: String) -> String {
    let app = axum::Router::new().fallback(move |req: Request| {
        let to = to.clone();
        async move {
            let pq = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            (axum::http::StatusCode::TEMPORARY_REDIRECT, [("location", format!("{to}{pq}"))]).into_response()
        }
    });
    spawn(app).await
}

async fn spawn(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// `serve` with the admin token, waited for until gRPC health says SERVING.
async fn serve(url: &str, key: &str) -> crate::grpc::Host {
    crate::grpc::serve(url, key, &[]).await
}

async fn grpcurl(addr: &str, method: &str, data: Option<&Value>) -> (bool, String, String) {
    let auth = format!("authorization: Bearer {TOKEN}");
    let mut cmd = tokio::process::Command::new("grpcurl");
    cmd.args(["-plaintext", "-H", &auth]);
    if let Some(d) = data {
        cmd.args(["-d", &d.to_string()]);
    }
    let out = cmd.arg(addr).arg(method).output().await.expect("grpcurl on PATH");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn call(addr: &str, method: &str, data: Value) -> Value {
    let (ok, out, err) = grpcurl(addr, &format!("mlconnector.v1.Tenants/{method}"), Some(&data)).await;
    assert!(ok, "{method} {data}: {err}");
    serde_json::from_str(&out).unwrap()
}

async fn refused(addr: &str, method: &str, data: Value) -> String {
    let (ok, out, err) = grpcurl(addr, &format!("mlconnector.v1.Tenants/{method}"), Some(&data)).await;
    assert!(!ok, "{method} {data} should be refused: {out}");
    err
}

fn check<'a>(test: &'a Value, name: &str) -> &'a Value {
    test["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {test}"))
}

fn statuses(tenant: &Value) -> Vec<(String, String)> {
    tenant["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["field"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Item 3: UpdateTenant moves both base URLs to a server elsewhere; TestConnection sends it
/// nothing that carries a credential, and every answer says the credentials were set for
/// another origin, until they are set again. A QAD that redirects the login elsewhere gets
/// no password there either. Plain http:// off loopback only when the tenant allows it.
#[tokio::test]
async fn credentials_never_follow_a_moved_or_redirecting_url_elsewhere() {
    let qad = Qad::start().await;
    let twilio = TwilioSandbox::new(TwilioSandboxConfig::default());
    let (twilio_base, _t) = twilio.clone().spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let tw = twilio.config();
    let db = fresh_db("sqlite").await;
    let host = serve(&db.url, &generate_master_key()).await;
    let addr = host.addr.as_str();
    let (domain, entity) = qad.config.workspace.split_once('_').unwrap();
    let tenant = json!({
        "id": "acme", "name": "Acme",
        "qad": {"base_url": qad.base, "domain": domain, "entity": entity},
        "twilio": {"account_sid": tw.account_sid, "from_number": "+13125550100", "base_url": twilio_base},
        "schedule": {"every_seconds": 86400, "time_zone": "America/Chicago"},
    });
    call(addr, "CreateTenant", json!({"tenant": tenant})).await;
    let secrets = [qad.config.password.as_str(), tw.api_key_secret.as_str(), tw.auth_token.as_str()];
    call(
        addr,
        "SetQadCredentials",
        json!({"tenant_id": "acme", "username": qad.config.user, "password": qad.config.password}),
    )
    .await;
    let set = call(
        addr,
        "SetTwilioCredentials",
        json!({"tenant_id": "acme", "api_key_sid": tw.api_key_sid, "api_key_secret": tw.api_key_secret, "auth_token": tw.auth_token}),
    )
    .await;
    assert!(statuses(&set).iter().all(|(_, s)| s == "CREDENTIAL_STATUS_SET"), "{set}");
    let qad_origin = Origin::of(&qad.base).unwrap();
    let pw = set["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["field"] == "qad.password")
        .unwrap();
    assert_eq!(pw["origin"], qad_origin.as_str(), "{set}");

    // Moved elsewhere (another port is another origin).
    let (thief, heard) = elsewhere().await;
    let moved = call(
        addr,
        "UpdateTenant",
        json!({"tenant": {"id": "acme", "qad": {"base_url": format!("{thief}/qad"), "domain": domain, "entity": entity},
            "twilio": {"account_sid": tw.account_sid, "from_number": "+13125550100", "base_url": thief}},
            "update_mask": ["qad", "twilio"]}),
    )
    .await;
    assert!(
        statuses(&moved)
            .iter()
            .all(|(_, s)| s == "CREDENTIAL_STATUS_SET_FOR_ANOTHER_ORIGIN"),
        "the answer says the credentials are not for the new origin: {moved}"
    );
    let test = call(addr, "TestConnection", json!({"tenant_id": "acme"})).await;
    assert_eq!(test["ok"], Value::Null, "{test}");
    let said = heard.text();
    for s in secrets {
        assert!(!said.contains(s), "a credential reached the server elsewhere: {said}");
    }
    assert!(
        check(&test, "qad.login")["detail"]
            .as_str()
            .unwrap()
            .contains("set for another origin"),
        "{test}"
    );
    assert!(
        check(&test, "twilio.api_key")["detail"].as_str().unwrap().contains("was set for"),
        "{test}"
    );
    // Set again, for the new origin: now they are the new server's to receive.
    let again = call(
        addr,
        "SetQadCredentials",
        json!({"tenant_id": "acme", "username": "u", "password": "new-password-for-elsewhere"}),
    )
    .await;
    let qad_status: Vec<_> = statuses(&again).into_iter().filter(|(f, _)| f.starts_with("qad.")).collect();
    assert!(qad_status.iter().all(|(_, s)| s == "CREDENTIAL_STATUS_SET"), "{again}");
    call(addr, "TestConnection", json!({"tenant_id": "acme"})).await;
    assert!(heard.text().contains("new-password-for-elsewhere"), "set again, it is used");
    assert!(!heard.text().contains(&qad.config.password));

    // A QAD whose login answers 307 elsewhere: nothing is followed.
    let (thief2, heard2) = elsewhere().await;
    let bouncing = redirector(thief2).await;
    call(
        addr,
        "UpdateTenant",
        json!({"tenant": {"id": "acme", "qad": {"base_url": bouncing, "domain": domain, "entity": entity}}, "update_mask": ["qad"]}),
    )
    .await;
    call(
        addr,
        "SetQadCredentials",
        json!({"tenant_id": "acme", "username": "u", "password": "password-for-the-bouncer"}),
    )
    .await;
    let test = call(addr, "TestConnection", json!({"tenant_id": "acme"})).await;
    assert_eq!(check(&test, "qad.login")["ok"], Value::Null, "{test}");
    assert!(heard2.text().is_empty(), "a redirect was followed: {}", heard2.text());

    // Plain http:// off loopback only when the tenant says so, and the answer shows it.
    let plain = json!({"id": "acme", "qad": {"base_url": "http://qad.example.com/clouderp", "domain": domain, "entity": entity}});
    let err = refused(addr, "UpdateTenant", json!({"tenant": plain, "update_mask": ["qad"]})).await;
    assert!(
        err.contains("InvalidArgument") && err.contains("tenant.qad.base_url") && err.contains("allow_plain_http"),
        "{err}"
    );
    let mut allowed = plain.clone();
    allowed["allow_plain_http"] = json!(true);
    let t = call(
        addr,
        "UpdateTenant",
        json!({"tenant": allowed, "update_mask": ["qad", "allow_plain_http"]}),
    )
    .await;
    assert_eq!(t["allowPlainHttp"], true, "{t}");
    assert_eq!(call(addr, "GetTenant", json!({"id": "acme"})).await["allowPlainHttp"], true);
}

/// Item 4: a wrong domain logs in but cannot browse; a role that maps to nobody is named.
#[tokio::test]
async fn test_connection_browses_each_stream_in_the_workspace_and_reports_roles() {
    let qad = Qad::start().await;
    let db = fresh_db("sqlite").await;
    let host = serve(&db.url, &generate_master_key()).await;
    let addr = host.addr.as_str();
    let (domain, entity) = qad.config.workspace.split_once('_').unwrap();
    let profile = json!({"roles": {"ap_clerk": [{"employee": "AP-01"}], "plant_manager": [{"employee": "PM-01"}]}});
    let tenant = json!({
        "id": "acme", "name": "Acme",
        "qad": {"base_url": qad.base, "domain": "WRONG", "entity": entity},
        "schedule": {"every_seconds": 86400, "time_zone": "America/Chicago"},
        "profile_json": profile.to_string(),
    });
    call(addr, "CreateTenant", json!({"tenant": tenant})).await;
    call(
        addr,
        "SetQadCredentials",
        json!({"tenant_id": "acme", "username": qad.config.user, "password": qad.config.password}),
    )
    .await;
    let test = call(addr, "TestConnection", json!({"tenant_id": "acme"})).await;
    assert_eq!(test["ok"], Value::Null, "a wrong domain fails the test: {test}");
    assert_eq!(check(&test, "qad.login")["ok"], true, "{test}");
    for stream in ["receipts", "purchase_orders", "invoices"] {
        let c = check(&test, &format!("qad.browse.{stream}"));
        assert_eq!(c["ok"], Value::Null, "{test}");
        let detail = c["detail"].as_str().unwrap();
        assert!(
            detail.contains("403") && detail.contains("Access is denied") && detail.contains("WRONG_"),
            "{detail}"
        );
    }

    let right = json!({"id": "acme", "qad": {"base_url": qad.base, "domain": domain, "entity": entity},
        "profile_json": json!({"roles": {"ap_clerk": [{"employee": "AP-01"}], "plant_manager": [{"employee": "NOBODY-9"}]}}).to_string()});
    call(
        addr,
        "UpdateTenant",
        json!({"tenant": right, "update_mask": ["qad", "profile_json"]}),
    )
    .await;
    let test = call(addr, "TestConnection", json!({"tenant_id": "acme"})).await;
    for stream in ["receipts", "purchase_orders", "invoices"] {
        assert_eq!(check(&test, &format!("qad.browse.{stream}"))["ok"], true, "{test}");
    }
    let roles = check(&test, "qad.roles");
    assert_eq!(roles["ok"], Value::Null, "{test}");
    let detail = roles["detail"].as_str().unwrap();
    assert!(
        detail.contains("plant_manager maps to nobody") && detail.contains("NOBODY-9") && !detail.contains("ap_clerk"),
        "{detail}"
    );
    call(
        addr,
        "UpdateTenant",
        json!({"tenant": {"id": "acme", "profile_json": profile.to_string()}, "update_mask": ["profile_json"]}),
    )
    .await;
    let test = call(addr, "TestConnection", json!({"tenant_id": "acme"})).await;
    assert_eq!(check(&test, "qad.roles")["ok"], true, "{test}");
}

/// The previous release's sealing, by hand: associated data without an origin.
fn seal_v1(master_key: &str, tenant: &str, field: &str, value: &str) -> (String, Vec<u8>, Vec<u8>) {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use sha2::{Digest, Sha256};
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(master_key.strip_prefix("mlk1.").unwrap())
        .unwrap();
    let key_id = hex::encode(&Sha256::new().chain_update(b"ml-connector key id\0").chain_update(&bytes).finalize()[..4]);
    let cipher = chacha20poly1305::XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&bytes));
    let nonce = [7u8; 24];
    let aad = format!("ml-connector/secret/v1\0{tenant}\0{field}\0{key_id}");
    let ct = cipher
        .encrypt(
            chacha20poly1305::XNonce::from_slice(&nonce),
            Payload {
                msg: value.as_bytes(),
                aad: aad.as_bytes(),
            },
        )
        .unwrap();
    (key_id, nonce.to_vec(), ct)
}

fn blob(engine: &str, b: &[u8]) -> String {
    match engine {
        "sqlite" => format!("X'{}'", hex::encode(b)),
        _ => format!("decode('{}', 'hex')", hex::encode(b)),
    }
}

/// A database the previous release wrote: its credentials (no origin) still open, are
/// re-sealed with the tenant's current origin (`serve` does it at start), and `rekey` keeps
/// the origin a value was set for.
#[tokio::test]
async fn credentials_of_the_previous_release_are_resealed_with_their_origin() {
    for engine in engines() {
        let h = harness(engine).await;
        let store = &h.db.store;
        let key = generate_master_key();
        let keys = Keyring::new(&key, &[]).unwrap();
        store.execute_raw("DELETE FROM secrets").await.unwrap();
        for (field, value) in [(SECRET_QAD_USER, "old-user"), (SECRET_QAD_PASSWORD, "old-password")] {
            let (key_id, nonce, ct) = seal_v1(&key, &h.tenant.id, field, value);
            let sql = format!(
                "INSERT INTO secrets (tenant_id, field, key_id, nonce, ciphertext, set_at) VALUES ('{}', '{field}', '{key_id}', {}, {}, 0)",
                h.tenant.id,
                blob(engine, &nonce),
                blob(engine, &ct)
            );
            store.execute_raw(&sql).await.unwrap();
        }
        let qad = Origin::of(&h.tenant.qad_base_url).unwrap();
        assert_eq!(
            store.secret(&keys, &h.tenant.id, SECRET_QAD_PASSWORD, &qad).await.unwrap(),
            None,
            "{engine}: not yet bound"
        );
        assert_eq!(store.seal_legacy_secrets(&keys, morning()).await.unwrap(), 2, "{engine}");
        assert_eq!(store.seal_legacy_secrets(&keys, morning()).await.unwrap(), 0, "{engine}: once");
        let pw = store.secret(&keys, &h.tenant.id, SECRET_QAD_PASSWORD, &qad).await.unwrap().unwrap();
        assert_eq!(pw.expose(), "old-password", "{engine}");
        let states = store.secret_states(&h.tenant.id).await.unwrap();
        assert!(
            states.iter().all(|s| s.origin.as_deref() == Some(qad.as_str())),
            "{engine}: {states:?}"
        );
        // Rotation re-seals under the new key and keeps the origin, wherever the URL is now.
        let mut moved = store.tenant_settings(&h.tenant.id).await.unwrap();
        moved.tenant.qad_base_url = "https://elsewhere.example/qad".into();
        store.update_tenant(&moved, morning()).await.unwrap();
        let rotated = Keyring::new(&generate_master_key(), std::slice::from_ref(&key)).unwrap();
        assert_eq!(store.reseal_secrets(&rotated, morning()).await.unwrap(), 2, "{engine}");
        let elsewhere = Origin::of("https://elsewhere.example/qad").unwrap();
        assert_eq!(
            store.secret(&rotated, &h.tenant.id, SECRET_QAD_PASSWORD, &elsewhere).await.unwrap(),
            None
        );
        let kept = store
            .secret(&rotated, &h.tenant.id, SECRET_QAD_PASSWORD, &qad)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept.expose(), "old-password", "{engine}: rekey keeps the origin");
    }
    // And `serve` does it at start: a previous release's database, opened by this one.
    let h = harness("sqlite").await;
    let key = generate_master_key();
    h.db.store.execute_raw("DELETE FROM secrets").await.unwrap();
    let (key_id, nonce, ct) = seal_v1(&key, &h.tenant.id, SECRET_QAD_PASSWORD, "old-password");
    let sql = format!(
        "INSERT INTO secrets (tenant_id, field, key_id, nonce, ciphertext, set_at) VALUES ('{}', 'qad.password', '{key_id}', {}, {}, 0)",
        h.tenant.id,
        blob("sqlite", &nonce),
        blob("sqlite", &ct)
    );
    h.db.store.execute_raw(&sql).await.unwrap();
    let host = serve(&h.db.url, &key).await;
    let t = call(&host.addr, "GetTenant", json!({"id": h.tenant.id})).await;
    assert_eq!(
        statuses(&t),
        [("qad.password".to_string(), "CREDENTIAL_STATUS_SET".to_string())],
        "{t}"
    );
}

/// A server that answers the QAD login, then every other request with a body of `size`
/// bytes, chunked (no length said up front) or with its length.
async fn oversize(size: usize, chunked: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).await.unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let small = if path.contains("securityControl") {
                    Some(json!({"data": {"securityControls": [{"clientId": "c"}]}}).to_string())
                } else if path.contains("oauth/token") {
                    Some(json!({"access_token": "t"}).to_string())
                } else {
                    None
                };
                if let Some(body) = small {
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                    return;
                }
                let pad = vec![b'x'; 1 << 20];
                if chunked {
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = conn.write_all(b"c\r\n{\"data\":[],\"\r\n").await;
                    for _ in 0..size >> 20 {
                        let chunk = format!("{:x}\r\n", pad.len());
                        if conn.write_all(chunk.as_bytes()).await.is_err()
                            || conn.write_all(&pad).await.is_err()
                            || conn.write_all(b"\r\n").await.is_err()
                        {
                            return;
                        }
                    }
                    let _ = conn.write_all(b"5\r\n\":1}\n\r\n0\r\n\r\n").await;
                } else {
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{{\"data\":[],\"",
                        size + 17
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                    for _ in 0..size >> 20 {
                        if conn.write_all(&pad).await.is_err() {
                            return;
                        }
                    }
                    let _ = conn.write_all(b"\":1}\n").await;
                }
            });
        }
    });
    base
}

/// Every answer from QAD or Twilio is read up to a cap (QAD 16 MiB, Twilio 8 MiB), whether
/// its length is said up front or not; below the cap it is read as before.
#[tokio::test]
async fn answers_from_qad_and_twilio_are_read_up_to_a_cap() {
    ml_connector_tests::init();
    let http = outbound::client(Duration::from_secs(30)).unwrap();
    let qad = |base: String| {
        QadClient::new(
            http.clone(),
            QadConfig {
                base_url: base,
                workspace: "D_E".into(),
                user: "u".into(),
                password: SecretString::new("p"),
                page_size: 10,
                retry: RetryPolicy {
                    attempts: 1,
                    min_delay: Duration::from_millis(1),
                    max_delay: Duration::from_millis(1),
                },
            },
        )
    };
    for chunked in [false, true] {
        let err = qad(oversize(17 << 20, chunked).await).browse("b", &[]).await.unwrap_err();
        assert!(
            matches!(&err, QadError::Body { source: outbound::BodyError::TooLarge { cap }, .. } if *cap == ml_connector::qad::MAX_BODY_BYTES),
            "chunked {chunked}: {err}"
        );
        let rows = qad(oversize(3 << 20, chunked).await).browse("b", &[]).await.unwrap();
        assert!(rows.is_empty(), "below the cap it is read");
        let twilio = TwilioClient::new(
            http.clone(),
            TwilioConfig {
                base_url: oversize(9 << 20, chunked).await,
                account_sid: "AC".into(),
                api_key_sid: "SK".into(),
                api_key_secret: SecretString::new("s"),
            },
        );
        let err = twilio.list_messages("+13125550100", "+13125550101").await.unwrap_err();
        assert!(err.contains("cap"), "chunked {chunked}: {err}");
    }
}

/// A database exactly as the previous release left it (its migrations only, up to 0009, a
/// tenant and its credentials sealed without an origin), opened by this release: the
/// migrations after it apply, and the credentials open for the tenant's current origin once
/// re-sealed, as `serve` does at start, and for no other.
#[tokio::test]
async fn a_database_the_previous_release_wrote_is_upgraded_and_its_credentials_bound() {
    const PREVIOUS_RELEASE: i64 = 9;
    for engine in engines() {
        // A tenant's row as this release writes it: its columns the previous release had.
        let h = harness(engine).await;
        let columns = "SELECT id, name, qad_base_url, qad_domain, qad_entity, schedule, profile FROM tenants";
        type Row = (String, String, String, String, String, String, String);
        let r: Row = match engine {
            "sqlite" => sqlx::query_as(columns)
                .fetch_one(&sqlx::SqlitePool::connect(&h.db.url).await.unwrap())
                .await
                .unwrap(),
            _ => sqlx::query_as(columns)
                .fetch_one(&sqlx::PgPool::connect(&h.db.url).await.unwrap())
                .await
                .unwrap(),
        };
        let row = [r.0, r.1, r.2, r.3, r.4, r.5, r.6];
        let (url, _dir) = ml_connector_tests::empty_db(engine).await;
        let old = ml_connector_tests::migrations_up_to(engine, PREVIOUS_RELEASE).await;
        let key = generate_master_key();
        let (key_id, nonce, ct) = seal_v1(&key, &row[0], SECRET_QAD_PASSWORD, "old-password");
        let tenant = "INSERT INTO tenants (id, name, qad_base_url, qad_domain, qad_entity, schedule, profile, created_at, updated_at)
                      VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0)";
        let secret = "INSERT INTO secrets (tenant_id, field, key_id, nonce, ciphertext, set_at) VALUES ($1, $2, $3, $4, $5, 0)";
        macro_rules! as_the_previous_release_left_it {
            ($pool:expr) => {{
                let pool = $pool;
                old.run(&pool).await.unwrap();
                let mut insert = sqlx::query(tenant);
                for v in &row {
                    insert = insert.bind(v.clone());
                }
                insert.execute(&pool).await.unwrap();
                sqlx::query(secret)
                    .bind(&row[0])
                    .bind(SECRET_QAD_PASSWORD)
                    .bind(&key_id)
                    .bind(&nonce)
                    .bind(&ct)
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }};
        }
        match engine {
            "sqlite" => {
                let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
                as_the_previous_release_left_it!(sqlx::SqlitePool::connect_with(opts.create_if_missing(true)).await.unwrap())
            }
            _ => as_the_previous_release_left_it!(sqlx::PgPool::connect(&url).await.unwrap()),
        }
        let store = ml_connector::store::Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let keys = Keyring::new(&key, &[]).unwrap();
        assert_eq!(store.seal_legacy_secrets(&keys, morning()).await.unwrap(), 1, "{engine}");
        let qad = Origin::of(&row[2]).unwrap();
        let pw = store.secret(&keys, &row[0], SECRET_QAD_PASSWORD, &qad).await.unwrap().unwrap();
        assert_eq!(pw.expose(), "old-password", "{engine}");
        let elsewhere = Origin::of("https://elsewhere.example/qad").unwrap();
        assert_eq!(
            store.secret(&keys, &row[0], SECRET_QAD_PASSWORD, &elsewhere).await.unwrap(),
            None,
            "{engine}"
        );
        store.close().await;
    }
}
