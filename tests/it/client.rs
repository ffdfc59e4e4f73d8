//! The project's QAD client against the QAD sandbox: paging, the trap, expiry mid-paging,
//! 5xx, slow answers, refused credentials and rejected writes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ml_connector::qad::{Filter, QadClient, QadConfig, QadError, RetryPolicy};
use ml_connector::qad_sandbox::data;
use ml_connector::secrets::SecretString;
use ml_connector_tests::Qad;
use serde_json::json;

fn client(qad: &Qad, page_size: u32, password: &str) -> QadClient {
    client_with(qad, page_size, password, reqwest::Client::new())
}

fn client_with(qad: &Qad, page_size: u32, password: &str, http: reqwest::Client) -> QadClient {
    QadClient::new(
        http,
        QadConfig {
            base_url: format!("{}/", qad.base),
            workspace: "10USA_10USACO".into(),
            user: qad.config.user.clone(),
            password: SecretString::new(password),
            page_size,
            retry: RetryPolicy {
                attempts: 3,
                min_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(20),
            },
        },
    )
}

async fn story_rows(qad: &Qad, browse: &str) -> u64 {
    let v: serde_json::Value = reqwest::get(format!("{}/_sandbox/story", qad.control))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["rows"][browse].as_u64().unwrap()
}

#[tokio::test]
async fn reads_every_page_and_never_falls_into_the_empty_page_trap() {
    let qad = Qad::start().await;
    let c = client(&qad, 7, &qad.config.password);
    let rows = c.browse(data::BROWSE_RECEIPTS, &[]).await.unwrap();
    let total = story_rows(&qad, data::BROWSE_RECEIPTS).await;
    assert_eq!(rows.len() as u64, total);
    assert!(total > 100);
    assert_eq!(
        c.counters.requests.load(Ordering::Relaxed),
        2 + total.div_ceil(7),
        "login (2) + one request per page"
    );
}

#[tokio::test]
async fn filters_narrow_the_browse() {
    let qad = Qad::start().await;
    let c = client(&qad, 50, &qad.config.password);
    let rows = c
        .browse(
            data::BROWSE_RECEIPTS,
            &[
                Filter::Eq("prh_hist.prh_nbr".into(), "PO10010".into()),
                Filter::Ge("prh_hist.prh_rcp_date".into(), "2000-01-01".into()),
            ],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["prh_hist.prh_nbr"] == json!("PO10010")));
}

#[tokio::test]
async fn session_expiry_mid_paging_reauthenticates_once_and_restarts_the_browse() {
    let qad = Qad::start().await;
    let c = client(&qad, 20, &qad.config.password);
    c.login().await.unwrap();
    qad.control("faults", json!({"expire_after_requests": 3})).await;
    let rows = c.browse(data::BROWSE_INVOICES, &[]).await.unwrap();
    let total = story_rows(&qad, data::BROWSE_INVOICES).await;
    assert_eq!(rows.len() as u64, total, "restarted from page 1: every row once");
    assert_eq!(c.counters.logins.load(Ordering::Relaxed), 2);
    assert_eq!(qad.sandbox.stats().logins, 2);
}

#[tokio::test]
async fn refused_credentials_are_an_error_and_not_retried() {
    let qad = Qad::start().await;
    let c = client(&qad, 20, "wrong password");
    let err = c.browse(data::BROWSE_INVOICES, &[]).await.unwrap_err();
    assert!(matches!(err, QadError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("Invalid user name or password"), "{err}");
    assert_eq!(qad.sandbox.stats().unauthorized, 1, "a refusal is final");
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_reported() {
    let qad = Qad::start().await;
    let c = client(&qad, 500, &qad.config.password);
    c.login().await.unwrap();
    qad.control("faults", json!({"fail_next": 2, "fail_status": 503})).await;
    let rows = c.browse(data::BROWSE_EMPLOYEES, &[]).await.unwrap();
    assert_eq!(rows.len(), data::EMPLOYEES.len());
    qad.control("faults", json!({"fail_next": 10, "fail_status": 500})).await;
    let err = c.browse(data::BROWSE_EMPLOYEES, &[]).await.unwrap_err();
    assert!(err.is_transient());
    assert!(
        err.to_string().contains("500") && err.to_string().contains("Service temporarily unavailable"),
        "{err}"
    );
    assert_eq!(qad.sandbox.stats().failures_injected, 2 + 3, "three attempts in all");
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_retried() {
    let qad = Qad::start().await;
    let http = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let c = client_with(&qad, 500, &qad.config.password, http);
    c.login().await.unwrap();
    qad.control("faults", json!({"delay_next": 1, "delay_ms": 1500})).await;
    let rows = c.browse(data::BROWSE_EMPLOYEES, &[]).await.unwrap();
    assert_eq!(rows.len(), data::EMPLOYEES.len());
}

#[tokio::test]
async fn a_rejected_write_is_an_error_even_with_200() {
    let qad = Qad::start().await;
    let c = client(&qad, 50, &qad.config.password);
    let bad = json!({"transactionComments": [{"domainCode": "10USA", "referenceType": "PO", "referenceNumber": "PO99999",
        "commentText": "x", "commentDate": "2026-11-27T10:00:00.000Z"}]});
    let err = c.write("/api/erp/transactionComments", &bad).await.unwrap_err();
    assert!(matches!(err, QadError::Rejected { .. }), "{err}");
    assert!(err.to_string().contains("no such record"), "{err}");
    let good = json!({"transactionComments": [{"domainCode": "10USA", "referenceType": "PO", "referenceNumber": "PO10010",
        "commentText": "x", "commentDate": "2026-11-27T10:00:00.000Z"}]});
    c.write("/api/erp/transactionComments", &good).await.unwrap();
}
