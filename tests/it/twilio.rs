//! The project's Twilio client against the Twilio sandbox, one case per error class of
//! `twilio.md`; status callbacks signed by the sandbox and checked by the official `twilio`
//! library (an independent peer) as well as by our own verifier.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use ml_connector::core::dispatch::SendOutcome;
use ml_connector::core::signature;
use ml_connector::secrets::SecretString;
use ml_connector::twilio::{Call, Sms, TwilioClient, TwilioConfig};
use ml_connector::twilio_sandbox::{TwilioFaults, TwilioSandbox, TwilioSandboxConfig};

async fn sandbox() -> (TwilioSandbox, String) {
    ml_connector_tests::init();
    let sb = TwilioSandbox::new(TwilioSandboxConfig::default());
    let (base, _task) = sb.clone().spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (sb, base)
}

fn client(sb: &TwilioSandbox, base: &str, secret: &str) -> TwilioClient {
    let c = sb.config();
    TwilioClient::new(
        reqwest::Client::new(),
        TwilioConfig {
            base_url: base.into(),
            account_sid: c.account_sid,
            api_key_sid: c.api_key_sid,
            api_key_secret: SecretString::new(secret),
        },
    )
}

fn sms(to: &str, callback: &str) -> Sms {
    Sms {
        to: to.into(),
        from: "+13125550100".into(),
        body: "Invoice SI-1 is held. Reply SEEN K7QM2X".into(),
        status_callback: callback.into(),
    }
}

type Seen = Arc<Mutex<Vec<(HeaderMap, Vec<(String, String)>)>>>;

/// A webhook receiver standing in for the host's HTTP side.
async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/twilio/lakeshore/messages/status",
            post(|State(seen): State<Seen>, headers: HeaderMap, body: axum::body::Bytes| async move {
                seen.lock().unwrap().push((headers, serde_urlencoded::from_bytes(&body).unwrap()));
                axum::http::StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/twilio/lakeshore/calls/status",
            post(|State(seen): State<Seen>, headers: HeaderMap, body: axum::body::Bytes| async move {
                seen.lock().unwrap().push((headers, serde_urlencoded::from_bytes(&body).unwrap()));
                axum::http::StatusCode::NO_CONTENT
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

async fn wait_for(seen: &Seen, n: usize) {
    for _ in 0..200 {
        if seen.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("expected {n} callbacks, got {}", seen.lock().unwrap().len());
}

/// The official Twilio helper library's verdict on a signed request.
fn official_validator(token: &str, url: &str, params: &[(String, String)], sig: &str) -> bool {
    let script = "import json,sys\nfrom twilio.request_validator import RequestValidator\n\
                  a=json.loads(sys.argv[1])\nprint(RequestValidator(a['token']).validate(a['url'], dict(a['params']), a['sig']))";
    let arg = serde_json::json!({"token": token, "url": url, "params": params, "sig": sig}).to_string();
    let out = std::process::Command::new("python3")
        .args(["-c", script, &arg])
        .output()
        .expect("python3 with the twilio library (cargo xtask test installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim() == "True"
}

#[tokio::test]
async fn an_sms_is_created_once_and_its_status_callbacks_are_signed() {
    let (sb, base) = sandbox().await;
    let (hooks, seen) = receiver().await;
    let url = format!("{hooks}/twilio/lakeshore/messages/status?delivery=42");
    let out = client(&sb, &base, &sb.config().api_key_secret)
        .send_sms(&sms("+13125550120", &url))
        .await;
    let SendOutcome::Accepted { sid } = out else { panic!("{out:?}") };
    assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");
    assert_eq!(sb.stats().messages_created, 1);
    wait_for(&seen, 2).await;
    let token = sb.config().auth_token;
    for (headers, params) in seen.lock().unwrap().iter() {
        let sig = headers["x-twilio-signature"].to_str().unwrap();
        assert!(signature::verify(&token, &url, params, b"", sig));
        assert!(official_validator(&token, &url, params, sig), "the official library accepts it");
        assert!(!official_validator("another-token", &url, params, sig));
        assert!(params.iter().any(|(k, v)| k == "MessageSid" && v == &sid));
    }
}

#[tokio::test]
async fn a_call_is_placed_with_twiml_and_reports_each_status_with_a_sequence_number() {
    let (sb, base) = sandbox().await;
    let (hooks, seen) = receiver().await;
    let url = format!("{hooks}/twilio/lakeshore/calls/status?delivery=7");
    let call = Call {
        to: "+13125550140".into(),
        from: "+13125550100".into(),
        twiml: "<Response><Say>Hi</Say></Response>".into(),
        status_callback: url,
    };
    let out = client(&sb, &base, &sb.config().api_key_secret).place_call(&call).await;
    assert!(matches!(&out, SendOutcome::Accepted { sid } if sid.starts_with("CA")), "{out:?}");
    wait_for(&seen, 4).await;
    let seqs: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, p)| p.iter().find(|(k, _)| k == "SequenceNumber").unwrap().1.clone())
        .collect();
    assert_eq!(seqs, ["0", "1", "2", "3"]);
}

#[tokio::test]
async fn every_error_class_is_told_apart() {
    let (sb, base) = sandbox().await;
    let good = client(&sb, &base, &sb.config().api_key_secret);
    let cb = "http://127.0.0.1:9/unused";
    // Permanent codes of the spec's magic numbers, 21610 marking an opt-out.
    for (to, code, opted_out) in [
        ("+15005550001", 21211, false),
        ("+15005550002", 21612, false),
        ("+15005550003", 21408, false),
        ("+15005550004", 21610, true),
        ("+15005550009", 21614, false),
    ] {
        let out = good.send_sms(&sms(to, cb)).await;
        assert!(
            matches!(&out, SendOutcome::Permanent { code: Some(c), opted_out: o, .. } if *c == code && *o == opted_out),
            "{to}: {out:?}"
        );
    }
    let out = client(&sb, &base, "wrong secret").send_sms(&sms("+13125550120", cb)).await;
    assert!(matches!(out, SendOutcome::Permanent { code: Some(20003), .. }), "{out:?}");
    let long = Sms {
        body: "x".repeat(1601),
        ..sms("+13125550120", cb)
    };
    assert!(matches!(
        good.send_sms(&long).await,
        SendOutcome::Permanent { code: Some(21617), .. }
    ));
    let stranger = Sms {
        from: "+13125559999".into(),
        ..sms("+13125550120", cb)
    };
    assert!(matches!(
        good.send_sms(&stranger).await,
        SendOutcome::Permanent { code: Some(21606), .. }
    ));
    // 429 with and without Retry-After: not processed.
    sb.set_faults(TwilioFaults {
        throttle_share: 1.0,
        retry_after: Some(3),
        ..Default::default()
    });
    assert_eq!(
        good.send_sms(&sms("+13125550120", cb)).await,
        SendOutcome::Throttled {
            retry_after: Some(Duration::from_secs(3))
        }
    );
    sb.set_faults(TwilioFaults {
        throttle_share: 1.0,
        ..Default::default()
    });
    assert_eq!(
        good.send_sms(&sms("+13125550120", cb)).await,
        SendOutcome::Throttled { retry_after: None }
    );
    // 5xx: unknown, whether or not it was processed.
    let before = sb.stats().messages_created;
    sb.set_faults(TwilioFaults {
        fail_share: 1.0,
        fail_processed: true,
        ..Default::default()
    });
    assert!(matches!(good.send_sms(&sms("+13125550120", cb)).await, SendOutcome::Unknown { .. }));
    assert_eq!(sb.stats().messages_created, before + 1, "processed although it answered 503");
    sb.set_faults(TwilioFaults {
        fail_share: 1.0,
        fail_processed: false,
        ..Default::default()
    });
    assert!(matches!(good.send_sms(&sms("+13125550120", cb)).await, SendOutcome::Unknown { .. }));
    assert_eq!(sb.stats().messages_created, before + 1);
    // Nobody listening: nothing was sent.
    let nowhere = client(&sb, "http://127.0.0.1:9", &sb.config().api_key_secret);
    assert!(matches!(
        nowhere.send_sms(&sms("+13125550120", cb)).await,
        SendOutcome::Unreachable { .. }
    ));
    // Reconciliation: the list shows what reached Twilio for a recipient.
    sb.set_faults(TwilioFaults::default());
    let listed = good.list_messages("+13125550120", "+13125550100").await.unwrap();
    assert_eq!(listed.len(), 1, "only the processed 503 created a message to this number");
}

#[tokio::test]
async fn a_message_waiting_in_the_senders_queue_is_listed_by_creation_not_by_date_sent() {
    let (sb, base) = sandbox().await;
    let c = client(&sb, &base, &sb.config().api_key_secret);
    let cb = "https://hooks.example.com/twilio/lakeshore/messages/status?delivery=1";
    sb.set_faults(TwilioFaults {
        queue_messages: true,
        ..Default::default()
    });
    assert!(matches!(c.send_sms(&sms("+13125550120", cb)).await, SendOutcome::Accepted { .. }));
    let cfg = sb.config();
    let by_date_sent = |date: String| {
        let (url, cfg) = (format!("{base}/2010-04-01/Accounts/{}/Messages.json", cfg.account_sid), cfg.clone());
        async move {
            let v: serde_json::Value = reqwest::Client::new()
                .get(url)
                .basic_auth(&cfg.api_key_sid, Some(&cfg.api_key_secret))
                .query(&[("To", "+13125550120"), ("DateSent>", date.as_str())])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["messages"].as_array().unwrap().len()
        }
    };
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    // The trap: queued, it has no date_sent, so Twilio's DateSent filter does not show it.
    assert_eq!(by_date_sent(today.clone()).await, 0, "a queued message has no date_sent");
    let listed = c.list_messages("+13125550120", "+13125550100").await.unwrap();
    assert_eq!(listed.len(), 1, "the host's list reads by creation: the queued message is there");
    assert!(listed[0].created_at.is_some(), "{listed:?}");
    // Once the queue moves, it is sent and the filter shows it.
    sb.set_faults(TwilioFaults::default());
    assert_eq!(by_date_sent(today).await, 1);
    assert_eq!(by_date_sent("2999-01-01".into()).await, 0, "the filter is applied, not ignored");
}

/// Every request the host sent, judged by openapi-core against twilio_api_v2010.yaml.
fn judge(requests: &[ml_connector::twilio_sandbox::RawRequest]) -> Vec<String> {
    use std::io::Write;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let spec = root.join("tests/fixtures/twilio/twilio_api_v2010.yaml");
    let mut child = std::process::Command::new("python3")
        .arg(root.join("tests/openapi_check.py"))
        .arg(&spec)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with openapi-core (cargo xtask test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(requests).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

#[tokio::test]
async fn every_request_the_host_sends_is_valid_against_twilios_openapi_file() {
    let (sb, base) = sandbox().await;
    let c = client(&sb, &base, &sb.config().api_key_secret);
    let cb = "https://hooks.example.com/twilio/lakeshore/messages/status?delivery=1";
    assert!(matches!(c.send_sms(&sms("+13125550120", cb)).await, SendOutcome::Accepted { .. }));
    let twiml = ml_connector::core::twiml::voice(
        "Purchase order PO1 & more",
        &[],
        "https://hooks.example.com/twilio/lakeshore/calls/gather?delivery=2",
    );
    let call = Call {
        to: "+13125550140".into(),
        from: "+13125550100".into(),
        twiml,
        status_callback: "https://hooks.example.com/twilio/lakeshore/calls/status?delivery=2".into(),
    };
    assert!(matches!(c.place_call(&call).await, SendOutcome::Accepted { .. }));
    c.list_messages("+13125550120", "+13125550100").await.unwrap();
    let listed = c.list_calls("+13125550140", "+13125550100").await.unwrap();
    assert_eq!(listed.len(), 1, "the call placed above, read back: {listed:?}");
    assert!(listed[0].sid.starts_with("CA") && listed[0].created_at.is_some(), "{listed:?}");
    let sent = sb.raw_requests();
    assert_eq!(sent.len(), 4);
    let verdicts = judge(&sent);
    assert_eq!(verdicts, ["ok", "ok", "ok", "ok"], "{sent:#?}");
    // The validator is not a rubber stamp: a request without `To` is invalid.
    let mut bad = sent[0].clone();
    bad.body = "From=%2B13125550100&Body=hello".into();
    let v = judge(&[bad]);
    assert!(
        v[0].starts_with("invalid:") && v[0].contains("'To' is a required property"),
        "{v:?}"
    );
}
