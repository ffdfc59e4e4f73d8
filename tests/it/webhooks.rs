//! Twilio's webhooks into the running host over real HTTP: signatures (checked against the
//! official `twilio` library), durable intake, dedup, statuses that never move back, answers
//! recorded against the QAD record with their confirmations, QAD comments and decisions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Duration as Span;
use ml_connector::clock::Clock;
use ml_connector::core::intake::{self, AnswerRules, DecisionRoles};
use ml_connector::core::model::RecordKind;
use ml_connector::core::signature;
use ml_connector::dispatcher::{Dispatcher, SECRET_TWILIO_AUTH_TOKEN};
use ml_connector::inbox::{DEFAULT_SPOKEN_CONFIRMATION, Inbox};
use ml_connector::secrets::SecretString;
use ml_connector::store::{EpisodeChange, NewJob, RecordChange};
use ml_connector::twilio_sandbox::{Script, TwilioFaults, TwilioSandbox, TwilioSandboxConfig};
use ml_connector::webhooks::{IntakeCounters, WebhookServer};
use ml_connector_tests::{Harness, engines, harness, morning, plugins};
use serde_json::{Value, json};

/// The host's whole loop against both sandboxes: poller, dispatcher, webhook server, inbox.
struct Loop {
    h: Harness,
    sb: TwilioSandbox,
    d: Dispatcher,
    inbox: Inbox,
    /// The host's HTTP base URL (its public URL too: no proxy in between).
    url: String,
    counters: Arc<IntakeCounters>,
}

/// `callbacks_to_host`: whether the Twilio sandbox's callbacks reach the host (else a closed
/// port, for tests that play Twilio themselves).
async fn start(engine: &str, callbacks_to_host: bool) -> Loop {
    let h = harness(engine).await;
    // The example customer's plugin, whose words the scripted people answer.
    ml_connector::sandbox::install_example_plugin(&h.db.store, &plugins(), &h.tenant.id, morning())
        .await
        .unwrap();
    let sb = TwilioSandbox::new(TwilioSandboxConfig::default());
    let (base, _task) = sb.clone().spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let s = &h.db.store;
    ml_connector::sandbox::connect_twilio(s, &h.keys, &h.tenant.id, &sb.config(), &base, morning())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let inbox = Inbox::new(h.poller.clone());
    let server = WebhookServer::new(inbox.clone(), &url);
    let counters = server.counters.clone();
    server.serve(listener);
    let callbacks = if callbacks_to_host {
        url.clone()
    } else {
        "http://127.0.0.1:9".into()
    };
    let d = Dispatcher::new(s.clone(), h.keys.clone(), reqwest::Client::new(), h.clock.clone(), &callbacks);
    sb.set_sms_url(&format!("{callbacks}/twilio/{}/messages/inbound", h.tenant.id));
    Loop {
        h,
        sb,
        d,
        inbox,
        url,
        counters,
    }
}

impl Loop {
    /// Dispatch and process webhooks until nothing is under way: no job due, no event
    /// queued, the sandbox done playing. Retries are brought forward by moving the clock.
    async fn settle(&self) {
        let s = &self.h.db.store;
        for _ in 0..2000 {
            let n = self.d.run_once().await.unwrap() + self.inbox.run_once().await.unwrap();
            if n == 0 && self.sb.idle() && s.work_in_flight(&self.h.tenant.id, self.h.clock.now()).await.unwrap() == 0 {
                let retrying = s
                    .jobs(&self.h.tenant.id)
                    .await
                    .unwrap()
                    .iter()
                    .any(|(_, st, attempt)| st == "queued" && *attempt > 0);
                if !retrying {
                    return;
                }
                self.h.clock.advance(Span::minutes(3));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the loop did not settle");
    }

    async fn post(
        &self,
        tenant: &str,
        path: &str,
        params: &[(String, String)],
        token: &str,
        idempotency: Option<&str>,
    ) -> reqwest::Response {
        let url = format!("{}/twilio/{tenant}/{path}", self.url);
        let mut req = reqwest::Client::new()
            .post(&url)
            .header("x-twilio-signature", signature::sign(token, &url, params))
            .form(params);
        if let Some(t) = idempotency {
            req = req.header("i-twilio-idempotency-token", t);
        }
        req.send().await.unwrap()
    }

    fn token(&self) -> String {
        self.sb.config().auth_token
    }
}

fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn answering(sb: &TwilioSandbox) {
    sb.set_scripts(ml_connector::sandbox::example_answers());
}

async fn events_of(l: &Loop, kind: &str, key: &str) -> Vec<(String, Value)> {
    l.h.db
        .store
        .audit_trail(&l.h.tenant.id, kind, key)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.event, e.detail))
        .collect()
}

#[tokio::test]
async fn the_whole_loop_alerts_are_delivered_answered_confirmed_and_written_back_to_qad() {
    for engine in engines() {
        let l = start(engine, true).await;
        let s = &l.h.db.store;
        let t = &l.h.tenant.id;
        answering(&l.sb);
        // Twilio at its worst: duplicated callbacks, in reverse order.
        l.sb.set_faults(TwilioFaults {
            duplicate_callbacks_share: 0.5,
            reverse_callbacks: true,
            ..Default::default()
        });
        s.set_answer_settings(t, true, true).await.unwrap();
        l.h.poller.poll(t, "test").await.unwrap();
        l.settle().await;

        let st = l.sb.stats();
        let jobs = s.job_counts_by_kind(t).await.unwrap();
        let n = |k: &str, st: &str| jobs.get(&(k.to_string(), st.to_string())).copied().unwrap_or(0);
        let sends = n("send", "done");
        assert!(sends > 30, "{engine}: {jobs:?}");
        assert_eq!(
            n("send", "failed") + n("send", "dead") + n("send", "unknown"),
            0,
            "{engine}: {jobs:?}"
        );
        // Every delivery reached its last status despite duplicates and reversed order.
        let deliveries = s.delivery_statuses(t).await.unwrap();
        assert_eq!(deliveries.len() as i64, sends + n("confirm", "done"), "{engine}");
        for (ch, status, _) in &deliveries {
            let want = if ch == "sms" { "delivered" } else { "completed" };
            assert_eq!(status.as_deref(), Some(want), "{engine}: a status moved back");
        }
        assert!(l.counters.figures().duplicates > 10, "{engine}: {:?}", l.counters.figures());
        assert_eq!(l.counters.figures().forged, 0);
        // Every answer the people gave was recorded once, and each SMS answer confirmed once.
        let answers = (st.replies_sent + st.keypresses_sent) as usize;
        // (Counted as events: one person may answer two alerts of one episode.)
        let answered = s
            .webhooks(t)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.outcome.as_ref().is_some_and(|o| o["result"] == "answered"))
            .count();
        assert!(answers > 40, "{engine}: {st:?}");
        assert_eq!(n("confirm", "done") as u64, st.replies_sent, "{engine}");
        assert_eq!(answered, answers, "{engine}");
        // Calls spoke the plugin's confirmation in the answer to the keypress itself.
        let spoken = l.sb.spoken();
        assert_eq!(spoken.len() as u64, st.calls_created, "{engine}");
        for sp in &spoken {
            assert_eq!(sp.status, 200);
            assert!(
                sp.twiml.contains("<Say>[Lakeshore] PO") && sp.twiml.contains("approved.</Say>"),
                "{}",
                sp.twiml
            );
        }
        // QAD holds a comment for each first alert's final status and each answer, and one
        // decision per PO approved.
        let writes = l.h.qad.control_get("writes").await;
        let comments = writes["transactionComments"].as_array().unwrap();
        assert_eq!(comments.len() as i64, sends + answers as i64, "{engine}");
        assert!(comments.iter().any(|c| c["commentText"].as_str().unwrap().contains("delivered")));
        let approvals = writes["purchaseOrderApprovals"].as_array().unwrap();
        let approved: HashSet<&str> = approvals.iter().map(|a| a["purchaseOrderNumber"].as_str().unwrap()).collect();
        assert_eq!(approved.len(), approvals.len(), "{engine}: one decision per PO");
        assert_eq!(approvals.len(), 7, "{engine}: the seven POs pending approval");
        // The audit trail of one PO tells the story in order.
        let po = approvals[0]["purchaseOrderNumber"].as_str().unwrap();
        let trail: Vec<String> = events_of(&l, "purchase_order", po).await.into_iter().map(|e| e.0).collect();
        for want in ["needs_attention", "sent", "delivery_status", "answer", "qad_written"] {
            assert!(trail.iter().any(|e| e == want), "{engine}: {po} trail {trail:?} lacks {want}");
        }
        // The loop closes: QAD now says Approved, so the next poll resolves those POs.
        l.h.clock.advance(Span::minutes(5));
        l.h.poller.poll(t, "test").await.unwrap();
        let open: HashSet<String> = s
            .attention(t, Some("open"))
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.record_key)
            .collect();
        assert!(approved.iter().all(|po| !open.contains(*po)), "{engine}: {open:?}");
        // Nothing is sent twice: the sandbox created exactly the alerts and confirmations.
        assert_eq!(
            st.messages_created + st.calls_created,
            (sends + n("confirm", "done")) as u64,
            "{engine}"
        );
    }
}

#[tokio::test]
async fn a_forged_or_cross_tenant_webhook_gets_403_and_changes_nothing() {
    let engine = engines()[0];
    let l = start(engine, false).await;
    let s = &l.h.db.store;
    let mut other = l.h.tenant.clone();
    other.id = "other".into();
    s.create_tenant(&other, morning()).await.unwrap();
    s.set_secret(
        &l.h.keys,
        "other",
        SECRET_TWILIO_AUTH_TOKEN,
        &ml_connector::secrets::Origin::of(ml_connector::twilio::DEFAULT_BASE_URL).unwrap(),
        &SecretString::new("another-tenants-auth-token-000"),
        morning(),
    )
    .await
    .unwrap();
    let status = p(&[("MessageSid", "SM1"), ("MessageStatus", "delivered"), ("To", "+13125550120")]);
    // Tenant B's token on tenant A's path, and the other way round.
    let r = l
        .post(&l.h.tenant.id, "messages/status", &status, "another-tenants-auth-token-000", None)
        .await;
    assert_eq!(r.status(), 403);
    let r = l.post("other", "messages/status", &status, &l.token(), None).await;
    assert_eq!(r.status(), 403);
    // No signature at all; an unknown tenant; a signature over another URL.
    let url = format!("{}/twilio/{}/messages/status", l.url, l.h.tenant.id);
    let r = reqwest::Client::new().post(&url).form(&status).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = l.post("nobody", "messages/status", &status, &l.token(), None).await;
    assert_eq!(r.status(), 403);
    let r = reqwest::Client::new()
        .post(&url)
        .header("x-twilio-signature", signature::sign(&l.token(), "http://elsewhere/", &status))
        .form(&status)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(l.counters.figures().forged, 5);
    assert!(s.webhooks(&l.h.tenant.id).await.unwrap().is_empty());
    assert!(s.webhooks("other").await.unwrap().is_empty());
    // The same request, properly signed, is taken.
    let r = l.post(&l.h.tenant.id, "messages/status", &status, &l.token(), None).await;
    assert_eq!(r.status(), 204);
    assert_eq!(s.webhooks(&l.h.tenant.id).await.unwrap().len(), 1);
}

/// Random parameter sets signed by the official `twilio` library: every one accepted; the
/// same with one byte changed (in the URL, a name, a value or the signature): every one 403.
#[tokio::test]
async fn the_official_library_signs_what_the_host_accepts_and_a_changed_byte_is_refused() {
    let engine = engines()[0];
    let l = start(engine, false).await;
    let base = format!("{}/twilio/{}/messages/status", l.url, l.h.tenant.id);
    let script = r#"
import json, random, sys
from twilio.request_validator import RequestValidator
a = json.loads(sys.argv[1])
rnd = random.Random(a["seed"])
alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 +-_.:/?&=%éü✓"
out = []
for i in range(a["n"]):
    params = {"MessageSid": "SM%032x" % rnd.getrandbits(128), "MessageStatus": rnd.choice(["sent", "delivered", "undelivered"])}
    for _ in range(rnd.randint(0, 8)):
        name = "".join(rnd.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij") for _ in range(rnd.randint(1, 12)))
        params[name] = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 30)))
    url = a["base"] + ("?delivery=%d" % rnd.randint(1, 10**6) if rnd.random() < 0.7 else "")
    out.append({"url": url, "params": sorted(params.items()), "sig": RequestValidator(a["token"]).compute_signature(url, params)})
print(json.dumps(out))
"#;
    let arg = json!({"seed": 20261127, "n": 60, "base": base, "token": l.token()}).to_string();
    let out = std::process::Command::new("python3")
        .args(["-c", script, &arg])
        .output()
        .expect("python3 with the twilio library (cargo xtask test installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cases: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cases.len(), 60);
    let http = reqwest::Client::new();
    let send = |url: String, params: Vec<(String, String)>, sig: String| {
        let http = http.clone();
        async move {
            http.post(url)
                .header("x-twilio-signature", sig)
                .form(&params)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for (i, c) in cases.iter().enumerate() {
        let url = c["url"].as_str().unwrap().to_string();
        let params: Vec<(String, String)> = serde_json::from_value(c["params"].clone()).unwrap();
        let sig = c["sig"].as_str().unwrap().to_string();
        assert_eq!(send(url.clone(), params.clone(), sig.clone()).await, 204, "case {i}: {c}");
        // One byte changed, in a different place each time.
        let (mut url2, mut params2, mut sig2) = (url.clone(), params.clone(), sig.clone());
        let flip = |s: &mut String, at: usize| {
            let mut b = std::mem::take(s).into_bytes();
            let at = at % b.len();
            b[at] = if b[at] == b'x' { b'y' } else { b'x' };
            *s = String::from_utf8_lossy(&b).into_owned();
        };
        match i % 4 {
            // In the query (a path changed is another route: 404, not this test's point).
            0 if url.contains('?') => flip(&mut url2, url.len() - 1 - i % 3),
            0 => flip(&mut sig2, i % 20),
            1 => flip(&mut params2[i % params.len()].1, i + 1),
            2 => flip(&mut params2[i % params.len()].0, i),
            _ => flip(&mut sig2, i % 20),
        }
        if params2[i % params.len()].1.is_empty() && i % 4 == 1 {
            params2[i % params.len()].1.push('x');
        }
        assert_eq!(send(url2, params2, sig2).await, 403, "case {i} changed: {c}");
    }
    let f = l.counters.figures();
    assert_eq!((f.accepted, f.forged), (60, 60));
}

/// Thousands of webhooks at the running host, 32 at a time: a tenth duplicated (same
/// idempotency token), a tenth of the deliveries' statuses in reverse order, some forged.
/// Final states are exact, forgeries 403, nothing lost.
#[tokio::test]
async fn a_flood_of_callbacks_with_duplicates_reorderings_and_forgeries_lands_exactly() {
    for engine in engines() {
        let l = start(engine, false).await;
        let s = &l.h.db.store;
        let t = l.h.tenant.id.clone();
        l.h.poller.poll(&t, "test").await.unwrap();
        l.settle().await;
        let sent: Vec<(i64, String, String)> = sqlx_jobs(&l).await;
        assert!(sent.len() > 30);
        struct Hook {
            path: String,
            params: Vec<(String, String)>,
            token: String,
        }
        let mut hooks = Vec::new();
        let mut rng = 17u64;
        let mut roll = move || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) % 100
        };
        for (i, (job, sid, to)) in sent.iter().enumerate() {
            let mut statuses = vec!["queued", "sending", "sent", "delivered"];
            if i % 10 == 0 {
                statuses.reverse();
            }
            for st in statuses {
                hooks.push(Hook {
                    path: format!("messages/status?delivery={job}"),
                    params: p(&[("MessageSid", sid), ("MessageStatus", st), ("To", to), ("From", "+13125550100")]),
                    token: format!("tok-{sid}-{st}"),
                });
            }
        }
        // Replies from numbers no alert went to: each processed once, the tenant's hourly
        // limit of them kept, the rest counted and dropped.
        for i in 0..1700 {
            hooks.push(Hook {
                path: "messages/inbound".into(),
                params: p(&[
                    ("MessageSid", &format!("SMin{i:030}")),
                    ("From", &format!("+1555{i:07}")),
                    ("To", "+13125550100"),
                    ("Body", &format!("reply number {i}")),
                ]),
                token: format!("tok-in-{i}"),
            });
        }
        let distinct = hooks.len();
        let mut requests = Vec::new();
        for h in &hooks {
            requests.push((h.path.clone(), h.params.clone(), h.token.clone(), false));
            match roll() {
                0..=9 => requests.push((h.path.clone(), h.params.clone(), h.token.clone(), false)),
                10..=14 => requests.push((h.path.clone(), h.params.clone(), format!("{}-forged", h.token), true)),
                _ => {}
            }
        }
        let forged = requests.iter().filter(|r| r.3).count();
        assert!(requests.len() > 2000 && forged > 50, "{} requests, {forged} forged", requests.len());
        let http = reqwest::Client::new();
        let token = l.token();
        let results: Vec<(bool, u16)> = futures_chunks(&requests, 32, |(path, params, idem, forged)| {
            let url = format!("{}/twilio/{t}/{path}", l.url);
            let sig_token = if *forged { "not-the-auth-token".to_string() } else { token.clone() };
            let sig = signature::sign(&sig_token, &url, params);
            let req = http
                .post(url)
                .header("x-twilio-signature", sig)
                .header("i-twilio-idempotency-token", idem.clone())
                .form(params);
            let forged = *forged;
            async move { (forged, req.send().await.unwrap().status().as_u16()) }
        })
        .await;
        for (forged, status) in &results {
            assert_eq!(*status == 403, *forged, "{engine}: status {status}");
        }
        l.settle().await;
        let f = l.counters.figures();
        assert_eq!(f.accepted as usize, distinct, "{engine}: {f:?}");
        assert_eq!(f.forged as usize, forged, "{engine}");
        assert_eq!(
            s.webhooks(&t).await.unwrap().len(),
            distinct,
            "{engine}: nothing lost, nothing doubled"
        );
        let sms: Vec<_> = s
            .delivery_statuses(&t)
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.0 == "sms")
            .collect();
        assert_eq!(sms.len(), sent.len(), "{engine}");
        for (_, status, _) in sms {
            assert_eq!(status.as_deref(), Some("delivered"), "{engine}: a status moved back");
        }
        let outcomes: Vec<Value> = s
            .webhooks(&t)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.outcome.unwrap()["result"].clone())
            .collect();
        let count = |r: &str| outcomes.iter().filter(|o| *o == r).count() as i64;
        assert_eq!(count("unmatched"), intake::UNMATCHED_PER_TENANT, "{engine}");
        assert_eq!(count("unmatched") + count("dropped"), 1700, "{engine}");
        assert_eq!(
            s.unmatched_replies(&t).await.unwrap().len() as i64,
            intake::UNMATCHED_PER_TENANT,
            "{engine}"
        );
    }
}

/// The done SMS sends: (job id, sid, to).
async fn sqlx_jobs(l: &Loop) -> Vec<(i64, String, String)> {
    let mut out = Vec::new();
    for w in l.sb.messages() {
        let job: i64 = w
            .status_callback
            .as_deref()
            .and_then(|u| u.rsplit_once("delivery="))
            .unwrap()
            .1
            .parse()
            .unwrap();
        out.push((job, w.sid, w.to));
    }
    out
}

async fn futures_chunks<T, F, Fut, R>(items: &[T], width: usize, f: F) -> Vec<R>
where
    F: Fn(&T) -> Fut,
    Fut: std::future::Future<Output = R> + Send + 'static,
    R: Send + 'static,
{
    let mut out = Vec::new();
    for chunk in items.chunks(width) {
        let mut set = tokio::task::JoinSet::new();
        for (i, item) in chunk.iter().enumerate() {
            let fut = f(item);
            set.spawn(async move { (i, fut.await) });
        }
        let mut got: Vec<(usize, R)> = Vec::new();
        while let Some(r) = set.join_next().await {
            got.push(r.unwrap());
        }
        got.sort_by_key(|g| g.0);
        out.extend(got.into_iter().map(|g| g.1));
    }
    out
}

#[tokio::test]
async fn stop_start_unmatched_replies_unproven_approvals_and_cancelled_escalations() {
    for engine in engines() {
        let l = start(engine, false).await;
        let s = &l.h.db.store;
        let t = l.h.tenant.id.clone();
        s.set_answer_settings(&t, true, true).await.unwrap();
        l.h.poller.poll(&t, "test").await.unwrap();
        l.settle().await;
        let token = l.token();
        let ours = "+13125550100";
        // A PO's SMS alert: its person, the record, and the reference.
        let po_sms = l.sb.messages().into_iter().find(|m| m.body.contains("awaits approval")).unwrap();
        let code = ml_connector::core::intake::reference_candidates(&po_sms.body).pop().unwrap();
        let po = po_sms.body.split_whitespace().nth(1).unwrap().to_string();
        let person = po_sms.to.clone();
        let inbound = |sid: &str, from: &str, body: &str| p(&[("MessageSid", sid), ("From", from), ("To", ours), ("Body", body)]);
        // An answer without a reference goes to the latest alert sent to that person (the
        // clock stands still here, so "latest" is the store's tie-break: the newest job).
        let job_id = s.latest_alert_to(&t, &person, ours).await.unwrap().unwrap();
        let job = s.job_info(&t, job_id).await.unwrap().unwrap();
        let (kind, latest_key, episode) = (RecordKind::parse(&job.record_kind).unwrap(), job.record_key.clone(), job.episode);

        // An escalation of that record's episode, due in 30 minutes.
        let esc = RecordChange {
            kind,
            record_key: latest_key.clone(),
            seen: None,
            episode: EpisodeChange::None,
            audit: vec![],
            jobs: vec![NewJob {
                key: format!("send/{t}/{}/{latest_key}/{episode}/voice/{person}/1", kind.as_str()),
                kind: "send".into(),
                episode,
                payload: json!({}).to_string(),
                run_at: l.h.clock.now() + Span::minutes(30),
                escalation_step: 1,
            }],
        };
        s.apply(&t, &esc, l.h.clock.now()).await.unwrap();

        // "approve" without the code: not a decision (a sender's number can be spoofed).
        let r = l
            .post(&t, "messages/inbound", &inbound("SMr1", &person, "approve"), &token, None)
            .await;
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("<Response/>"));
        l.settle().await;
        let trail = events_of(&l, kind.as_str(), &latest_key).await;
        let answer = trail.iter().rev().find(|e| e.0 == "answer").unwrap();
        assert_ne!(answer.1["action"], "approve", "{engine}: {answer:?}");
        assert_eq!(answer.1["reference_given"], false);
        // Only a proven answer cancels escalations: a spoofed reply cannot silence an alert.
        assert_eq!(answer.1["cancels_escalations"], false, "{engine}: {answer:?}");
        assert!(
            !trail.iter().any(|e| e.0 == "alerts_cancelled"),
            "{engine}: an unproven reply cancelled escalations"
        );
        let state_of = |jobs: Vec<(String, String, i64)>, key: &str| jobs.into_iter().find(|j| j.0 == key).map(|j| j.1);
        assert_eq!(
            state_of(s.jobs(&t).await.unwrap(), &esc.jobs[0].key).as_deref(),
            Some("queued"),
            "{engine}"
        );
        let jobs: HashMap<String, String> = s.jobs(&t).await.unwrap().into_iter().map(|(k, st, _)| (k, st)).collect();
        assert!(
            !jobs.keys().any(|k| k.starts_with("decision/")),
            "{engine}: no decision without the code"
        );
        // The same person quoting that alert's reference: proven, the escalation is cancelled.
        let latest_ref = job.payload["alert"]["reference"].as_str().unwrap().to_string();
        l.post(
            &t,
            "messages/inbound",
            &inbound("SMr1b", &person, &format!("seen {latest_ref}")),
            &token,
            None,
        )
        .await;
        l.settle().await;
        assert_eq!(
            state_of(s.jobs(&t).await.unwrap(), &esc.jobs[0].key).as_deref(),
            Some("cancelled"),
            "{engine}"
        );
        assert!(
            events_of(&l, kind.as_str(), &latest_key)
                .await
                .iter()
                .any(|e| e.0 == "alerts_cancelled"),
            "{engine}"
        );
        // A tenant that allows it lets an unproven answer cancel them too.
        let mut esc2 = esc.clone();
        esc2.jobs[0].key = format!("{}/2", esc.jobs[0].key);
        esc2.jobs[0].escalation_step = 2;
        s.apply(&t, &esc2, l.h.clock.now()).await.unwrap();
        let mut rules = s.answer_rules(&t).await.unwrap();
        rules.unproven_answers_cancel_escalations = true;
        s.set_answer_rules(&t, &rules).await.unwrap();
        l.post(&t, "messages/inbound", &inbound("SMr1c", &person, "ok"), &token, None).await;
        l.settle().await;
        assert_eq!(
            state_of(s.jobs(&t).await.unwrap(), &esc2.jobs[0].key).as_deref(),
            Some("cancelled"),
            "{engine}"
        );
        rules.unproven_answers_cancel_escalations = false;
        s.set_answer_rules(&t, &rules).await.unwrap();

        // With the code: approved, executed in QAD once, even when Twilio retries the request.
        let with_code = inbound("SMr2", &person, &format!("APPROVE {code}"));
        for _ in 0..2 {
            let r = l.post(&t, "messages/inbound", &with_code, &token, Some("retry-token-1")).await;
            assert_eq!(r.status(), 200);
        }
        l.settle().await;
        let writes = l.h.qad.control_get("writes").await;
        let approvals = writes["purchaseOrderApprovals"].as_array().unwrap();
        assert_eq!(approvals.len(), 1, "{engine}: {approvals:?}");
        assert_eq!(
            (approvals[0]["purchaseOrderNumber"].as_str(), approvals[0]["action"].as_str()),
            (Some(po.as_str()), Some("approve"))
        );

        // STOP: on the suppression list, confirmations and alerts by SMS no longer go to them.
        let r = l
            .post(&t, "messages/inbound", &inbound("SMr3", &person, "Stop"), &token, None)
            .await;
        assert_eq!(r.status(), 200);
        l.settle().await;
        assert!(s.is_suppressed(&t, &person).await.unwrap(), "{engine}");
        let before = l.sb.stats().messages_created;
        let r = l
            .post(
                &t,
                "messages/inbound",
                &inbound("SMr4", &person, &format!("seen {code}")),
                &token,
                None,
            )
            .await;
        assert_eq!(r.status(), 200);
        l.settle().await;
        assert_eq!(l.sb.stats().messages_created, before, "{engine}: no SMS to a number that said STOP");
        let trail = events_of(&l, "purchase_order", &po).await;
        assert!(trail.iter().any(|e| e.0 == "confirmation_skipped"), "{engine}");
        // START takes them off the list.
        l.post(&t, "messages/inbound", &inbound("SMr5", &person, "START"), &token, None)
            .await;
        l.settle().await;
        assert!(!s.is_suppressed(&t, &person).await.unwrap(), "{engine}");
        let phone: Vec<String> = events_of(&l, "phone", &person).await.into_iter().map(|e| e.0).collect();
        assert_eq!(phone, ["opted_out", "opted_in"], "{engine}");

        // A reply from a stranger is kept and visible: on the trail under the number, its
        // text (for the retention) among the replies that matched nothing.
        l.post(
            &t,
            "messages/inbound",
            &inbound("SMr6", "+15550009999", "who is this?"),
            &token,
            None,
        )
        .await;
        l.settle().await;
        let kept = events_of(&l, "phone", "+15550009999").await;
        assert_eq!(kept[0].0, "unmatched_inbound_sms", "{engine}");
        let replies = s.unmatched_replies(&t).await.unwrap();
        assert_eq!(
            (replies[0].phone.as_str(), replies[0].body.as_str()),
            ("+15550009999", "who is this?"),
            "{engine}"
        );
    }
}

#[tokio::test]
async fn a_send_whose_outcome_was_unknown_is_proven_sent_by_its_callback_and_never_resent() {
    for engine in engines() {
        let l = start(engine, true).await;
        let s = &l.h.db.store;
        let t = l.h.tenant.id.clone();
        // Every create answers 503 but was processed: the host cannot know it was sent.
        l.sb.set_faults(TwilioFaults {
            fail_share: 1.0,
            fail_processed: true,
            ..Default::default()
        });
        l.h.poller.poll(&t, "test").await.unwrap();
        l.settle().await;
        let created = l.sb.stats().messages_created + l.sb.stats().calls_created;
        let jobs = s.job_counts_by_kind(&t).await.unwrap();
        let n = |st: &str| jobs.get(&("send".to_string(), st.to_string())).copied().unwrap_or(0);
        assert_eq!(n("done") as u64, created, "{engine}: every alert sent, once: {jobs:?}");
        assert_eq!(n("failed") + n("dead") + n("unknown") + n("running"), 0, "{engine}: {jobs:?}");
        let reconciled = s
            .audit_since(&t, 0, 100_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.event == "sent")
            .map(|e| e.detail["reconciled"].as_str().unwrap_or("NOT RECONCILED").to_string())
            .collect::<Vec<_>>();
        assert_eq!(reconciled.len() as u64, created, "{engine}");
        // Calls can only be proven sent by their callbacks; messages by either.
        assert!(
            reconciled
                .iter()
                .all(|r| r == "its status callback arrived" || r == "found in Twilio's message list"),
            "{engine}: {reconciled:?}"
        );
        assert!(reconciled.iter().any(|r| r == "its status callback arrived"), "{engine}");
    }
}

/// Our Twilio number in the sandbox tenant.
const OURS: &str = "+13125550100";

/// A PO's SMS alert after a poll: (its person, the PO, the alert's reference).
fn po_alert(l: &Loop) -> (String, String, String) {
    let m = l.sb.messages().into_iter().find(|m| m.body.contains("awaits approval")).unwrap();
    let code = intake::reference_candidates(&m.body).pop().unwrap();
    let po = m.body.split_whitespace().nth(1).unwrap().to_string();
    (m.to, po, code)
}

/// Post an inbound SMS; the outcome of its processing once the loop settled.
async fn text(l: &Loop, sid: &str, from: &str, body: &str) -> Value {
    let params = p(&[("MessageSid", sid), ("From", from), ("To", OURS), ("Body", body)]);
    let r = l.post(&l.h.tenant.id, "messages/inbound", &params, &l.token(), None).await;
    assert_eq!(r.status(), 200);
    l.settle().await;
    let e =
        l.h.db
            .store
            .webhook_by_key(&l.h.tenant.id, &format!("in/{sid}"), None)
            .await
            .unwrap()
            .unwrap();
    e.outcome.unwrap()
}

async fn approvals(l: &Loop) -> Vec<Value> {
    l.h.qad.control_get("writes").await["purchaseOrderApprovals"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_strangers_reply_with_a_real_reference_decides_nothing_and_guesses_are_few_and_throttled() {
    for engine in engines() {
        let l = start(engine, false).await;
        let (s, t) = (&l.h.db.store, l.h.tenant.id.clone());
        s.set_answer_settings(&t, true, true).await.unwrap();
        l.h.poller.poll(&t, "test").await.unwrap();
        l.settle().await;
        let (person, po, code) = po_alert(&l);
        let stranger = "+15550004444";
        let sent_before = l.sb.stats().messages_created;

        // A stranger who learnt a real reference: not an answer, no decision, no confirmation.
        let out = text(&l, "SMx1", stranger, &format!("APPROVE {code}")).await;
        assert_eq!(out["result"], "unmatched", "{engine}: {out}");
        assert!(approvals(&l).await.is_empty(), "{engine}: a stranger approved {po}");
        let trail = events_of(&l, "purchase_order", &po).await;
        assert!(
            !trail.iter().any(|e| e.0 == "answer"),
            "{engine}: recorded as the buyer's reply: {trail:?}"
        );
        assert_eq!(
            l.sb.stats().messages_created,
            sent_before,
            "{engine}: the stranger was sent something"
        );
        assert!(!l.sb.messages().iter().any(|m| m.to == stranger), "{engine}");

        // From the right number, only the first three candidates are tried: a fourth word
        // is never looked up, so a reply cannot carry hundreds of guesses (and a reply that
        // quoted codes answers none but theirs: it matches nothing).
        let out = text(&l, "SMx2", &person, &format!("2AAAAA 2BBBBB 2CCCCC APPROVE {code}")).await;
        assert_eq!(out["result"], "unmatched", "{engine}: {out}");
        assert!(approvals(&l).await.is_empty(), "{engine}");

        // A number whose replies keep quoting codes that match nothing is throttled: even
        // the right code is then not looked up, until the window ends.
        for i in 0..intake::MISSES_BEFORE_THROTTLE {
            text(&l, &format!("SMx3-{i}"), &person, "APPROVE 2ZZZZZ").await;
        }
        let out = text(&l, "SMx4", &person, &format!("APPROVE {code}")).await;
        assert_ne!(out["result"], "answered", "{engine}: {out}");
        assert!(approvals(&l).await.is_empty(), "{engine}: a throttled number's code was looked up");
        assert!(out["throttled"].as_str().unwrap().contains("not looked up"), "{engine}: {out}");

        l.h.clock.advance(Span::minutes(intake::MISS_WINDOW_MINUTES + 1));
        let out = text(&l, "SMx5", &person, &format!("APPROVE {code}")).await;
        assert_eq!(out["reference"], true, "{engine}: {out}");
        let approved = approvals(&l).await;
        assert_eq!(approved.len(), 1, "{engine}: {approved:?}");
        assert_eq!(approved[0]["purchaseOrderNumber"], po.as_str());
    }
}

#[tokio::test]
async fn a_spoofed_throttle_or_a_missed_code_never_lands_an_answer_on_another_record() {
    for engine in engines() {
        let l = start(engine, false).await;
        let (s, t) = (&l.h.db.store, l.h.tenant.id.clone());
        s.set_answer_settings(&t, true, true).await.unwrap();
        l.h.poller.poll(&t, "test").await.unwrap();
        l.settle().await;
        // A buyer alerted about two POs: A (the first) and B (the latest sent to them).
        let alerts: Vec<(String, String, String)> =
            l.sb.messages()
                .into_iter()
                .filter(|m| m.body.contains("awaits approval"))
                .map(|m| {
                    let code = intake::reference_candidates(&m.body).pop().unwrap();
                    (m.to.clone(), m.body.split_whitespace().nth(1).unwrap().to_string(), code)
                })
                .collect();
        let (victim, po_a, code_a) = alerts
            .iter()
            .find(|(to, _, _)| alerts.iter().filter(|a| &a.0 == to).count() >= 2)
            .cloned()
            .unwrap_or_else(|| panic!("{engine}: no buyer has two PO alerts: {alerts:?}"));
        let (_, po_b, _) = alerts.iter().rfind(|a| a.0 == victim).cloned().unwrap();
        assert_ne!(po_a, po_b, "{engine}");
        let other = alerts.iter().find(|a| a.0 != victim).cloned().unwrap();
        let sent_before = l.sb.stats().messages_created;
        let answered_about = |trail: &[(String, Value)]| trail.iter().filter(|e| e.0 == "answer").count();
        let answers_before = (
            answered_about(&events_of(&l, "purchase_order", &po_a).await),
            answered_about(&events_of(&l, "purchase_order", &po_b).await),
        );

        // A code that matches nothing sent to this number (another person's PO): kept as a
        // reply that matched nothing, never read as an answer to the victim's latest alert.
        let out = text(&l, "SMv0", &victim, &format!("APPROVE {}", other.2)).await;
        assert_eq!(out["result"], "unmatched", "{engine}: {out}");
        assert!(out["why"].as_str().unwrap().contains("quoted 1 reference code"), "{engine}: {out}");

        // A spoofer texting guesses "from" the victim's number throttles it…
        for i in 0..intake::MISSES_BEFORE_THROTTLE {
            let out = text(
                &l,
                &format!("SMv1-{i}"),
                &victim,
                &format!("APPROVE 2ZZZZ{}", &"ABCDEFGHJKMN"[i as usize..i as usize + 1]),
            )
            .await;
            assert_ne!(out["result"], "answered", "{engine}: a guess landed on a record: {out}");
        }
        // …so the victim's own answer quoting PO A's code is not looked up: it is kept as a
        // reply that matched nothing (the reason on the trail), not recorded against PO B.
        let out = text(&l, "SMv2", &victim, &format!("APPROVE {code_a}")).await;
        assert_ne!(out["result"], "answered", "{engine}: {out}");
        assert!(out["throttled"].as_str().unwrap().contains("not looked up"), "{engine}: {out}");
        assert!(approvals(&l).await.is_empty(), "{engine}: approved while throttled");
        for (po, before) in [(&po_a, answers_before.0), (&po_b, answers_before.1)] {
            let trail = events_of(&l, "purchase_order", po).await;
            assert_eq!(answered_about(&trail), before, "{engine}: an answer landed on {po}: {trail:?}");
        }
        let comments = l.h.qad.control_get("writes").await["transactionComments"].clone();
        let comments = comments.as_array().cloned().unwrap_or_default();
        assert!(
            !comments.iter().any(|c| c["commentText"].as_str().unwrap_or("").contains(&code_a)),
            "{engine}: the answer was quoted into a QAD comment: {comments:?}"
        );
        // Nothing was sent back naming any record.
        assert_eq!(l.sb.stats().messages_created, sent_before, "{engine}: a reply was sent");
        let kept = s.unmatched_replies(&t).await.unwrap();
        assert!(kept.iter().any(|r| r.phone == victim), "{engine}: {kept:?}");
        let why = events_of(&l, "phone", &victim).await;
        assert!(
            why.iter()
                .any(|e| e.1["why"].as_str().unwrap_or("").contains("quoted 1 reference code")),
            "{engine}: {why:?}"
        );

        // Once the hour ends, the victim's code counts again, even among words of the
        // code's shape: honest English neither crowds it out nor counts as a miss.
        l.h.clock.advance(Span::minutes(intake::MISS_WINDOW_MINUTES + 1));
        let out = text(&l, "SMv3", &victim, &format!("REJECT, CHANGE, THANKS {code_a}")).await;
        assert_eq!(out["result"], "answered", "{engine}: {out}");
        assert_eq!(out["reference"], true, "{engine}: {out}");
        let trail = events_of(&l, "purchase_order", &po_a).await;
        assert_eq!(answered_about(&trail), answers_before.0 + 1, "{engine}: {trail:?}");
        assert_eq!(s.reference_misses(&t, &victim, l.h.clock.now()).await.unwrap(), 0, "{engine}");
    }
}

#[tokio::test]
async fn only_the_roles_the_tenant_names_decide_the_others_answers_are_recorded_as_seen() {
    for engine in engines() {
        let l = start(engine, true).await;
        let (s, t) = (&l.h.db.store, l.h.tenant.id.clone());
        // Decisions on, but only buyers decide purchase orders here.
        let rules = AnswerRules {
            execute_decisions: true,
            decision_roles: DecisionRoles::from_entries(&[("purchase_order".into(), vec!["buyer".into()])]).unwrap(),
            ..Default::default()
        };
        s.set_answer_rules(&t, &rules).await.unwrap();
        // Plant managers press 1 (approve) on their calls; supplier contacts text APPROVE.
        let script = |when: &str, reply: Option<&str>, digits: Option<&str>| Script {
            to: None,
            when_body_contains: Some(when.into()),
            reply: reply.map(String::from),
            digits: digits.map(String::from),
        };
        l.sb.set_scripts(vec![
            script("<Gather", None, Some("1")),
            script("Please call our buyer", Some("APPROVE {code}"), None),
        ]);
        l.h.poller.poll(&t, "test").await.unwrap();
        l.settle().await;
        // Supplier alerts held for quiet hours go out later.
        l.h.clock.advance(Span::hours(14));
        l.settle().await;
        let st = l.sb.stats();
        assert!(st.keypresses_sent > 0 && st.replies_sent > 0, "{engine}: {st:?}");

        assert!(approvals(&l).await.is_empty(), "{engine}: a role the tenant did not name decided");
        let answers: Vec<Value> = s
            .audit_since(&t, 0, 100_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.event == "answer")
            .map(|e| e.detail)
            .collect();
        assert_eq!(answers.len() as u64, st.keypresses_sent + st.replies_sent, "{engine}");
        for a in &answers {
            let role = a["role"].as_str().unwrap();
            assert!(role == "plant_manager" || role == "supplier_contact", "{engine}: {a}");
            assert_eq!(
                (&a["plugin_action"], &a["action"]),
                (&json!("approve"), &json!("acknowledge")),
                "{engine}: {a}"
            );
            assert!(
                a["note"].as_str().unwrap().contains(&format!("lets no {role} decide")),
                "{engine}: {a}"
            );
        }
        // Nobody was told "approved": calls speak the default words, no SMS confirms.
        for sp in l.sb.spoken() {
            assert!(
                sp.twiml.contains(DEFAULT_SPOKEN_CONFIRMATION) && !sp.twiml.contains("approved"),
                "{engine}: {}",
                sp.twiml
            );
        }
        assert!(!l.sb.messages().iter().any(|m| m.body.contains("approved")), "{engine}");
    }
}

#[tokio::test]
async fn strangers_texts_are_bounded_and_purged_and_what_people_write_reaches_qad_as_data() {
    for engine in engines() {
        let l = start(engine, false).await;
        let (s, t) = (&l.h.db.store, l.h.tenant.id.clone());
        l.h.poller.poll(&t, "test").await.unwrap();
        l.settle().await;
        let (person, _, _) = po_alert(&l);

        // A long, hostile reply from a person alerted: written back, quoted as plain data.
        let hostile = format!(
            "\u{1b}[2J<script>alert(\"x\")</script>\r\n2026-11-27 INFO forged line\u{202e}{}",
            "A".repeat(1500)
        );
        let out = text(&l, "SMh1", &person, &hostile).await;
        assert_eq!(out["result"], "answered", "{engine}: {out}");
        let comments = l.h.qad.control_get("writes").await["transactionComments"]
            .as_array()
            .unwrap()
            .clone();
        let c = comments
            .iter()
            .map(|c| c["commentText"].as_str().unwrap())
            .find(|c| c.contains("forged line"))
            .unwrap_or_else(|| panic!("{engine}: the answer's comment was not written: {comments:?}"));
        assert!(c.chars().count() <= intake::QAD_COMMENT_CHARS, "{engine}: {}", c.len());
        assert!(!c.contains(['<', '>', '\u{1b}', '\r', '\n', '\u{202e}']), "{engine}: {c:?}");
        let answer = s
            .audit_since(&t, 0, 100_000)
            .await
            .unwrap()
            .into_iter()
            .rfind(|e| e.event == "answer")
            .unwrap();
        let kept = answer.detail["answer"]["value"].as_str().unwrap();
        assert!(kept.chars().count() <= intake::REPLY_CHARS, "{engine}: {}", kept.len());
        assert!(!kept.chars().any(char::is_control), "{engine}: {kept:?}");

        // A stranger's texts: the first few in the window kept, the rest counted and dropped.
        let stranger = "+15550003333";
        let extra = 3;
        let mut results = Vec::new();
        for i in 0..intake::UNMATCHED_PER_SENDER + extra {
            results.push(text(&l, &format!("SMs{i}"), stranger, &format!("hello {i}")).await["result"].clone());
        }
        let dropped = results.iter().filter(|r| *r == "dropped").count() as i64;
        assert_eq!(dropped, extra, "{engine}: {results:?}");
        let kept: Vec<_> = s
            .unmatched_replies(&t)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.phone == stranger)
            .collect();
        assert_eq!(kept.len() as i64, intake::UNMATCHED_PER_SENDER, "{engine}");
        assert_eq!(kept[0].body, "hello 0");
        assert_eq!(
            events_of(&l, "phone", stranger).await.len() as i64,
            intake::UNMATCHED_PER_SENDER,
            "{engine}"
        );
        // Their text is kept only there: the queued events keep no parameters.
        for e in s.webhooks(&t).await.unwrap() {
            if e.outcome
                .as_ref()
                .is_some_and(|o| o["result"] == "unmatched" || o["result"] == "dropped")
            {
                assert!(e.params.is_empty(), "{engine}: {e:?}");
            }
        }

        // Past the retention, the inbox's purge removes them.
        l.h.clock.advance(Span::days(intake::UNMATCHED_RETENTION_DAYS) + Span::minutes(1));
        let purged = l.inbox.purge().await.unwrap();
        assert!(purged.replies as i64 >= intake::UNMATCHED_PER_SENDER, "{engine}: {purged:?}");
        assert!(s.unmatched_replies(&t).await.unwrap().is_empty(), "{engine}");
        // A new window: the stranger is heard again.
        let out = text(&l, "SMs-later", stranger, "hello again").await;
        assert_eq!(out["result"], "unmatched", "{engine}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_sleeping_plugin_does_not_delay_another_tenants_events() {
    let l = start("sqlite", false).await;
    let (s, a) = (&l.h.db.store, l.h.tenant.id.clone());
    l.h.poller.poll(&a, "test").await.unwrap();
    l.settle().await;
    let (person, po, code) = po_alert(&l);
    // Tenant A's plugin now sleeps an hour reading an answer (cut at its call's wall clock).
    let wasm = std::fs::read(env!("HOSTILE_PLUGIN_WASM")).unwrap();
    let sha = ml_connector::plugin::sha256_hex(&wasm);
    let v = s.add_plugin(&a, &wasm, &sha, "ml-connector:plugin@0.1.0", morning()).await.unwrap();
    s.activate_plugin(&a, Some(v)).await.unwrap();
    s.set_plugin_settings(&a, r#"{"config": {"mode": "sleep"}}"#).await.unwrap();
    // Tenant B: another customer of the same host.
    let mut other = ml_connector::sandbox::example_tenant(&l.h.qad.base, &l.h.qad.config, 60);
    other.id = "other".into();
    ml_connector::sandbox::provision_example(s, &l.h.keys, &other, &l.h.qad.config, morning())
        .await
        .unwrap();
    ml_connector::sandbox::connect_twilio(s, &l.h.keys, "other", &l.sb.config(), "http://127.0.0.1:9", morning())
        .await
        .unwrap();
    // A's answer arrives first, B's STOP after it.
    let answer = p(&[
        ("MessageSid", "SMa1"),
        ("From", &person),
        ("To", OURS),
        ("Body", &format!("SEEN {code}")),
    ]);
    assert_eq!(l.post(&a, "messages/inbound", &answer, &l.token(), None).await.status(), 200);
    let stop = p(&[("MessageSid", "SMb1"), ("From", "+15550001111"), ("To", OURS), ("Body", "STOP")]);
    assert_eq!(l.post("other", "messages/inbound", &stop, &l.token(), None).await.status(), 200);
    let inbox = l.inbox.clone();
    let batch = tokio::spawn(async move { inbox.run_once().await.unwrap() });
    let done = |tenant: &'static str, key: &'static str| async move {
        s.webhook_by_key(tenant, key, None).await.unwrap().unwrap().outcome.is_some()
    };
    let t = std::time::Instant::now();
    while !done("other", "in/SMb1").await {
        assert!(t.elapsed() < Duration::from_secs(120), "B's event was never processed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waited = t.elapsed();
    assert!(
        !done("lakeshore", "in/SMa1").await,
        "B's event waited for A's sleeping plugin ({waited:?})"
    );
    assert_eq!(batch.await.unwrap(), 2);
    let a_took = t.elapsed();
    let trail = events_of(&l, "purchase_order", &po).await;
    let fault = trail.iter().find(|e| e.0 == "plugin_fault").expect("A's fault is on its record");
    assert_eq!(fault.1["kind"], "timeout", "{fault:?}");
    eprintln!("B's event processed in {waited:?} while A's plugin slept; A's event ended at its wall clock after {a_took:?}");
}
