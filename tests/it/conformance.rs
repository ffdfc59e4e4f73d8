//! The QAD sandbox against `qad-api.md`, line by line, with plain HTTP (not the project's
//! client): what a real QAD does, the sandbox must do, traps included.

use base64::Engine;
use ml_connector::qad_sandbox::data;
use ml_connector_tests::Qad;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Session {
    qad: Qad,
    http: reqwest::Client,
    token: String,
}

async fn login(qad: &Qad) -> (String, String) {
    qad.plain_login().await
}

async fn session() -> Session {
    let qad = Qad::start().await;
    let (token, _) = login(&qad).await;
    Session {
        qad,
        http: reqwest::Client::new(),
        token,
    }
}

impl Session {
    fn browse_req(&self, query: &[(&str, &str)]) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}/api/qracore/browses", self.qad.base))
            .bearer_auth(&self.token)
            .header("x-qad-workspace-id", "10USA_10USACO")
            .query(query)
    }
    async fn browse(&self, query: &[(&str, &str)]) -> (StatusCode, Value) {
        let r = self.browse_req(query).send().await.unwrap();
        (r.status(), r.json().await.unwrap())
    }
}

fn assert_envelope(v: &Value, code: &str) {
    let e = &v["errors"][0];
    assert_eq!(e["severity"], json!(1), "{v}");
    assert_eq!(e["code"], json!(code), "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(e["fieldName"], json!(""), "{v}");
}

#[tokio::test]
async fn tenancy_the_api_lives_under_the_tenant_context_root() {
    let qad = Qad::start().await;
    assert!(qad.base.ends_with("/clouderp"));
    let root = reqwest::get(format!("{}/api/qracore/securityControl", qad.control)).await.unwrap();
    assert_eq!(
        root.status(),
        StatusCode::NOT_FOUND,
        "no shared base address: only the tenant root answers"
    );
}

#[tokio::test]
async fn auth_step1_security_control_with_basic_auth_gives_client_id_and_minutes() {
    let qad = Qad::start().await;
    let http = reqwest::Client::new();
    let ok: Value = http
        .get(format!("{}/api/qracore/securityControl", qad.base))
        .basic_auth("mfg-api", Some("sandbox-password"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sc = &ok["data"]["securityControls"][0];
    assert!(sc["clientId"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(sc["sessionLength"], json!(480));
    assert_eq!(sc["timeoutMinutes"], json!(30));
    let bad = http
        .get(format!("{}/api/qracore/securityControl", qad.base))
        .basic_auth("mfg-api", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert_envelope(&bad.json().await.unwrap(), "401");
}

#[tokio::test]
async fn auth_step2_token_takes_a_form_body_and_refreshes() {
    let qad = Qad::start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/oauth/token", qad.base);
    let form = [
        ("client_id", "qad-sandbox-client"),
        ("grant_type", "password"),
        ("username", "mfg-api"),
        ("password", "sandbox-password"),
    ];
    let tok: Value = http.post(&url).form(&form).send().await.unwrap().json().await.unwrap();
    assert!(tok["access_token"].is_string() && tok["refresh_token"].is_string(), "{tok}");
    assert_eq!(tok["token_type"], json!("bearer"));
    assert!(tok["expires_in"].is_number());
    // JSON is not what the endpoint takes.
    let json_body = http.post(&url).json(&json!({"grant_type": "password"})).send().await.unwrap();
    assert_eq!(json_body.status(), StatusCode::BAD_REQUEST);
    assert_envelope(&json_body.json().await.unwrap(), "400");
    // refresh_token renews it, once.
    let refresh = tok["refresh_token"].as_str().unwrap();
    let renewed = http
        .post(&url)
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status(), StatusCode::OK);
    let reused = http
        .post(&url)
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
        .send()
        .await
        .unwrap();
    assert_eq!(reused.status(), StatusCode::UNAUTHORIZED);
    let wrong = http
        .post(&url)
        .form(&[
            ("client_id", "x"),
            ("grant_type", "password"),
            ("username", "mfg-api"),
            ("password", "sandbox-password"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn auth_step3_bearer_on_every_call_expired_and_foreign_tokens_get_401() {
    let s = session().await;
    let q = [
        ("browseId", data::BROWSE_EMPLOYEES),
        ("page", "1"),
        ("pageSize", "5"),
        ("pageAction", "first"),
    ];
    assert_eq!(s.browse(&q).await.0, StatusCode::OK);
    let no_token = s
        .http
        .get(format!("{}/api/qracore/browses", s.qad.base))
        .header("x-qad-workspace-id", "10USA_10USACO")
        .query(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    // A token of another tenant (another QAD instance) is refused.
    let other = Qad::start().await;
    let (foreign, _) = login(&other).await;
    let r = s
        .http
        .get(format!("{}/api/qracore/browses", s.qad.base))
        .bearer_auth(foreign)
        .header("x-qad-workspace-id", "10USA_10USACO")
        .query(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_envelope(&r.json().await.unwrap(), "401");
    // Expiry.
    s.qad.control("faults", json!({"expire_sessions_now": true})).await;
    let (status, body) = s.browse(&q).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_envelope(&body, "401");
}

#[tokio::test]
async fn workspace_header_carries_domain_and_entity() {
    let s = session().await;
    let q = [
        ("browseId", data::BROWSE_EMPLOYEES),
        ("page", "1"),
        ("pageSize", "5"),
        ("pageAction", "first"),
    ];
    for bad in [None, Some("10USA"), Some("20MEX_20MEXCO")] {
        let mut r = s
            .http
            .get(format!("{}/api/qracore/browses", s.qad.base))
            .bearer_auth(&s.token)
            .query(&q);
        if let Some(h) = bad {
            r = r.header("x-qad-workspace-id", h);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{bad:?}");
        let body: Value = r.json().await.unwrap();
        assert_envelope(&body, "403");
        assert_eq!(body["errors"][0]["message"], json!("Access is denied"));
    }
}

#[tokio::test]
async fn trap_without_page_and_page_action_a_browse_answers_200_with_zero_rows() {
    let s = session().await;
    for q in [
        vec![("browseId", data::BROWSE_PO)],
        vec![("browseId", data::BROWSE_PO), ("page", "1")],
        vec![("browseId", data::BROWSE_PO), ("pageAction", "first")],
    ] {
        let (status, body) = s.browse(&q).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["data"], json!([]), "{q:?}");
        assert_eq!(body["auxillaryData"]["HasMoreParams"], json!("false"));
    }
    let (_, body) = s
        .browse(&[
            ("browseId", data::BROWSE_PO),
            ("page", "1"),
            ("pageSize", "10"),
            ("pageAction", "first"),
        ])
        .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn paging_next_with_the_same_call_id_and_has_more_params_as_a_string() {
    let s = session().await;
    let total = s.qad.sandbox.story().invoice_po.len(); // a lower bound on invoices, the exact count comes next
    let mut seen = Vec::new();
    let mut page = 1;
    loop {
        let p = page.to_string();
        let action = if page == 1 { "first" } else { "next" };
        let (status, body) = s
            .browse(&[
                ("browseId", data::BROWSE_INVOICES),
                ("page", &p),
                ("pageSize", "40"),
                ("pageAction", action),
                ("callId", "c-1"),
            ])
            .await;
        assert_eq!(status, StatusCode::OK);
        let more = body["auxillaryData"]["HasMoreParams"]
            .as_str()
            .expect("HasMoreParams is a string, under auxillaryData");
        for r in body["data"].as_array().unwrap() {
            seen.push(r["CInvoice.CInvoiceVoucher"].as_str().unwrap().to_string());
        }
        if more == "false" {
            break;
        }
        assert_eq!(more, "true");
        page += 1;
    }
    assert!(page > 2 && seen.len() > total);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "pages do not overlap");
    // A callId belongs to the session that began it.
    let (other, _) = login(&s.qad).await;
    let r = s
        .http
        .get(format!("{}/api/qracore/browses", s.qad.base))
        .bearer_auth(other)
        .header("x-qad-workspace-id", "10USA_10USACO")
        .query(&[
            ("browseId", data::BROWSE_INVOICES),
            ("page", "2"),
            ("pageSize", "40"),
            ("pageAction", "next"),
            ("callId", "c-1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn filters_short_operator_codes_repeat_as_and() {
    let s = session().await;
    let all = |body: &Value| body["data"].as_array().unwrap().clone();
    let (_, eq) = s
        .browse(&[
            ("browseId", data::BROWSE_RECEIPTS),
            ("page", "1"),
            ("pageSize", "500"),
            ("pageAction", "first"),
            ("filter", "prh_hist.prh_nbr,eq,PO10010,literal"),
        ])
        .await;
    assert!(!all(&eq).is_empty());
    assert!(all(&eq).iter().all(|r| r["prh_hist.prh_nbr"] == json!("PO10010")));
    let day = "2026-11-01";
    for (op, check) in [
        ("ge", Box::new(|d: &str| d >= day) as Box<dyn Fn(&str) -> bool>),
        ("gt", Box::new(|d: &str| d > day)),
        ("le", Box::new(|d: &str| d <= day)),
        ("lt", Box::new(|d: &str| d < day)),
        ("ne", Box::new(|d: &str| d != day)),
    ] {
        let f = format!("prh_hist.prh_rcp_date,{op},{day},literal");
        let (_, body) = s
            .browse(&[
                ("browseId", data::BROWSE_RECEIPTS),
                ("page", "1"),
                ("pageSize", "5000"),
                ("pageAction", "first"),
                ("filter", &f),
            ])
            .await;
        let rows = all(&body);
        assert!(!rows.is_empty(), "{op}");
        assert!(rows.iter().all(|r| check(r["prh_hist.prh_rcp_date"].as_str().unwrap())), "{op}");
    }
    // Repeated filters AND together.
    let (_, both) = s
        .browse(&[
            ("browseId", data::BROWSE_RECEIPTS),
            ("page", "1"),
            ("pageSize", "500"),
            ("pageAction", "first"),
            ("filter", "prh_hist.prh_nbr,eq,PO10010,literal"),
            ("filter", "prh_hist.prh_line,eq,1,literal"),
        ])
        .await;
    assert_eq!(all(&both).len(), 1);
}

#[tokio::test]
async fn rows_use_table_dot_field_keys_iso_dates_and_decimal_string_amounts() {
    let s = session().await;
    let expect: &[(&str, &[&str])] = &[
        (
            data::BROWSE_PO,
            &[
                "po_mstr.po_nbr",
                "po_mstr.po_vend",
                "po_mstr.po_ord_date",
                "po_mstr.po_due_date",
                "po_mstr.po_stat",
                "po_mstr.po_buyer",
                "po_mstr.po_contact",
                "po_mstr.po_curr",
                "po_mstr.po_rmks",
                "po_mstr.po_site",
                "po_mstr.po_domain",
                "po_mstr.po_total",
                "po_mstr.po_approval_status",
                "po_mstr.po_mod_date",
            ],
        ),
        (
            data::BROWSE_RECEIPTS,
            &[
                "prh_hist.prh_receiver",
                "prh_hist.prh_nbr",
                "prh_hist.prh_line",
                "prh_hist.prh_rcp_date",
                "prh_hist.prh_vend",
                "prh_hist.prh_part",
                "prh_hist.prh_rcvd",
                "prh_hist.prh_pur_cost",
                "prh_hist.prh_um",
                "prh_hist.prh_curr",
                "prh_hist.prh_domain",
                "prh_hist.prh_qty_ord",
            ],
        ),
        (
            data::BROWSE_PO_LINES,
            &[
                "pod_det.pod_nbr",
                "pod_det.pod_line",
                "pod_det.pod_part",
                "pod_det.pod_qty_ord",
                "pod_det.pod_pur_cost",
                "pod_det.pod_um",
            ],
        ),
        (
            data::BROWSE_PO_CONTROL,
            &["poc_ctrl.poc_tol_pct", "poc_ctrl.poc_tol_cst", "poc_ctrl.poc_apv_req"],
        ),
        (
            data::BROWSE_MATCHINGS,
            &[
                "APMatching.CInvoiceVoucher",
                "APMatching.prh_receiver",
                "APMatching.prh_line",
                "APMatching.APMatchingLnMatchQty",
                "APMatching.APMatchingLnMatchUnitPrice",
            ],
        ),
        (
            data::BROWSE_INVOICES,
            &[
                "CInvoice.CInvoiceVoucher",
                "CInvoice.CInvoiceReference",
                "CInvoice.CreditorCode",
                "CInvoice.CInvoiceDate",
                "CInvoice.CInvoiceDueDate",
                "CInvoice.CInvoicePoNbr",
                "CInvoice.ReasonCode",
                "CInvoice.CInvoiceIsInvoiceApproved",
                "CInvoice.CInvoiceIsLockPayment",
                "CInvoice.CInvoiceIsLogisticMatching",
                "CInvoice.CInvoiceHoldAmountTC",
                "CInvoice.LastModifiedDate",
                "CInvoice.LastModifiedTime",
                "CInvoice.CInvoiceOriginalCreditTC",
                "CInvoice.CurrencyCode",
            ],
        ),
        (
            data::BROWSE_ADDRESSES,
            &[
                "ad_mstr.ad_addr",
                "ad_mstr.ad_name",
                "ad_mstr.ad_attn",
                "ad_mstr.ad_phone",
                "ad_mstr.ad_ext",
                "ad_mstr.ad_attn2",
                "ad_mstr.ad_phone2",
                "ad_mstr.ad_fax",
                "ad_mstr.ad_ctry",
            ],
        ),
        (
            data::BROWSE_CONTACTS,
            &[
                "Contact.ContactName",
                "Contact.ContactTelephone",
                "Contact.ContactMobilePhone",
                "Contact.ContactEmail",
                "Contact.ContactIsPrimary",
                "Contact.BusinessRelationCode",
                "Contact.ContactFunction",
            ],
        ),
        (
            data::BROWSE_EMPLOYEES,
            &[
                "emp_mstr.emp_addr",
                "emp_mstr.emp_fname",
                "emp_mstr.emp_lname",
                "emp_mstr.emp_phone",
                "emp_mstr.emp_title",
                "emp_mstr.emp_ctry",
            ],
        ),
    ];
    for (browse, fields) in expect {
        let (status, body) = s
            .browse(&[("browseId", browse), ("page", "1"), ("pageSize", "3"), ("pageAction", "first")])
            .await;
        assert_eq!(status, StatusCode::OK, "{browse}");
        let row = body["data"][0].as_object().unwrap_or_else(|| panic!("{browse} has rows"));
        for f in *fields {
            assert!(row.contains_key(*f), "{browse} row lacks {f}");
        }
    }
    let (_, inv) = s
        .browse(&[
            ("browseId", data::BROWSE_INVOICES),
            ("page", "1"),
            ("pageSize", "1"),
            ("pageAction", "first"),
        ])
        .await;
    let r = &inv["data"][0];
    assert!(
        r["CInvoice.CInvoiceOriginalCreditTC"].as_str().unwrap().parse::<f64>().is_ok(),
        "amounts are decimal strings"
    );
    assert!(chrono::NaiveDate::parse_from_str(r["CInvoice.LastModifiedDate"].as_str().unwrap(), "%Y-%m-%d").is_ok());
    assert!(
        r["CInvoice.LastModifiedTime"].as_u64().is_some_and(|t| t < 86_400),
        "seconds after midnight"
    );
    // An unknown browse is a 404 in the error envelope.
    let (status, body) = s
        .browse(&[("browseId", "urn:browse:nope"), ("page", "1"), ("pageAction", "first")])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_envelope(&body, "404");
}

#[tokio::test]
async fn writes_answer_submit_result_and_success_false_is_a_failure_with_200() {
    let s = session().await;
    let post = |path: &str, body: Value| {
        s.http
            .post(format!("{}{path}", s.qad.base))
            .bearer_auth(&s.token)
            .header("x-qad-workspace-id", "10USA_10USACO")
            .json(&body)
            .send()
    };
    let good = json!({"transactionComments": [{"domainCode": "10USA", "referenceType": "PO", "referenceNumber": "PO10010",
        "commentText": "delivered 10:02", "commentDate": "2026-11-27T10:00:00.000Z"}]});
    let r = post("/api/erp/transactionComments", good).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["submitResult"]["success"], json!(true));
    let bad = json!({"transactionComments": [{"domainCode": "10USA", "referenceType": "INVOICE", "referenceNumber": "PO10010",
        "commentText": "x", "commentDate": "2026-11-27T10:00:00.000Z"}]});
    let r = post("/api/erp/transactionComments", bad).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the trap: a rejected write still answers 200");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["submitResult"]["success"], json!(false));
    let e = &v["submitResult"]["errors"][0];
    for k in ["fieldName", "message", "fieldValue", "code"] {
        assert!(e.get(k).is_some(), "error lacks {k}: {e}");
    }
    let writes: Value = reqwest::get(format!("{}/_sandbox/writes", s.qad.control))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        writes["transactionComments"].as_array().unwrap().len(),
        1,
        "only the accepted comment is kept"
    );

    let pending = s.qad.sandbox.story().pending_approval[0].clone();
    let approve = json!({"purchaseOrderApprovals": [{"domainCode": "10USA", "purchaseOrderNumber": pending, "action": "approve", "approver": "PM-01", "comment": "ok"}]});
    let v: Value = post("/api/erp/purchaseOrderApprovals", approve.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["submitResult"]["success"], json!(true));
    let again: Value = post("/api/erp/purchaseOrderApprovals", approve)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        again["submitResult"]["success"],
        json!(false),
        "an approved PO is no longer pending"
    );
    let f = format!("po_mstr.po_nbr,eq,{pending},literal");
    let (_, po) = s
        .browse(&[
            ("browseId", data::BROWSE_PO),
            ("page", "1"),
            ("pageAction", "first"),
            ("filter", &f),
        ])
        .await;
    assert_eq!(po["data"][0]["po_mstr.po_approval_status"], json!("Approved"));
    assert_eq!(po["data"][0]["po_mstr.po_mod_date"], json!("2026-11-27"));
}

#[tokio::test]
async fn faults_5xx_in_the_envelope_and_expiry_mid_paging() {
    let s = session().await;
    let q = [
        ("browseId", data::BROWSE_PO),
        ("page", "1"),
        ("pageSize", "5"),
        ("pageAction", "first"),
        ("callId", "x"),
    ];
    s.qad.control("faults", json!({"fail_next": 1, "fail_status": 502})).await;
    let (status, body) = s.browse(&q).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_envelope(&body, "502");
    assert_eq!(s.browse(&q).await.0, StatusCode::OK);
    s.qad.control("faults", json!({"expire_after_requests": 1})).await;
    assert_eq!(s.browse(&q).await.0, StatusCode::OK);
    let next = [
        ("browseId", data::BROWSE_PO),
        ("page", "2"),
        ("pageSize", "5"),
        ("pageAction", "next"),
        ("callId", "x"),
    ];
    assert_eq!(s.browse(&next).await.0, StatusCode::UNAUTHORIZED, "the session expired mid-paging");
}

#[tokio::test]
async fn basic_auth_header_is_plain_rfc7617() {
    // The sandbox decodes the standard header, not a private variant.
    let qad = Qad::start().await;
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("mfg-api:sandbox-password")
    );
    let r = reqwest::Client::new()
        .get(format!("{}/api/qracore/securityControl", qad.base))
        .header("authorization", header)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
