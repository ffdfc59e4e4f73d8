//! End to end through the real poll cycle: the QAD sandbox over HTTP, the real store on
//! each engine, the pure core deciding. What a user sees: which records need a person.

use std::collections::BTreeSet;

use chrono::Duration;
use ml_connector::qad_sandbox::data;
use ml_connector::scheduler::{PollNowError, Scheduler};
use ml_connector_tests::{Harness, engines, harness};
use serde_json::{Value, json};

async fn open_set(h: &Harness) -> BTreeSet<(String, String, String)> {
    h.db.store
        .attention(&h.tenant.id, Some("open"))
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.kind, a.record_key, a.reason_code))
        .collect()
}

fn expected(h: &Harness) -> BTreeSet<(String, String, String)> {
    let st = h.qad.sandbox.story();
    let mut want = BTreeSet::new();
    for (list, code) in [
        (&st.missing_receipt, "missing_receipt"),
        (&st.quantity_variance, "quantity_variance"),
        (&st.price_variance, "price_variance"),
    ] {
        for v in list {
            want.insert(("supplier_invoice".to_string(), v.clone(), code.to_string()));
        }
    }
    for po in &st.pending_approval {
        want.insert(("purchase_order".to_string(), po.clone(), "pending_approval".to_string()));
    }
    for r in &st.short_receipts {
        want.insert(("goods_receipt".to_string(), r.clone(), "short_receipt".to_string()));
    }
    want
}

#[tokio::test]
async fn the_first_poll_finds_exactly_the_records_of_the_story() {
    for engine in engines() {
        let h = harness(engine).await;
        let report = h.poller.poll(&h.tenant.id, "test").await.unwrap();
        assert_eq!(report.error, None, "{engine}");
        let want = expected(&h);
        assert!(want.len() > 30, "the story has enough in it");
        assert_eq!(open_set(&h).await, want, "{engine}");
        assert_eq!(report.totals.opened as usize, want.len());
        assert_eq!(report.totals.row_errors, 2);
    }
}

#[tokio::test]
async fn decisions_agree_with_the_sandboxs_own_match_status() {
    // The sandbox derives a match status when it builds its data (a [GUESS] extension);
    // the connector decides from receipts, PO lines and matching lines alone. They must agree.
    let h = harness("sqlite").await;
    h.poller.poll(&h.tenant.id, "test").await.unwrap();
    let http = reqwest::Client::new();
    let (token, _) = h.qad.plain_login().await;
    let body: Value = http
        .get(format!("{}/api/qracore/browses", h.qad.base))
        .bearer_auth(token)
        .header("x-qad-workspace-id", "10USA_10USACO")
        .query(&[
            ("browseId", data::BROWSE_INVOICES),
            ("page", "1"),
            ("pageSize", "5000"),
            ("pageAction", "first"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sandbox_blocked: BTreeSet<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["CInvoice.matchStatus"] != json!("MATCHED") && r["CInvoice.CInvoiceReference"] != json!("INV-BAD"))
        .map(|r| r["CInvoice.CInvoiceVoucher"].as_str().unwrap().to_string())
        .collect();
    let ours: BTreeSet<String> = open_set(&h)
        .await
        .into_iter()
        .filter(|(k, _, _)| k == "supplier_invoice")
        .map(|(_, key, _)| key)
        .collect();
    assert_eq!(ours, sandbox_blocked);
}

#[tokio::test]
async fn malformed_rows_and_unusable_numbers_are_named_in_the_audit_trail_and_the_rest_goes_on() {
    let h = harness("sqlite").await;
    h.poller.poll(&h.tenant.id, "test").await.unwrap();
    let trail = h.db.store.audit_trail(&h.tenant.id, "supplier_invoice", "SI-79901").await.unwrap();
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].event, "row_error");
    assert_eq!(
        trail[0].detail["error"],
        json!("supplier invoice SI-79901: CInvoice.CInvoiceDueDate \"2026-02-30\" is not a date (YYYY-MM-DD)")
    );
    // The same bad row read again is not recorded twice.
    h.clock.advance(Duration::minutes(5));
    h.poller.poll(&h.tenant.id, "test").await.unwrap();
    assert_eq!(
        h.db.store
            .audit_trail(&h.tenant.id, "supplier_invoice", "SI-79901")
            .await
            .unwrap()
            .len(),
        1
    );
    // A supplier whose number cannot be normalised: the alert keeps its other people and says why.
    let rows = h.db.store.attention(&h.tenant.id, Some("open")).await.unwrap();
    let cornbelt = rows
        .iter()
        .find(|a| a.kind == "supplier_invoice" && a.summary.contains("Cornbelt Coatings"))
        .expect("a Cornbelt invoice needs attention");
    assert!(cornbelt.people.recipients.iter().all(|r| r.phone.starts_with('+')));
    assert_eq!(
        cornbelt.people.unreachable[0].error,
        "phone \"(515) 55-01\" for supplier S-1009 is not a valid number for US"
    );
    let trail =
        h.db.store
            .audit_trail(&h.tenant.id, &cornbelt.kind, &cornbelt.record_key)
            .await
            .unwrap();
    assert!(
        trail
            .iter()
            .any(|e| e.event == "unreachable" && e.detail["error"].as_str().unwrap().contains("(515) 55-01"))
    );
}

#[tokio::test]
async fn posting_the_missing_receipt_resolves_the_invoice_and_says_so() {
    for engine in engines() {
        let h = harness(engine).await;
        h.poller.poll(&h.tenant.id, "test").await.unwrap();
        let st = h.qad.sandbox.story();
        let voucher = &st.missing_receipt[0];
        let po = &st.invoice_po[voucher];
        let posted = h.qad.control("receipts", json!({"po": po})).await;
        h.clock.advance(Duration::minutes(5));
        let report = h.poller.poll(&h.tenant.id, "test").await.unwrap();
        assert_eq!((report.totals.resolved, report.totals.opened), (1, 0), "{engine}");
        let trail = h.db.store.audit_trail(&h.tenant.id, "supplier_invoice", voucher).await.unwrap();
        let events: Vec<&str> = trail
            .iter()
            .map(|e| e.event.as_str())
            .filter(|e| matches!(*e, "needs_attention" | "resolved"))
            .collect();
        assert_eq!(events, ["needs_attention", "resolved"]);
        assert_eq!(
            trail.iter().find(|e| e.event == "resolved").unwrap().detail["cause"],
            json!(format!("goods receipt {} posted for {po}", posted["receiver"].as_str().unwrap()))
        );
        let mut want = expected(&h);
        want.retain(|(_, k, _)| k != voucher);
        assert_eq!(open_set(&h).await, want);
    }
}

#[tokio::test]
async fn a_back_dated_receipt_that_escapes_the_receipt_cursor_still_resolves_its_invoice() {
    let h = harness("sqlite").await;
    h.poller.poll(&h.tenant.id, "test").await.unwrap();
    let cursor = h.db.store.cursor(&h.tenant.id, "receipts").await.unwrap().unwrap();
    let st = h.qad.sandbox.story();
    let voucher = st.missing_receipt.last().unwrap();
    let po = &st.invoice_po[voucher];
    let date = (ml_connector_tests::today() - Duration::days(90)).to_string();
    assert!(date < cursor, "the receipt is dated before the cursor");
    h.qad.control("receipts", json!({"po": po, "date": date})).await;
    h.clock.advance(Duration::minutes(5));
    let report = h.poller.poll(&h.tenant.id, "test").await.unwrap();
    assert_eq!(report.totals.resolved, 1);
    let inv =
        h.db.store
            .attention(&h.tenant.id, None)
            .await
            .unwrap()
            .into_iter()
            .find(|a| &a.record_key == voucher)
            .unwrap();
    assert_eq!(inv.state, "resolved");
}

#[tokio::test]
async fn incremental_polls_process_only_changed_rows_and_a_recurrence_is_a_new_episode() {
    for engine in engines() {
        let h = harness(engine).await;
        let first = h.poller.poll(&h.tenant.id, "test").await.unwrap();
        h.clock.advance(Duration::minutes(5));
        let second = h.poller.poll(&h.tenant.id, "test").await.unwrap();
        assert_eq!(
            (second.totals.rows_changed, second.totals.opened, second.totals.resolved),
            (0, 0, 0),
            "{engine}"
        );
        assert!(
            second.totals.rows_read * 20 < first.totals.rows_read,
            "the overlap re-reads the last day, not the tables: {} vs {}",
            second.totals.rows_read,
            first.totals.rows_read
        );
        let po = h.qad.sandbox.story().pending_approval[0].clone();
        h.qad.control("approvals", json!({"po": po, "status": "Approved"})).await;
        h.clock.advance(Duration::minutes(5));
        let third = h.poller.poll(&h.tenant.id, "test").await.unwrap();
        assert_eq!(
            (third.totals.rows_changed, third.totals.resolved),
            (1, 1),
            "{engine}: only the approved PO changed"
        );
        h.qad.control("approvals", json!({"po": po, "status": "Pending"})).await;
        h.clock.advance(Duration::minutes(5));
        let fourth = h.poller.poll(&h.tenant.id, "test").await.unwrap();
        assert_eq!(fourth.totals.opened, 1);
        let episodes: Vec<(i64, String)> =
            h.db.store
                .attention(&h.tenant.id, None)
                .await
                .unwrap()
                .into_iter()
                .filter(|a| a.record_key == po)
                .map(|a| (a.episode, a.state))
                .collect();
        assert_eq!(episodes, [(1, "resolved".to_string()), (2, "open".to_string())]);
    }
}

#[tokio::test]
async fn urgency_rises_as_the_due_date_nears() {
    let h = harness("sqlite").await;
    h.poller.poll(&h.tenant.id, "test").await.unwrap();
    let low: Vec<_> =
        h.db.store
            .attention(&h.tenant.id, Some("open"))
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.urgency == "low")
            .collect();
    assert!(!low.is_empty());
    h.clock.advance(Duration::days(60));
    h.poller.poll(&h.tenant.id, "test").await.unwrap();
    let trail =
        h.db.store
            .audit_trail(&h.tenant.id, &low[0].kind, &low[0].record_key)
            .await
            .unwrap();
    let change = trail.iter().find(|e| e.event == "urgency_changed").expect("urgency change audited");
    assert_eq!(change.detail["from"], json!("low"));
    assert_eq!(change.detail["to"], json!("critical"));
}

#[tokio::test]
async fn a_poll_that_fails_mid_cycle_keeps_finished_cursors_and_loses_nothing() {
    for engine in engines() {
        let h = harness(engine).await;
        h.qad.control("faults", json!({"fail_browse": data::BROWSE_INVOICES})).await;
        let failed = h.poller.poll(&h.tenant.id, "test").await.unwrap();
        let err = failed.error.expect("the poll failed");
        assert!(err.contains("503") && err.contains(data::BROWSE_INVOICES), "{err}");
        let cursors: Vec<String> = h.db.store.cursors(&h.tenant.id).await.unwrap().into_iter().map(|c| c.0).collect();
        assert_eq!(
            cursors,
            ["purchase_orders", "receipts"],
            "{engine}: the invoice cursor did not move"
        );
        let history = h.db.store.polls(&h.tenant.id, 10).await.unwrap();
        assert_eq!(history[0].outcome, "failed");
        h.qad.control("faults", json!({})).await;
        h.clock.advance(Duration::minutes(5));
        let ok = h.poller.poll(&h.tenant.id, "test").await.unwrap();
        assert_eq!(ok.error, None);
        assert_eq!(open_set(&h).await, expected(&h), "{engine}");
    }
}

#[tokio::test]
async fn one_poll_per_tenant_at_a_time() {
    let h = harness("sqlite").await;
    let scheduler = Scheduler::new(h.poller.clone());
    h.qad.control("faults", json!({"delay_next": 1, "delay_ms": 500})).await;
    let (a, b) = tokio::join!(scheduler.poll_now(&h.tenant.id, "a"), async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        scheduler.poll_now(&h.tenant.id, "b").await
    });
    assert!(a.is_ok());
    assert!(matches!(b, Err(PollNowError::AlreadyRunning(_))), "{b:?}");
    // Once done, the tenant can be polled again.
    assert!(scheduler.poll_now(&h.tenant.id, "c").await.is_ok());
}

#[tokio::test]
async fn what_needs_a_person_reads_well() {
    let h = harness("sqlite").await;
    h.poller.poll(&h.tenant.id, "test").await.unwrap();
    let lines: Vec<String> =
        h.db.store
            .attention(&h.tenant.id, Some("open"))
            .await
            .unwrap()
            .into_iter()
            .map(|a| {
                let people: Vec<String> = a
                    .people
                    .recipients
                    .iter()
                    .map(|r| format!("{} {} {}", r.role.as_str(), r.name, r.phone))
                    .collect();
                let mut s = format!("[{}] {}\n    → {}", a.urgency, a.summary, people.join(", "));
                for u in &a.people.unreachable {
                    s.push_str(&format!("\n    ✗ {}", u.error));
                }
                s
            })
            .collect();
    insta::assert_snapshot!("records_needing_attention", lines.join("\n"));
}

#[tokio::test]
async fn a_malformed_row_planted_mid_table_is_named_and_the_rest_of_the_page_goes_on() {
    let h = harness("sqlite").await;
    h.poller.poll(&h.tenant.id, "test").await.unwrap();
    // A receipt row for today with a quantity QAD should never send, among good rows.
    let st = h.qad.sandbox.story();
    let voucher = &st.missing_receipt[1];
    let po = &st.invoice_po[voucher];
    h.qad.control("receipts", json!({"po": po})).await;
    h.qad
        .control(
            "rows",
            json!({"browse": data::BROWSE_RECEIPTS, "rows": [{
                "prh_hist.prh_receiver": "RCV-BAD", "prh_hist.prh_nbr": po, "prh_hist.prh_line": 1,
                "prh_hist.prh_rcp_date": "2026-11-27", "prh_hist.prh_vend": "S-1001", "prh_hist.prh_part": "X",
                "prh_hist.prh_rcvd": "twelve", "prh_hist.prh_pur_cost": "1.00", "prh_hist.prh_um": "EA",
                "prh_hist.prh_curr": "USD", "prh_hist.prh_domain": "10USA", "prh_hist.prh_qty_ord": "10"
            }]}),
        )
        .await;
    h.clock.advance(Duration::minutes(5));
    let report = h.poller.poll(&h.tenant.id, "test").await.unwrap();
    assert_eq!(report.error, None);
    let trail = h.db.store.audit_trail(&h.tenant.id, "goods_receipt", "RCV-BAD/1").await.unwrap();
    assert_eq!(
        trail[0].detail["error"],
        json!("goods receipt RCV-BAD/1: prh_hist.prh_rcvd \"twelve\" is not a decimal amount")
    );
    let inv =
        h.db.store
            .attention(&h.tenant.id, None)
            .await
            .unwrap()
            .into_iter()
            .find(|a| &a.record_key == voucher)
            .unwrap();
    assert_eq!(
        inv.state, "resolved",
        "the good receipt beside the bad row still resolved its invoice"
    );
}

#[tokio::test]
async fn the_scheduler_polls_due_tenants_and_stops_on_shutdown() {
    let h = harness("sqlite").await;
    let scheduler = Scheduler::new(h.poller.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn({
        let s = scheduler.clone();
        async move { s.run(stopped).await }
    });
    // A tenant that never polled is due at once.
    for _ in 0..200 {
        if !h.db.store.polls(&h.tenant.id, 1).await.unwrap().is_empty() && open_set(&h).await == expected(&h) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(open_set(&h).await, expected(&h));
    stop.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), task)
        .await
        .expect("stops promptly")
        .unwrap();
    let polls = h.db.store.polls(&h.tenant.id, 10).await.unwrap();
    assert_eq!(polls.len(), 1, "not due again until the interval passed (the clock did not move)");
    assert_eq!((polls[0].requested_by.as_str(), polls[0].outcome.as_str()), ("schedule", "ok"));
}

/// The tenant's schedule as stored, bypassing the control plane's checks (a value stored
/// before them, or written by hand).
async fn store_schedule(h: &Harness, every_seconds: u64) {
    let mut s = h.db.store.tenant_settings(&h.tenant.id).await.unwrap();
    s.tenant.schedule.every_seconds = Some(every_seconds);
    h.db.store
        .update_tenant(&s, ml_connector::clock::Clock::now(&*h.clock))
        .await
        .unwrap();
}

/// Run the scheduler while the clock moves a second every 10 ms (a minute of schedule in
/// 0.6 s), waking it each time; the scheduled polls' start times.
async fn scheduled_polls(h: &Harness, clock_seconds: i64) -> Vec<chrono::DateTime<chrono::Utc>> {
    let scheduler = Scheduler::new(h.poller.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn({
        let s = scheduler.clone();
        async move { s.run(stopped).await }
    });
    for _ in 0..clock_seconds {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        h.clock.advance(Duration::seconds(1));
        scheduler.reschedule();
    }
    stop.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
    let mut polls = h.db.store.polls(&h.tenant.id, 1000).await.unwrap();
    polls.reverse();
    polls.iter().map(|p| p.started_at).collect()
}

fn gaps(starts: &[chrono::DateTime<chrono::Utc>]) -> Vec<i64> {
    starts.windows(2).map(|w| (w[1] - w[0]).num_seconds()).collect()
}

/// Issue 22: a schedule of one second (stored before the checks; `every_seconds`
/// u64::MAX once wrapped to −1 s) polled 1,347 times in 14.5 s. Scheduled polls come at
/// most once per minimum interval, whatever is stored.
#[tokio::test]
async fn a_stored_one_second_schedule_polls_at_most_once_a_minute() {
    let h = harness("sqlite").await;
    store_schedule(&h, 1).await;
    let starts = scheduled_polls(&h, 400).await;
    assert!(starts.len() >= 2, "the scheduler ran: {starts:?}");
    assert!(
        starts.len() <= 7,
        "{} polls in 400 s of schedule: {:?}",
        starts.len(),
        gaps(&starts)
    );
    assert!(gaps(&starts).iter().all(|g| *g >= 60), "{:?}", gaps(&starts));
}

/// A failing poll backs off: after each failure in a row the next scheduled one waits twice
/// as long (2, 4, 8 min…), read from the poll history.
#[tokio::test]
async fn failing_polls_back_off_exponentially() {
    let h = harness("sqlite").await;
    store_schedule(&h, 60).await;
    h.qad.control("faults", json!({"fail_browse": data::BROWSE_INVOICES})).await;
    let starts = scheduled_polls(&h, 900).await;
    let polls = h.db.store.polls(&h.tenant.id, 1000).await.unwrap();
    assert!(polls.iter().all(|p| p.outcome == "failed"), "every poll failed");
    let g = gaps(&starts);
    assert!(g.len() >= 2, "{g:?}");
    for (i, gap) in g.iter().enumerate() {
        let want = 60 * (2i64 << i);
        assert!(*gap >= want && *gap < want + 30, "gap {i} is {gap} s, want about {want}: {g:?}");
    }
}

/// A QAD that pages for ever (once: a profile page_size of 0, 3,692 pages) ends the poll at
/// its ceiling of pages, with a clear error in the poll record.
#[tokio::test]
async fn a_qad_that_pages_for_ever_ends_the_poll_at_its_ceiling() {
    let mut h = harness("sqlite").await;
    h.poller.ceiling = ml_connector::qad::Ceiling {
        pages: 25,
        rows: 1_000_000,
    };
    h.qad.control("faults", json!({"endless_paging": true})).await;
    let report = tokio::time::timeout(std::time::Duration::from_secs(60), h.poller.poll(&h.tenant.id, "test"))
        .await
        .expect("the poll ends")
        .unwrap();
    let error = report.error.expect("the poll failed");
    assert!(error.contains("25 pages read and QAD had more, the ceiling is 25 pages"), "{error}");
    assert!(report.qad_requests < 40, "{} requests", report.qad_requests);
    let polls = h.db.store.polls(&h.tenant.id, 1).await.unwrap();
    assert_eq!(polls[0].outcome, "failed");
    assert_eq!(polls[0].error.as_deref(), Some(error.as_str()));
    // The rows ceiling likewise.
    h.poller.ceiling = ml_connector::qad::Ceiling { pages: 1_000, rows: 300 };
    let report = h.poller.poll(&h.tenant.id, "test").await.unwrap();
    assert!(report.error.unwrap().contains("the ceiling is 300 rows"));
}

/// DeleteTenant cancels the tenant's running poll (it calls `Scheduler::cancel` first): the
/// poll ends where it is and its record says why.
#[tokio::test]
async fn cancelling_a_running_poll_ends_it_and_records_why() {
    let h = harness("sqlite").await;
    let scheduler = Scheduler::new(h.poller.clone());
    assert!(!scheduler.cancel(&h.tenant.id).await, "nothing running");
    h.qad.control("faults", json!({"delay_next": 1000, "delay_ms": 200})).await;
    let poll = tokio::spawn({
        let (s, t) = (scheduler.clone(), h.tenant.id.clone());
        async move { s.poll_now(&t, "grpc").await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let started = std::time::Instant::now();
    assert!(scheduler.cancel(&h.tenant.id).await, "a poll was running");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    let report = poll.await.unwrap().unwrap();
    assert_eq!(report.error.as_deref(), Some("cancelled: the tenant was deleted"));
    let polls = h.db.store.polls(&h.tenant.id, 1).await.unwrap();
    assert_eq!(
        (polls[0].outcome.as_str(), polls[0].error.as_deref()),
        ("failed", Some("cancelled: the tenant was deleted"))
    );
    h.qad.control("faults", json!({})).await;
}
