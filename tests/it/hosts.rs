//! Several `ml-connector serve` processes on one PostgreSQL: the work is shared, each tenant
//! is polled by one host at a time, and when one host is killed the others take over its
//! jobs and its polls with every alert still sent once and every webhook stored once.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use ml_connector::sandbox::{connect_twilio, example_tenant, provision_example};
use ml_connector::secrets::{Keyring, generate_master_key};
use ml_connector::twilio_sandbox::{TwilioFaults, TwilioSandbox, TwilioSandboxConfig};
use ml_connector_tests::{Qad, binary, engines, fresh_db};
use sqlx::Row;

/// One nullable text column of a query, NULL read as "".
async fn strings(pool: &sqlx::PgPool, sql: &'static str) -> Vec<String> {
    sqlx::query(sql)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get::<Option<String>, _>(0).unwrap_or_default())
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_share_the_work_and_survive_one_killed_mid_burst() {
    if !engines().contains(&"postgres") {
        eprintln!("no ML_CONNECTOR_TEST_DATABASE_URL: the several-hosts test needs PostgreSQL");
        return;
    }
    let qad = Qad::start().await;
    let twilio = TwilioSandbox::new(TwilioSandboxConfig::default());
    // Twilio takes a while to answer and sends some callbacks twice, as it does.
    let faults = TwilioFaults {
        duplicate_callbacks_share: 0.2,
        latency_ms: 400,
        ..TwilioFaults::default()
    };
    twilio.set_faults(faults.clone());
    let (twilio_base, _t) = twilio.clone().spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let db = fresh_db("postgres").await;
    let key = generate_master_key();
    let keys = Keyring::new(&key, &[]).unwrap();
    let now = chrono::Utc::now();
    let tenants = ["t1", "t2", "t3"];
    for id in tenants {
        let mut t = example_tenant(&qad.base, &qad.config, 2);
        t.id = id.into();
        provision_example(&db.store, &keys, &t, &qad.config, now).await.unwrap();
        connect_twilio(&db.store, &keys, id, &twilio.config(), &twilio_base, now)
            .await
            .unwrap();
    }

    let mut hosts = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        hosts.push(
            tokio::process::Command::new(binary())
                .arg("serve")
                .env("ML_CONNECTOR_DATABASE_URL", &db.url)
                .env("ML_CONNECTOR_MASTER_KEY", &key)
                .env("ML_CONNECTOR_HTTP_ADDR", format!("127.0.0.1:{port}"))
                .env("ML_CONNECTOR_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
                .env("ML_CONNECTOR_GRPC_ADDR", "127.0.0.1:0")
                .env("ML_CONNECTOR_METRICS_ADDR", "127.0.0.1:0")
                .env("ML_CONNECTOR_JOB_LEASE_SECONDS", "2")
                .env("ML_CONNECTOR_POLL_LEASE_SECONDS", "2")
                // Polls every 2 s, as the tenants' schedules say (a debug build's test override
                // of the one-minute minimum): a host must be polling when it is killed.
                .env("ML_CONNECTOR_TEST_POLL_MIN_INTERVAL_SECONDS", "1")
                .env("ML_CONNECTOR_LOG", "error")
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }

    // Mid-burst, a host dies without a word: one that is polling a tenant and has sends in
    // flight (its worker ids and lease holder name start with its pid). Once the burst is
    // under way Twilio stops answering until the kill, so every send a host has started is
    // still in flight when it dies, however slow this machine is.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let pids: Vec<u32> = hosts.iter().map(|h| h.id().unwrap()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while twilio.stats().messages_created < 10 {
        assert!(tokio::time::Instant::now() < deadline, "the burst never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    twilio.set_faults(TwilioFaults {
        hold_creates: true,
        ..faults.clone()
    });
    let (victim, victim_tenant) = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no host was ever polling with sends in flight"
        );
        let leases: Vec<(String, String)> = sqlx::query("SELECT holder, tenant_id FROM poll_leases")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let sending = strings(&pool, "SELECT DISTINCT worker FROM jobs WHERE kind = 'send' AND state = 'running'").await;
        let pid_of = |s: &str| s.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let found = leases.iter().find_map(|(holder, tenant)| {
            let pid = pid_of(holder)?;
            sending
                .iter()
                .any(|w| pid_of(w) == Some(pid))
                .then(|| (pids.iter().position(|p| *p == pid).unwrap(), tenant.clone()))
        });
        if let Some(f) = found {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    hosts[victim].kill().await.unwrap();
    let killed_at = chrono::Utc::now();
    let victim_pid = pids[victim].to_string();
    let in_flight: Vec<i64> = sqlx::query("SELECT id FROM jobs WHERE kind = 'send' AND state = 'running' AND worker LIKE $1")
        .bind(format!("{victim_pid}-%"))
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    twilio.set_faults(faults);

    let store = &db.store;
    let settled = || async {
        for id in tenants {
            let jobs = store.jobs(id).await.unwrap();
            let open = jobs
                .iter()
                .filter(|(k, _, _)| k.ends_with("/0"))
                .any(|(_, st, _)| !["done", "failed", "unknown", "dead"].contains(&st.as_str()));
            let polled_since = store
                .polls(id, 50)
                .await
                .unwrap()
                .iter()
                .any(|p| p.started_at > killed_at && p.outcome == "ok");
            if jobs.is_empty() || open || !polled_since {
                return false;
            }
        }
        let queued: i64 = sqlx::query("SELECT COUNT(*) FROM webhook_events WHERE state <> 'done'")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        queued == 0 && twilio.idle()
    };
    while !settled().await {
        assert!(tokio::time::Instant::now() < deadline, "the two hosts left never finished the work");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every alert once: no message or call created twice, and each ended with one accepted
    // POST or a visibly unknown outcome (a send killed mid-POST).
    let mut created: HashMap<(String, String), usize> = HashMap::new();
    for m in twilio.messages().into_iter().chain(twilio.calls()) {
        *created.entry((m.to, m.body)).or_default() += 1;
    }
    let doubled: Vec<_> = created.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "alerts created twice at Twilio: {doubled:?}");
    let count = |state: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query("SELECT COUNT(*) FROM jobs WHERE kind = 'send' AND state = $1")
                .bind(state)
                .fetch_one(&pool)
                .await
                .unwrap()
                .get::<i64, _>(0) as usize
        }
    };
    let (done, unknown) = (count("done").await, count("unknown").await);
    assert!(
        done <= created.len() && created.len() <= done + unknown,
        "{} created for {done} sends done and {unknown} unknown",
        created.len()
    );

    // The work was shared: more than one host sent alerts.
    let workers: i64 = sqlx::query("SELECT COUNT(DISTINCT worker) FROM jobs WHERE kind = 'send' AND state = 'done'")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert!(workers >= 2, "one host did all the sending");

    // Every webhook once: each callback a host answered 2xx is stored, and nothing twice
    // (a duplicate shares its original's idempotency token).
    let played = twilio.callbacks();
    let stored = strings(&pool, "SELECT idempotency_token FROM webhook_events WHERE kind LIKE '%status%'").await;
    let distinct: BTreeSet<&String> = stored.iter().collect();
    assert_eq!(distinct.len(), stored.len(), "a callback stored twice");
    assert!(stored.len() > 100, "a burst of callbacks: {}", stored.len());
    for (token, answered) in &played {
        if *answered {
            assert!(distinct.contains(token), "callback {token} was answered 2xx but not stored");
        }
    }
    assert!(
        distinct.iter().all(|t| played.contains_key(*t)),
        "only callbacks Twilio played are stored"
    );

    // Its leased sends were taken over by the others once the lease expired…
    let taken_over: i64 = sqlx::query("SELECT COUNT(*) FROM jobs WHERE attempt > 1 AND worker NOT LIKE $1")
        .bind(format!("{victim_pid}-%"))
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    let after: Vec<(i64, String, String, i64, String)> =
        sqlx::query("SELECT id, job_key, state, attempt, worker FROM jobs WHERE id = ANY($1)")
            .bind(&in_flight)
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get::<Option<String>, _>(4).unwrap_or_default(),
                )
            })
            .collect();
    eprintln!("victim {victim_pid} in flight at the kill: {after:?}");
    assert!(!in_flight.is_empty(), "the victim had sends in flight when it died");
    for (id, key, state, attempt, worker) in &after {
        assert!(
            *attempt > 1 && !worker.starts_with(&format!("{victim_pid}-")),
            "job {id} of the dead host was taken over by another: {after:?}"
        );
        // Each is reconciled against Twilio's lists (its callbacks went to the dead host): a
        // message found is done, one not found is sent now; a call is placed now when no
        // listed call can be it, else (a call answered but not committed) visibly unknown.
        let is_call = key.contains("/voice/");
        assert!(
            state == "done" || (is_call && state == "unknown"),
            "job {id} ({key}) of the dead host ended {state}: {after:?}"
        );
        if state == "unknown" {
            let trail: Vec<String> = sqlx::query("SELECT event FROM audit WHERE detail::jsonb ->> 'job' = $1")
                .bind(key)
                .fetch_all(&pool)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            assert!(
                trail.iter().any(|w| w == "outcome_unknown"),
                "the unknown call {key} says so in its audit trail: {trail:?}"
            );
        }
    }
    assert!(taken_over > 0, "the dead host's sends were finished by the others");
    // …and the poll it held: abandoned, then polled again by another host.
    let victim_polls = store.polls(&victim_tenant, 1000).await.unwrap();
    assert!(
        victim_polls
            .iter()
            .any(|p| p.error.as_deref().is_some_and(|e| e.contains("abandoned"))),
        "the killed host's poll of {victim_tenant} is recorded as abandoned: {victim_polls:?}"
    );
    eprintln!(
        "{} alerts created ({done} sent, {unknown} unknown) by {workers} hosts, {taken_over} jobs taken over; {} callbacks stored of {} played",
        created.len(),
        stored.len(),
        played.len()
    );

    // One host at a time per tenant: no two polls of a tenant overlap, before or after the kill.
    for id in tenants {
        let mut polls = store.polls(id, 1000).await.unwrap();
        polls.reverse();
        for w in polls.windows(2) {
            let finished = w[0].finished_at.expect("every poll but the last finished");
            assert!(
                w[1].started_at >= finished,
                "tenant {id}: poll {} started before poll {} finished",
                w[1].id,
                w[0].id
            );
        }
    }
}
