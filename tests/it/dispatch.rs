//! The durable send queue and the dispatcher: each alert sent once, whatever Twilio answers.

use std::collections::HashMap;

use chrono::Duration;
use ml_connector::clock::Clock;
use ml_connector::core::dispatch::send_job_id;
use ml_connector::core::model::RecordKind;
use ml_connector::core::routing::Channel;
use ml_connector::dispatcher::{Dispatcher, SECRET_TWILIO_API_KEY_SECRET, SECRET_TWILIO_API_KEY_SID, SECRET_TWILIO_AUTH_TOKEN};
use ml_connector::secrets::SecretString;
use ml_connector::store::{EpisodeChange, Finish, JobEnd, NewJob, RecordChange, Sent, TwilioAccount};
use ml_connector::twilio_sandbox::{TwilioFaults, TwilioSandbox, TwilioSandboxConfig, TwilioStats};
use ml_connector_tests::{Harness, engines, harness, morning};
use serde_json::json;

async fn with_twilio(h: &Harness) -> (TwilioSandbox, Dispatcher) {
    let sb = TwilioSandbox::new(TwilioSandboxConfig::default());
    let (base, _task) = sb.clone().spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let c = sb.config();
    let s = &h.db.store;
    s.set_twilio_account(
        &h.tenant.id,
        &TwilioAccount {
            account_sid: c.account_sid.clone(),
            from: "+13125550100".into(),
            base_url: base.clone(),
        },
    )
    .await
    .unwrap();
    for (f, v) in [
        (SECRET_TWILIO_API_KEY_SID, &c.api_key_sid),
        (SECRET_TWILIO_API_KEY_SECRET, &c.api_key_secret),
        (SECRET_TWILIO_AUTH_TOKEN, &c.auth_token),
    ] {
        let origin = ml_connector::secrets::Origin::of(&base).unwrap();
        s.set_secret(&h.keys, &h.tenant.id, f, &origin, &SecretString::new(v.clone()), morning())
            .await
            .unwrap();
    }
    // Callbacks go nowhere yet (the webhook side is its own issue): a closed port.
    let d = Dispatcher::new(
        s.clone(),
        h.keys.clone(),
        reqwest::Client::new(),
        h.clock.clone(),
        "http://127.0.0.1:9",
    );
    (sb, d)
}

/// Run the dispatcher until nothing is due now, moving the clock past every retry (never
/// as far as the hour-later escalations).
async fn drain(h: &Harness, d: &Dispatcher) {
    for _ in 0..300 {
        if d.run_once().await.unwrap() == 0 {
            let retrying =
                h.db.store
                    .jobs(&h.tenant.id)
                    .await
                    .unwrap()
                    .iter()
                    .any(|(_, st, attempt)| st == "queued" && *attempt > 0);
            if !retrying {
                return;
            }
            h.clock.advance(Duration::minutes(3));
        }
    }
    panic!("the queue did not drain");
}

#[tokio::test]
async fn enqueueing_twice_is_a_no_op_and_a_late_worker_is_fenced_out() {
    for engine in engines() {
        let h = harness(engine).await;
        let s = &h.db.store;
        let job = NewJob {
            key: "send/t/x/1".into(),
            kind: "send".into(),
            episode: 1,
            payload: json!({}).to_string(),
            run_at: morning(),
            escalation_step: 0,
        };
        for _ in 0..2 {
            let change = RecordChange {
                kind: RecordKind::PurchaseOrder,
                record_key: "PO1".into(),
                seen: None,
                episode: EpisodeChange::None,
                audit: vec![],
                jobs: vec![job.clone()],
            };
            s.apply(&h.tenant.id, &change, morning()).await.unwrap();
        }
        assert_eq!(s.jobs(&h.tenant.id).await.unwrap().len(), 1, "{engine}");
        let first = s.claim_jobs("w1", morning(), Duration::seconds(30), 10).await.unwrap();
        assert_eq!((first.len(), first[0].attempt, first[0].reconcile), (1, 1, false));
        assert!(
            s.claim_jobs("w2", morning(), Duration::seconds(30), 10).await.unwrap().is_empty(),
            "leased"
        );
        // w1 dies; its lease expires; w2 takes the job over, and must reconcile first.
        let later = morning() + Duration::seconds(31);
        let second = s.claim_jobs("w2", later, Duration::seconds(30), 10).await.unwrap();
        assert_eq!((second[0].attempt, second[0].reconcile), (2, true), "{engine}");
        // w1 comes back late: fenced out, changes nothing.
        assert!(!s.finish_job(&first[0], &JobEnd::Done, "sent", &json!({}), later).await.unwrap());
        assert!(
            s.finish_job(&second[0], &JobEnd::Done, "sent", &json!({"sid": "SM1"}), later)
                .await
                .unwrap()
        );
        assert_eq!(s.jobs(&h.tenant.id).await.unwrap()[0].1, "done");
        let trail = s.audit_trail(&h.tenant.id, "purchase_order", "PO1").await.unwrap();
        let events: Vec<&str> = trail.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(events, ["queued", "sent"], "{engine}: the fenced attempt left no trace");
    }
}

/// Group commit keeps each item's meaning: in one batch a job key repeated (within the batch
/// and from an earlier batch) is queued once, and a batch of attempts' ends fences out the
/// late worker's, records the sent one's delivery and requeues the retry, each with its own
/// audit entry in order.
#[tokio::test]
async fn batches_keep_each_records_and_each_attempts_own_outcome() {
    for engine in engines() {
        let h = harness(engine).await;
        let s = &h.db.store;
        let job = |n: u32| NewJob {
            key: format!("send/t/PO{n}/1"),
            kind: "send".into(),
            episode: 1,
            payload: json!({}).to_string(),
            run_at: morning(),
            escalation_step: 0,
        };
        let change = |n: u32, jobs: Vec<NewJob>| RecordChange {
            kind: RecordKind::PurchaseOrder,
            record_key: format!("PO{n}"),
            seen: Some((format!("v{n}"), json!({"n": n}))),
            episode: EpisodeChange::None,
            audit: vec![("routed".into(), json!({"n": n}).to_string())],
            jobs,
        };
        s.apply_batch(&h.tenant.id, &[change(1, vec![job(1)])], morning()).await.unwrap();
        let batch = [change(1, vec![job(1)]), change(2, vec![job(2), job(2)]), change(3, vec![job(3)])];
        s.apply_batch(&h.tenant.id, &batch, morning()).await.unwrap();
        let mut keys: Vec<String> = s.jobs(&h.tenant.id).await.unwrap().into_iter().map(|j| j.0).collect();
        keys.sort();
        assert_eq!(keys, ["send/t/PO1/1", "send/t/PO2/1", "send/t/PO3/1"], "{engine}");
        let tenant = h.tenant.id.as_str();
        let events = |key: &str| {
            let key = key.to_string();
            async move {
                s.audit_trail(tenant, "purchase_order", &key)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.event)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(events("PO1").await, ["routed", "queued", "routed"], "{engine}: queued once");
        assert_eq!(
            events("PO2").await,
            ["routed", "queued"],
            "{engine}: a repeat in the batch is a no-op"
        );
        let versions = s
            .versions(&h.tenant.id, RecordKind::PurchaseOrder, &["PO1".into(), "PO3".into()])
            .await
            .unwrap();
        assert_eq!(versions.get("PO3").map(String::as_str), Some("v3"), "{engine}");

        let claimed = s.claim_jobs("w1", morning(), Duration::seconds(30), 10).await.unwrap();
        assert_eq!(claimed.len(), 3);
        let later = morning() + Duration::seconds(31);
        // PO1's attempt is taken over by w2 before w1 reports it.
        let po1 = claimed.iter().find(|j| j.record_key == "PO1").unwrap().clone();
        let taken = s.claim_jobs("w2", later, Duration::seconds(30), 10).await.unwrap();
        assert_eq!(taken.len(), 3, "every lease expired");
        let by_key = |k: &str| taken.iter().find(|j| j.record_key == k).unwrap().clone();
        let sent = Sent {
            sid: "SM2".into(),
            channel: ml_connector::core::routing::Channel::Sms,
            to: "+13125550100".into(),
            from: "+13125550199".into(),
        };
        let ends = [
            Finish {
                job: po1.into(),
                end: JobEnd::Done,
                event: "sent".into(),
                detail: json!({}),
                sent: None,
            },
            Finish {
                job: by_key("PO2").into(),
                end: JobEnd::Done,
                event: "sent".into(),
                detail: json!({"sid": "SM2"}),
                sent: Some(sent),
            },
            Finish {
                job: by_key("PO3").into(),
                end: JobEnd::Retry {
                    run_at: later + Duration::seconds(5),
                    reconcile: false,
                },
                event: "send_retry".into(),
                detail: json!({}),
                sent: None,
            },
        ];
        assert_eq!(s.finish_sends(&ends, later).await.unwrap(), [false, true, true], "{engine}");
        let states: HashMap<String, String> = s.jobs(&h.tenant.id).await.unwrap().into_iter().map(|(k, st, _)| (k, st)).collect();
        assert_eq!(states["send/t/PO1/1"], "running", "{engine}: w2 still holds PO1");
        assert_eq!(states["send/t/PO2/1"], "done");
        assert_eq!(states["send/t/PO3/1"], "queued");
        let po2 = by_key("PO2");
        assert_eq!(s.delivery(po2.id).await.unwrap().map(|d| d.0), Some(Some("SM2".into())), "{engine}");
        assert_eq!(
            events("PO1").await,
            ["routed", "queued", "routed"],
            "{engine}: the fenced end left no trace"
        );
        assert_eq!(events("PO2").await, ["routed", "queued", "sent"], "{engine}");
        assert_eq!(events("PO3").await, ["routed", "queued", "send_retry"], "{engine}");
    }
}

#[tokio::test]
async fn every_alert_the_plugin_decided_is_sent_once_and_a_second_poll_sends_nothing() {
    for engine in engines() {
        let h = harness(engine).await;
        let (sb, d) = with_twilio(&h).await;
        h.poller.poll(&h.tenant.id, "test").await.unwrap();
        let jobs = h.db.store.jobs(&h.tenant.id).await.unwrap();
        let now: Vec<_> = jobs.iter().filter(|(k, _, _)| k.ends_with("/0")).collect();
        assert!(now.len() > 30);
        drain(&h, &d).await;
        let st = sb.stats();
        assert_eq!(
            (st.messages_created + st.calls_created) as usize,
            now.len(),
            "{engine}: one Twilio create per alert due now"
        );
        h.clock.advance(Duration::minutes(5));
        h.poller.poll(&h.tenant.id, "test").await.unwrap();
        drain(&h, &d).await;
        let after = sb.stats();
        assert_eq!(
            after.messages_created + after.calls_created,
            st.messages_created + st.calls_created,
            "{engine}: nothing sent twice"
        );
        let trail =
            h.db.store
                .audit_trail(&h.tenant.id, "purchase_order", &h.qad.sandbox.story().pending_approval[0])
                .await
                .unwrap();
        assert!(
            trail
                .iter()
                .any(|e| e.event == "sent" && e.detail["sid"].as_str().is_some_and(|s| s.starts_with("CA") || s.starts_with("SM")))
        );
    }
}

#[tokio::test]
async fn a_429_storm_still_sends_every_alert_once() {
    let h = harness("sqlite").await;
    let (sb, d) = with_twilio(&h).await;
    sb.set_faults(TwilioFaults {
        throttle_share: 0.33,
        retry_after: Some(2),
        ..Default::default()
    });
    h.poller.poll(&h.tenant.id, "test").await.unwrap();
    let due =
        h.db.store
            .jobs(&h.tenant.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|(k, _, _)| k.ends_with("/0"))
            .count();
    drain(&h, &d).await;
    let st = sb.stats();
    assert!(st.throttled > 5, "the storm happened: {st:?}");
    assert_eq!((st.messages_created + st.calls_created) as usize, due);
    let mut per_recipient: HashMap<(String, String), usize> = HashMap::new();
    for m in sb.messages().into_iter().chain(sb.calls()) {
        *per_recipient.entry((m.to, m.body)).or_default() += 1;
    }
    assert!(per_recipient.values().all(|n| *n == 1), "no alert twice");
}

#[tokio::test]
async fn an_unknown_outcome_is_reconciled_before_anything_is_sent_again() {
    let h = harness("sqlite").await;
    let (sb, d) = with_twilio(&h).await;
    // Every create answers 503 but was processed: the messages exist.
    sb.set_faults(TwilioFaults {
        fail_share: 1.0,
        fail_processed: true,
        ..Default::default()
    });
    h.poller.poll(&h.tenant.id, "test").await.unwrap();
    d.run_once().await.unwrap();
    let after_storm = sb.stats();
    sb.set_faults(TwilioFaults::default());
    h.clock.advance(Duration::minutes(6));
    drain(&h, &d).await;
    let end = sb.stats();
    assert_eq!(
        end.messages_created, after_storm.messages_created,
        "SMS found in Twilio's list were not sent again"
    );
    let counts = h.db.store.job_counts(&h.tenant.id).await.unwrap();
    assert!(
        counts.get("unknown").copied().unwrap_or(0) > 0,
        "calls whose outcome is unknown stay visible: {counts:?}"
    );
    let trail =
        h.db.store
            .audit_trail(&h.tenant.id, "supplier_invoice", &h.qad.sandbox.story().missing_receipt[0])
            .await
            .unwrap();
    assert!(trail.iter().any(|e| e.event == "outcome_unknown"));
    assert!(trail.iter().any(|e| e.event == "sent" && e.detail["reconciled"].is_string()));
}

#[tokio::test]
async fn an_unknown_call_that_twilio_never_placed_is_placed_once_after_reading_its_call_list() {
    let h = harness("sqlite").await;
    let (sb, d) = with_twilio(&h).await;
    // Every create answers 503 and was not processed: nothing exists at Twilio.
    sb.set_faults(TwilioFaults {
        fail_share: 1.0,
        fail_processed: false,
        ..Default::default()
    });
    h.poller.poll(&h.tenant.id, "test").await.unwrap();
    d.run_once().await.unwrap();
    let after_storm = sb.stats();
    assert_eq!(after_storm.messages_created + after_storm.calls_created, 0);
    sb.set_faults(TwilioFaults::default());
    h.clock.advance(Duration::minutes(6));
    drain(&h, &d).await;

    let jobs = h.db.store.jobs(&h.tenant.id).await.unwrap();
    let calls: Vec<&(String, String, i64)> = jobs.iter().filter(|(k, _, _)| k.contains("/voice/") && k.ends_with("/0")).collect();
    assert!(!calls.is_empty(), "the story has calls due at once: {jobs:?}");
    assert!(
        jobs.iter().all(|(_, st, _)| st != "unknown"),
        "Twilio's lists proved nothing was sent: {jobs:?}"
    );
    let mut placed: HashMap<(String, String), usize> = HashMap::new();
    for c in sb.calls() {
        *placed.entry((c.to, c.body)).or_default() += 1;
    }
    assert_eq!(sb.stats().calls_created as usize, calls.len(), "each due call placed: {jobs:?}");
    assert!(placed.values().all(|n| *n == 1), "no call placed twice: {placed:?}");
    // The list read is in the Twilio traffic, and the call's trail says why it went out.
    assert!(
        sb.raw_requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with("/Calls.json")),
        "the call list was read"
    );
    let (key, _, _) = calls[0];
    let parts: Vec<&str> = key.split('/').collect();
    let record = parts[3..parts.len() - 4].join("/");
    let trail = h.db.store.audit_trail(&h.tenant.id, parts[2], &record).await.unwrap();
    let sent = trail
        .iter()
        .find(|e| e.event == "sent" && e.detail["channel"] == "voice")
        .unwrap_or_else(|| panic!("{key} was sent: {trail:?}"));
    assert!(
        sent.detail["reconciled"].as_str().is_some_and(|r| r.contains("no call")),
        "{sent:?}"
    );
    assert!(sent.detail.get("possible_duplicate").is_none(), "{sent:?}");
}

/// A voice job to `phone` for purchase order `record`, due at `run_at`, with its real job id.
fn call_job(tenant: &str, record: &str, phone: &str, run_at: chrono::DateTime<chrono::Utc>) -> RecordChange {
    let routed = json!({
        "delivery": {"to": {"role": "buyer", "name": "B", "source": "employee B-07", "phone": phone}, "channel": "voice", "delay_minutes": 0, "escalation_step": 0},
        "message": {"channel": "voice", "say": format!("Purchase order {record} waits for your approval."), "choices": []}
    });
    RecordChange {
        kind: RecordKind::PurchaseOrder,
        record_key: record.into(),
        seen: None,
        episode: EpisodeChange::None,
        audit: vec![],
        jobs: vec![NewJob {
            key: send_job_id(tenant, RecordKind::PurchaseOrder, record, 1, Channel::Voice, phone, 0),
            kind: "send".into(),
            episode: 1,
            payload: routed.to_string(),
            run_at,
            escalation_step: 0,
        }],
    }
}

/// An unknown send, and another to the same number whose create Twilio has processed but not
/// yet answered: a call (PO1 unknown, PO2 held), or an SMS with the same words (SI-1's
/// episode 2 unknown, episode 1 held).
struct Race {
    channel: Channel,
    record: (&'static str, &'static str),
    /// The held send's record (the same one for the SMS: another episode of it).
    held_record: &'static str,
    unknown: fn(&str, &str, chrono::DateTime<chrono::Utc>) -> RecordChange,
    held: fn(&str, &str, chrono::DateTime<chrono::Utc>) -> RecordChange,
    held_id: &'static str,
    created: fn(&TwilioStats) -> u64,
}

const SAME_WORDS: &str = "Invoice SI-1 is held: no goods receipt for PO10010 yet.";

#[tokio::test]
async fn an_unknown_send_waits_while_another_to_its_number_is_being_placed() {
    let races = [
        Race {
            channel: Channel::Voice,
            record: ("purchase_order", "PO1"),
            held_record: "PO2",
            unknown: |t, phone, at| call_job(t, "PO1", phone, at),
            held: |t, phone, at| call_job(t, "PO2", phone, at),
            held_id: "/PO2/",
            created: |s| s.calls_created,
        },
        Race {
            channel: Channel::Sms,
            record: ("supplier_invoice", "SI-1"),
            held_record: "SI-1",
            unknown: |t, phone, at| sms_job(t, "SI-1", 2, phone, SAME_WORDS, at),
            held: |t, phone, at| sms_job(t, "SI-1", 1, phone, SAME_WORDS, at),
            held_id: "/SI-1/1/",
            created: |s| s.messages_created,
        },
    ];
    for engine in engines() {
        for race in &races {
            let h = harness(engine).await;
            let (sb, mut d) = with_twilio(&h).await;
            let ch = race.channel.as_str();
            let (kind, record) = race.record;
            // Long leases: the clock moves past the unknown send's retry while the other is held.
            d.lease = Duration::hours(1);
            let phone = "+13125550140";
            // The first create answers 503 unprocessed: its outcome is unknown, to be reconciled.
            sb.set_faults(TwilioFaults {
                fail_share: 1.0,
                fail_processed: false,
                ..Default::default()
            });
            h.db.store
                .apply(&h.tenant.id, &(race.unknown)(&h.tenant.id, phone, morning()), morning())
                .await
                .unwrap();
            assert_eq!(d.run_once().await.unwrap(), 1);
            assert_eq!((race.created)(&sb.stats()), 0, "{engine} {ch}");
            let jobs = h.db.store.jobs(&h.tenant.id).await.unwrap();
            assert_eq!(jobs[0].1, "queued", "{engine} {ch}: to be reconciled: {jobs:?}");
            let unknown_id = jobs[0].0.clone();

            // The other send to the number is created at Twilio, its answer held: listed, not recorded.
            sb.set_faults(TwilioFaults {
                hold_answers: true,
                ..Default::default()
            });
            let now = h.clock.now();
            h.db.store
                .apply(&h.tenant.id, &(race.held)(&h.tenant.id, phone, now), now)
                .await
                .unwrap();
            let placing = tokio::spawn({
                let d = d.clone();
                async move { d.run_once().await.unwrap() }
            });
            for _ in 0..1000 {
                if (race.created)(&sb.stats()) == 1 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!((race.created)(&sb.stats()), 1, "{engine} {ch}: the other send exists at Twilio");

            // Another host reconciles the unknown one now: what Twilio lists may be the other's.
            h.clock.advance(Duration::minutes(6));
            let other_host = Dispatcher::new(
                h.db.store.clone(),
                h.keys.clone(),
                reqwest::Client::new(),
                h.clock.clone(),
                "http://127.0.0.1:9",
            );
            assert_eq!(other_host.run_once().await.unwrap(), 1, "{engine} {ch}: the unknown send was due");
            let jobs = h.db.store.jobs(&h.tenant.id).await.unwrap();
            let state = |jobs: &[(String, String, i64)]| jobs.iter().find(|(k, _, _)| *k == unknown_id).unwrap().1.clone();
            assert_eq!(
                state(&jobs),
                "queued",
                "{engine} {ch}: it waits, neither unknown nor sent: {jobs:?}"
            );
            assert_eq!((race.created)(&sb.stats()), 1, "{engine} {ch}");
            let trail = h.db.store.audit_trail(&h.tenant.id, kind, record).await.unwrap();
            let waited = trail.last().unwrap();
            assert_eq!(
                (waited.event.as_str(), waited.detail["job"].as_str()),
                ("outcome_unknown", Some(unknown_id.as_str())),
                "{engine} {ch}: {trail:?}"
            );
            assert!(
                waited.detail["why"]
                    .as_str()
                    .is_some_and(|w| w.contains(race.held_id) && w.contains("being")),
                "{engine} {ch}: the wait names the send it waits for: {waited:?}"
            );

            // The other's answer arrives and is recorded; the next look finds what is listed is its.
            sb.set_faults(TwilioFaults::default());
            assert_eq!(placing.await.unwrap(), 1);
            drain(&h, &d).await;
            let jobs = h.db.store.jobs(&h.tenant.id).await.unwrap();
            assert!(jobs.iter().all(|(_, st, _)| st == "done"), "{engine} {ch}: {jobs:?}");
            assert_eq!((race.created)(&sb.stats()), 2, "{engine} {ch}: each sent once");
            let trail = h.db.store.audit_trail(&h.tenant.id, kind, record).await.unwrap();
            let sent = trail
                .iter()
                .find(|e| e.event == "sent" && e.detail["job"] == unknown_id.as_str())
                .unwrap_or_else(|| panic!("{engine} {ch}: {trail:?}"));
            assert!(
                sent.detail["reconciled"].as_str().is_some_and(|r| r.starts_with("no ")),
                "{engine} {ch}: {sent:?}"
            );
            assert!(sent.detail.get("possible_duplicate").is_none(), "{sent:?}");
            let mut sids = std::collections::BTreeSet::new();
            for r in std::collections::BTreeSet::from([record, race.held_record]) {
                for e in h.db.store.audit_trail(&h.tenant.id, kind, r).await.unwrap() {
                    if e.event == "sent" {
                        assert!(
                            sids.insert(e.detail["sid"].as_str().unwrap().to_string()),
                            "{engine} {ch}: one sid twice: {e:?}"
                        );
                    }
                }
            }
            assert_eq!(sids.len(), 2, "{engine} {ch}: each send its own Twilio resource: {sids:?}");
        }
    }
}

/// An SMS job to `phone` for supplier invoice `record` in `episode`, due at `run_at`.
fn sms_job(tenant: &str, record: &str, episode: i64, phone: &str, body: &str, run_at: chrono::DateTime<chrono::Utc>) -> RecordChange {
    let routed = json!({
        "delivery": {"to": {"role": "ap_clerk", "name": "C", "source": "employee C-01", "phone": phone}, "channel": "sms", "delay_minutes": 0, "escalation_step": 0},
        "message": {"channel": "sms", "body": body}
    });
    RecordChange {
        kind: RecordKind::SupplierInvoice,
        record_key: record.into(),
        seen: None,
        episode: EpisodeChange::None,
        audit: vec![],
        jobs: vec![NewJob {
            key: send_job_id(tenant, RecordKind::SupplierInvoice, record, episode, Channel::Sms, phone, 0),
            kind: "send".into(),
            episode,
            payload: routed.to_string(),
            run_at,
            escalation_step: 0,
        }],
    }
}

#[tokio::test]
async fn an_unknown_sms_is_not_proven_sent_by_an_earlier_message_with_the_same_words() {
    for engine in engines() {
        let h = harness(engine).await;
        let (sb, d) = with_twilio(&h).await;
        let (phone, body) = ("+13125550130", SAME_WORDS);
        // Episode 1's alert goes out; the record recurs the same morning with the same words.
        h.db.store
            .apply(&h.tenant.id, &sms_job(&h.tenant.id, "SI-1", 1, phone, body, morning()), morning())
            .await
            .unwrap();
        drain(&h, &d).await;
        assert_eq!(sb.stats().messages_created, 1, "{engine}");
        h.clock.advance(Duration::hours(2));
        let now = h.clock.now();
        sb.set_faults(TwilioFaults {
            fail_share: 1.0,
            fail_processed: false,
            ..Default::default()
        });
        h.db.store
            .apply(&h.tenant.id, &sms_job(&h.tenant.id, "SI-1", 2, phone, body, now), now)
            .await
            .unwrap();
        assert_eq!(d.run_once().await.unwrap(), 1);
        sb.set_faults(TwilioFaults::default());
        drain(&h, &d).await;

        // Twilio's list holds episode 1's message with the same words: it is that delivery's,
        // so it proves nothing about episode 2's, which is sent.
        assert_eq!(sb.stats().messages_created, 2, "{engine}: episode 2's alert was sent");
        let jobs = h.db.store.jobs(&h.tenant.id).await.unwrap();
        assert!(jobs.iter().all(|(_, st, _)| st == "done"), "{engine}: {jobs:?}");
        let trail = h.db.store.audit_trail(&h.tenant.id, "supplier_invoice", "SI-1").await.unwrap();
        let sids: Vec<&str> = trail
            .iter()
            .filter(|e| e.event == "sent")
            .filter_map(|e| e.detail["sid"].as_str())
            .collect();
        assert_eq!(sids.len(), 2, "{engine}: {trail:?}");
        assert_ne!(sids[0], sids[1], "{engine}: each episode's alert is its own message");
    }
}

#[tokio::test]
async fn an_unknown_sms_still_in_the_senders_queue_is_found_and_not_sent_again() {
    for engine in engines() {
        let h = harness(engine).await;
        let (sb, d) = with_twilio(&h).await;
        // Twilio answers 503 but created the message, which waits in the sender's queue.
        sb.set_faults(TwilioFaults {
            fail_share: 1.0,
            fail_processed: true,
            queue_messages: true,
            ..Default::default()
        });
        let phone = "+13125550130";
        h.db.store
            .apply(
                &h.tenant.id,
                &sms_job(&h.tenant.id, "SI-1", 1, phone, SAME_WORDS, morning()),
                morning(),
            )
            .await
            .unwrap();
        assert_eq!(d.run_once().await.unwrap(), 1);
        assert_eq!(sb.stats().messages_created, 1, "{engine}");
        sb.set_faults(TwilioFaults {
            queue_messages: true,
            ..Default::default()
        });
        h.clock.advance(Duration::minutes(6));
        drain(&h, &d).await;
        assert_eq!(
            sb.stats().messages_created,
            1,
            "{engine}: the queued message was found, not sent again"
        );
        let jobs = h.db.store.jobs(&h.tenant.id).await.unwrap();
        assert_eq!(jobs[0].1, "done", "{engine}: {jobs:?}");
        let trail = h.db.store.audit_trail(&h.tenant.id, "supplier_invoice", "SI-1").await.unwrap();
        let sent = trail
            .iter()
            .find(|e| e.event == "sent")
            .unwrap_or_else(|| panic!("{engine}: {trail:?}"));
        assert_eq!(sent.detail["reconciled"], "found in Twilio's message list", "{engine}: {sent:?}");
        assert_eq!(sent.detail["sid"], sb.messages()[0].sid.as_str());
    }
}

#[tokio::test]
async fn an_opted_out_number_is_suppressed_and_never_texted_again() {
    let h = harness("sqlite").await;
    let (_sb, d) = with_twilio(&h).await;
    let routed = |step: u8| {
        json!({"delivery": {"to": {"role": "buyer", "name": "B", "source": "x", "phone": "+15005550004"}, "channel": "sms", "delay_minutes": 0, "escalation_step": step},
               "message": {"channel": "sms", "body": "hello"}})
    };
    for step in [0, 1] {
        let change = RecordChange {
            kind: RecordKind::PurchaseOrder,
            record_key: "PO9".into(),
            seen: None,
            episode: EpisodeChange::None,
            audit: vec![],
            jobs: vec![NewJob {
                key: format!("send/x/{step}"),
                kind: "send".into(),
                episode: 1,
                payload: routed(step).to_string(),
                run_at: morning(),
                escalation_step: step,
            }],
        };
        h.db.store.apply(&h.tenant.id, &change, morning()).await.unwrap();
        d.run_once().await.unwrap();
    }
    assert!(h.db.store.is_suppressed(&h.tenant.id, "+15005550004").await.unwrap());
    let events: Vec<String> =
        h.db.store
            .audit_trail(&h.tenant.id, "purchase_order", "PO9")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
    assert_eq!(events, ["queued", "send_failed", "queued", "send_skipped"]);
}

/// A job whose payload is not what its kind needs (a hand-made or corrupted row) fails on its
/// record, naming the job and the cause; nothing reaches Twilio for it, and the sound job
/// beside it is sent.
#[tokio::test]
async fn a_payload_that_is_not_a_delivery_fails_by_name_and_the_rest_is_sent() {
    let h = harness("sqlite").await;
    let (sb, d) = with_twilio(&h).await;
    let sound = json!({"delivery": {"to": {"role": "buyer", "name": "B", "source": "x", "phone": "+13125550121"}, "channel": "sms", "delay_minutes": 0, "escalation_step": 0},
                       "message": {"channel": "sms", "body": "hello"}});
    let jobs = [
        ("send/bad/no-delivery", "send", json!({"n": 1}).to_string()),
        ("confirm/bad/not-an-object", "confirm", json!("just text").to_string()),
        ("send/good", "send", sound.to_string()),
    ];
    let change = RecordChange {
        kind: RecordKind::PurchaseOrder,
        record_key: "PO7".into(),
        seen: None,
        episode: EpisodeChange::None,
        audit: vec![],
        jobs: jobs
            .iter()
            .map(|(key, kind, payload)| NewJob {
                key: key.to_string(),
                kind: kind.to_string(),
                episode: 1,
                payload: payload.clone(),
                run_at: morning(),
                escalation_step: 0,
            })
            .collect(),
    };
    h.db.store.apply(&h.tenant.id, &change, morning()).await.unwrap();
    assert_eq!(d.run_once().await.unwrap(), 3);
    let states: HashMap<String, String> =
        h.db.store
            .jobs(&h.tenant.id)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, st, _)| (k, st))
            .collect();
    assert_eq!(states["send/bad/no-delivery"], "failed");
    assert_eq!(states["confirm/bad/not-an-object"], "failed");
    assert_eq!(states["send/good"], "done");
    let trail = h.db.store.audit_trail(&h.tenant.id, "purchase_order", "PO7").await.unwrap();
    let failed: HashMap<&str, &str> = trail
        .iter()
        .filter(|e| e.event == "send_failed")
        .map(|e| (e.detail["job"].as_str().unwrap(), e.detail["error"].as_str().unwrap()))
        .collect();
    assert_eq!(failed.len(), 2, "{trail:?}");
    assert!(
        failed["send/bad/no-delivery"].starts_with("the job's payload is not a delivery: missing field `delivery`"),
        "{failed:?}"
    );
    assert!(
        failed["confirm/bad/not-an-object"].starts_with("the job's payload is not a delivery: invalid type"),
        "{failed:?}"
    );
    let stats = sb.stats();
    assert_eq!(
        (stats.requests, stats.messages_created),
        (1, 1),
        "only the sound job reached Twilio"
    );
}

#[tokio::test]
async fn escalations_wait_and_are_cancelled_when_the_record_resolves() {
    let h = harness("sqlite").await;
    let (sb, d) = with_twilio(&h).await;
    h.poller.poll(&h.tenant.id, "test").await.unwrap();
    drain(&h, &d).await;
    let st = h.qad.sandbox.story();
    let voucher = &st.missing_receipt[0];
    let escalation =
        h.db.store
            .jobs(&h.tenant.id)
            .await
            .unwrap()
            .into_iter()
            .find(|(k, _, _)| k.contains(voucher.as_str()) && k.ends_with("/1"));
    let (_, state, _) = escalation.expect("a critical invoice escalates to a call");
    assert_eq!(state, "queued", "not due for an hour");
    h.qad.control("receipts", json!({"po": st.invoice_po[voucher]})).await;
    h.clock.advance(Duration::minutes(5));
    h.poller.poll(&h.tenant.id, "test").await.unwrap();
    h.clock.advance(Duration::minutes(90));
    d.run_once().await.unwrap();
    let jobs = h.db.store.jobs(&h.tenant.id).await.unwrap();
    let (_, state, _) = jobs
        .iter()
        .find(|(k, _, _)| k.contains(voucher.as_str()) && k.ends_with("/1"))
        .unwrap();
    assert_eq!(state, "cancelled");
    let trail = h.db.store.audit_trail(&h.tenant.id, "supplier_invoice", voucher).await.unwrap();
    assert!(trail.iter().any(|e| e.event == "alerts_cancelled"));
    let voucher_calls = sb.calls().iter().filter(|c| c.body.contains(voucher.as_str())).count();
    assert_eq!(voucher_calls, 0, "the escalation call for the resolved invoice was never placed");
}

#[tokio::test]
async fn killing_the_host_between_a_post_and_its_commit_never_doubles_an_alert() {
    use ml_connector::sandbox::{connect_twilio, example_tenant, provision_example};
    use ml_connector::secrets::{Keyring, generate_master_key};
    use ml_connector::store::Store;
    use ml_connector_tests::{Qad, TempDir, binary};

    let qad = Qad::start().await;
    let twilio = TwilioSandbox::new(TwilioSandboxConfig::default());
    let (twilio_base, _t) = twilio.clone().spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = TempDir::new("crash");
    let url = format!("sqlite://{}", dir.0.join("crash.db").display());
    let key = generate_master_key();
    let keys = Keyring::new(&key, &[]).unwrap();
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let tenant = example_tenant(&qad.base, &qad.config, 2);
    let now = chrono::Utc::now();
    provision_example(&store, &keys, &tenant, &qad.config, now).await.unwrap();
    connect_twilio(&store, &keys, &tenant.id, &twilio.config(), &twilio_base, now)
        .await
        .unwrap();

    let finished = |jobs: &[(String, String, i64)]| {
        !jobs.is_empty()
            && jobs
                .iter()
                .filter(|(k, _, _)| k.ends_with("/0"))
                .all(|(_, st, _)| ["done", "failed", "unknown", "dead"].contains(&st.as_str()))
    };
    let (mut aborts, mut kills) = (0, 0);
    for round in 0..60 {
        let mut child = tokio::process::Command::new(binary())
            .arg("serve")
            .env("ML_CONNECTOR_DATABASE_URL", &url)
            .env("ML_CONNECTOR_MASTER_KEY", &key)
            .env("ML_CONNECTOR_LOG", "error")
            .env("ML_CONNECTOR_JOB_LEASE_SECONDS", "1")
            // A host killed mid-poll holds the tenant's poll lease until it expires.
            .env("ML_CONNECTOR_POLL_LEASE_SECONDS", "1")
            // Polls every 2 s as the schedule says (a debug build's test override of the minimum).
            .env("ML_CONNECTOR_TEST_POLL_MIN_INTERVAL_SECONDS", "1")
            .env("ML_CONNECTOR_HTTP_ADDR", "127.0.0.1:0")
            .env("ML_CONNECTOR_GRPC_ADDR", "127.0.0.1:0")
            .env("ML_CONNECTOR_METRICS_ADDR", "127.0.0.1:0")
            .env("ML_CONNECTOR_FAULT_ABORT_AFTER_SEND", "7")
            // Few sends in flight at an abort: the others are reconciled on restart without
            // a POST, and too many of those would leave the hook too few sends to fire on.
            .env("ML_CONNECTOR_TWILIO_CONCURRENCY", "2")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Every third round, SIGKILL from outside at an arbitrary moment as well; otherwise
        // wait for the hook's abort however slowly the host starts, unless every alert
        // reached a final state first (then nothing is left to abort on).
        let exited = if round % 3 == 2 {
            let limit = std::time::Duration::from_millis(150 + 97 * round as u64 % 400);
            tokio::time::timeout(limit, child.wait()).await.ok()
        } else {
            let guard = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
            loop {
                tokio::select! {
                    status = child.wait() => break Some(status),
                    _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                        // Final only once a poll has committed every record, not between its batches.
                        let polled = store.polls(&tenant.id, 10).await.unwrap().iter().any(|p| p.outcome == "ok");
                        if (polled && finished(&store.jobs(&tenant.id).await.unwrap())) || tokio::time::Instant::now() > guard {
                            break None;
                        }
                    }
                }
            }
        };
        match exited {
            Some(status) => {
                assert!(!status.unwrap().success(), "serve only stops here by aborting");
                aborts += 1;
            }
            None => {
                child.kill().await.unwrap();
                kills += 1;
            }
        }
        if finished(&store.jobs(&tenant.id).await.unwrap()) {
            break;
        }
    }
    let jobs = store.jobs(&tenant.id).await.unwrap();
    assert!(finished(&jobs), "every alert due now reached a final state: {jobs:?}");
    eprintln!("{aborts} aborts by the fault hook, {kills} kills");
    assert!(
        aborts >= 3,
        "the fault hook fired between POSTs and their commits ({aborts} aborts, {kills} kills)"
    );
    let mut created: HashMap<(String, String), usize> = HashMap::new();
    for m in twilio.messages().into_iter().chain(twilio.calls()) {
        *created.entry((m.to, m.body)).or_default() += 1;
    }
    let doubled: Vec<_> = created.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "alerts created twice at Twilio: {doubled:?}");
    let done = jobs.iter().filter(|(_, st, _)| st == "done").count();
    let unknown = jobs.iter().filter(|(_, st, _)| st == "unknown").count();
    // Each alert: exactly one accepted POST (done), or a visibly unknown outcome, which
    // covers a call killed either side of its POST (created once, or not at all).
    assert!(
        done <= created.len() && created.len() <= done + unknown,
        "{} created for {done} done and {unknown} unknown: {jobs:?}",
        created.len()
    );
    let mut reconciled = 0;
    for a in store.attention(&tenant.id, None).await.unwrap() {
        let trail = store.audit_trail(&tenant.id, &a.kind, &a.record_key).await.unwrap();
        reconciled += trail
            .iter()
            .filter(|e| e.event == "sent" && e.detail["reconciled"].is_string())
            .count();
    }
    assert!(
        reconciled + unknown > 0,
        "sends cut off by a crash were recovered by reconciliation (or left visibly unknown), not resent"
    );
}
