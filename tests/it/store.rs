//! The store on each engine: the append-only audit trail, sealed credentials that cannot be
//! swapped, no secret in clear anywhere in the SQLite file or its WAL, key rotation, the WAL
//! checkpointed off the writer.

use ml_connector::poller::{SECRET_QAD_PASSWORD, SECRET_QAD_USER};
use ml_connector::secrets::{Keyring, Origin, SecretString, generate_master_key};
use ml_connector::store::{NewAudit, StoreError};
use ml_connector_tests::{engines, fresh_db, harness, morning};
use serde_json::json;

#[tokio::test]
async fn the_audit_trail_is_append_only_in_the_database_itself() {
    for engine in engines() {
        let h = harness(engine).await;
        let entry = NewAudit {
            kind: "supplier_invoice".into(),
            record_key: "SI-1".into(),
            event: "note".into(),
            detail: json!({"x": 1}),
        };
        h.db.store.append_audit(&h.tenant.id, &[entry], morning()).await.unwrap();
        for sql in ["UPDATE audit SET event = 'forged'", "DELETE FROM audit"] {
            let err = h.db.store.execute_raw(sql).await.expect_err(sql);
            assert!(err.to_string().contains("append-only"), "{engine}: {err}");
        }
        assert_eq!(
            h.db.store.audit_trail(&h.tenant.id, "supplier_invoice", "SI-1").await.unwrap()[0].event,
            "note"
        );
    }
}

#[tokio::test]
async fn swapped_ciphertexts_do_not_open() {
    for engine in engines() {
        let h = harness(engine).await;
        let (s, t) = (&h.db.store, &h.tenant.id);
        let qad = Origin::of(&h.tenant.qad_base_url).unwrap();
        assert_eq!(
            s.secret(&h.keys, t, SECRET_QAD_PASSWORD, &qad).await.unwrap().unwrap().expose(),
            "sandbox-password"
        );
        // An attacker with write access to the database swaps the user name and password values.
        for sql in [
            "UPDATE secrets SET field = 'swap' WHERE field = 'qad.username'",
            "UPDATE secrets SET field = 'qad.username' WHERE field = 'qad.password'",
            "UPDATE secrets SET field = 'qad.password' WHERE field = 'swap'",
        ] {
            assert_eq!(s.execute_raw(sql).await.unwrap(), 1);
        }
        for field in [SECRET_QAD_USER, SECRET_QAD_PASSWORD] {
            let err = s.secret(&h.keys, t, field, &qad).await.unwrap_err();
            assert!(matches!(err, StoreError::Secret(_)), "{engine}: {err}");
            assert!(err.to_string().contains("tampered"), "{err}");
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn neither_the_database_file_nor_its_wal_holds_a_secret_in_clear() {
    let h = harness("sqlite").await;
    let secrets = ["qad-password-Zq8#unique", "twilio-auth-token-7f3e9c1d2b", "SK-api-secret-A1B2C3"];
    let qad = Origin::of(&h.tenant.qad_base_url).unwrap();
    for (i, v) in secrets.iter().enumerate() {
        h.db.store
            .set_secret(&h.keys, &h.tenant.id, &format!("field{i}"), &qad, &SecretString::new(*v), morning())
            .await
            .unwrap();
    }
    // A whole poll runs too: the QAD password and session token pass through the host.
    h.poller.poll(&h.tenant.id, "test").await.unwrap();
    let path = h.db.sqlite_path().unwrap();
    let wal = path.with_extension("db-wal");
    let scan = |when: &str| {
        let mut all = Vec::new();
        for p in [&path, &wal] {
            if let Ok(bytes) = std::fs::read(p) {
                all.push((p.display().to_string(), bytes));
            }
        }
        assert!(
            all.iter().map(|(_, b)| b.len()).sum::<usize>() > 10_000,
            "{when}: the files hold data"
        );
        for (name, bytes) in &all {
            for s in secrets.iter().chain(["sandbox-password"].iter()) {
                assert!(!contains(bytes, s.as_bytes()), "{when}: {name} holds {s} in clear");
            }
        }
    };
    assert!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) > 0,
        "the WAL is in use before the checkpoint"
    );
    scan("before checkpoint");
    h.db.store.checkpoint().await.unwrap();
    scan("after checkpoint");
    // The scan would find a secret if one were there: the same bytes written as plain data are found.
    h.db.store
        .execute_raw("INSERT INTO poll_cursors (tenant_id, stream, cursor, updated_at) VALUES ('x', 'y', 'qad-password-Zq8#unique', 0)")
        .await
        .unwrap();
    let bytes = [std::fs::read(&path).unwrap(), std::fs::read(&wal).unwrap_or_default()].concat();
    assert!(
        contains(&bytes, b"qad-password-Zq8#unique"),
        "the scan sees plain text when there is some"
    );
}

#[tokio::test]
async fn rotation_reseals_under_the_new_key() {
    for engine in engines() {
        let db = fresh_db(engine).await;
        let old = generate_master_key();
        let k1 = Keyring::new(&old, &[]).unwrap();
        let h = harness(engine).await;
        let tenant = h.tenant.clone();
        db.store.create_tenant(&tenant, morning()).await.unwrap();
        let qad = Origin::of(&tenant.qad_base_url).unwrap();
        db.store
            .set_secret(&k1, &tenant.id, "qad.f", &qad, &SecretString::new("v1"), morning())
            .await
            .unwrap();
        let k2 = Keyring::new(&generate_master_key(), &[old]).unwrap();
        assert_eq!(db.store.reseal_secrets(&k2, morning()).await.unwrap(), 1);
        assert_eq!(db.store.reseal_secrets(&k2, morning()).await.unwrap(), 0, "{engine}: idempotent");
        let k2_alone = Keyring::new(&std::env::var("NONE").unwrap_or_default(), &[]).err();
        assert!(k2_alone.is_some(), "an empty key is refused");
        assert_eq!(
            db.store.secret(&k2, &tenant.id, "qad.f", &qad).await.unwrap().unwrap().expose(),
            "v1"
        );
        assert!(
            db.store.secret(&k1, &tenant.id, "qad.f", &qad).await.is_err(),
            "the old key alone no longer opens it"
        );
    }
}

#[tokio::test]
async fn migrations_are_idempotent_and_tenants_unique() {
    for engine in engines() {
        let h = harness(engine).await;
        h.db.store.migrate().await.unwrap();
        let err = h.db.store.create_tenant(&h.tenant, morning()).await.unwrap_err();
        assert!(matches!(err, StoreError::TenantExists(_)), "{engine}: {err}");
        assert_eq!(h.db.store.tenants().await.unwrap(), vec![h.tenant.clone()]);
        let set: Vec<String> =
            h.db.store
                .secret_states(&h.tenant.id)
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.field)
                .collect();
        assert_eq!(set, [SECRET_QAD_PASSWORD, SECRET_QAD_USER]);
    }
}

#[tokio::test]
async fn the_wal_is_checkpointed_beside_the_writer_without_a_commit_crossing_a_threshold() {
    let h = harness("sqlite").await;
    let path = h.db.sqlite_path().unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    // About 0.76 MB of text in 40 commits, far below the host's in-line backstop (16,384
    // pages): only the background checkpointer moves it into the file.
    for n in 0..40 {
        let entries: Vec<NewAudit> = (0..10)
            .map(|i| NewAudit {
                kind: "supplier_invoice".into(),
                record_key: format!("SI-{n}-{i}"),
                event: "note".into(),
                detail: json!({"text": format!("{n}-{i}-").repeat(400)}),
            })
            .collect();
        h.db.store.append_audit(&h.tenant.id, &entries, morning()).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let grown = std::fs::metadata(&path).unwrap().len() - before;
        if grown > 500_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file grew by {grown} bytes only: the WAL was not checkpointed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A store upgraded past migration 0009 (payloads moved out of `jobs`) with jobs already
/// queued: each is still claimed with its own payload, and a job enqueued after the upgrade
/// too. Nothing of the queue is lost by an upgrade.
#[tokio::test]
async fn jobs_queued_before_the_payloads_moved_keep_their_payloads() {
    const BEFORE: i64 = 8;
    for engine in engines() {
        let (url, _dir) = ml_connector_tests::empty_db(engine).await;
        // The database as the previous release left it: migrations up to 0008, two jobs queued.
        let old = ml_connector_tests::migrations_up_to(engine, BEFORE).await;
        let insert =
            "INSERT INTO jobs (job_key, tenant_id, kind, record_kind, record_key, episode, payload, state, run_at, created_at, updated_at)
                      VALUES ($1, 't', 'send', 'supplier_invoice', $2, 1, $3, 'queued', 0, 0, 0)";
        let queued = [("old-1", "SI-1", r#"{"n":1}"#), ("old-2", "SI-2", r#"{"n":2}"#)];
        // The same steps on either engine's own pool type.
        macro_rules! as_the_old_release_left_it {
            ($pool:expr) => {{
                let pool = $pool;
                old.run(&pool).await.unwrap();
                for (key, record, payload) in queued {
                    sqlx::query(insert)
                        .bind(key)
                        .bind(record)
                        .bind(payload)
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                pool.close().await;
            }};
        }
        match engine {
            "sqlite" => {
                let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
                as_the_old_release_left_it!(sqlx::SqlitePool::connect_with(opts.create_if_missing(true)).await.unwrap())
            }
            _ => as_the_old_release_left_it!(sqlx::PgPool::connect(&url).await.unwrap()),
        }
        // This release opens it and applies the rest.
        let store = ml_connector::store::Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let change = ml_connector::store::RecordChange {
            kind: ml_connector::core::model::RecordKind::SupplierInvoice,
            record_key: "SI-3".into(),
            seen: None,
            episode: ml_connector::store::EpisodeChange::None,
            audit: vec![],
            jobs: vec![ml_connector::store::NewJob {
                key: "new-3".into(),
                kind: "send".into(),
                episode: 1,
                payload: json!({"n": 3}).to_string(),
                run_at: morning() - chrono::Duration::hours(1),
                escalation_step: 0,
            }],
        };
        store.apply_batch("t", &[change], morning()).await.unwrap();
        let claimed = store.claim_jobs("w", morning(), chrono::Duration::seconds(60), 10).await.unwrap();
        let mut got: Vec<(String, serde_json::Value)> = claimed
            .into_iter()
            .map(|j| (j.key, serde_json::from_str(&j.payload).unwrap_or_default()))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [
                ("new-3".to_string(), json!({"n": 3})),
                ("old-1".to_string(), json!({"n": 1})),
                ("old-2".to_string(), json!({"n": 2}))
            ],
            "{engine}"
        );
        store.close().await;
    }
}

/// A first poll opens an episode per record, many to a statement; a later change of the same
/// record in the same batch (resolved, then opened again) still sees its episode, and each
/// record's trail keeps its order.
#[tokio::test]
async fn episodes_opened_many_to_a_statement_keep_each_records_order() {
    use ml_connector::core::attention::{Attention, Reason, Urgency};
    use ml_connector::core::model::RecordKind;
    use ml_connector::store::{EpisodeChange, NewEpisode, RecordChange};
    for engine in engines() {
        let h = harness(engine).await;
        let s = &h.db.store;
        let opened = |po: &str, episode: i64| NewEpisode {
            episode,
            attention: Attention {
                reason: serde_json::from_value::<Reason>(json!({"code": "pending_approval", "total": "1200.00", "currency": "USD"}))
                    .unwrap(),
                urgency: Urgency::Normal,
                due_date: None,
            },
            summary: format!("{po} waits for approval"),
            people: Default::default(),
            reference: po.into(),
        };
        let change = |po: &str, episode: EpisodeChange| RecordChange {
            kind: RecordKind::PurchaseOrder,
            record_key: po.into(),
            seen: None,
            episode,
            audit: vec![],
            jobs: vec![],
        };
        let batch = [
            change("PO1", EpisodeChange::Open { opened: opened("PO1", 1) }),
            change("PO2", EpisodeChange::Open { opened: opened("PO2", 1) }),
            change(
                "PO1",
                EpisodeChange::Resolve {
                    episode: 1,
                    cause: "approved".into(),
                },
            ),
            change("PO1", EpisodeChange::Open { opened: opened("PO1", 2) }),
            change("PO3", EpisodeChange::Open { opened: opened("PO3", 1) }),
        ];
        let applied = s.apply_batch(&h.tenant.id, &batch, morning()).await.unwrap();
        let got: Vec<(Option<i64>, Option<i64>)> = applied.iter().map(|a| (a.opened, a.resolved)).collect();
        assert_eq!(
            got,
            [(Some(1), None), (Some(1), None), (None, Some(1)), (Some(2), None), (Some(1), None)],
            "{engine}"
        );
        let rows: Vec<(String, i64, String)> = s
            .attention(&h.tenant.id, None)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.record_key, r.episode, r.state))
            .collect();
        let expected = [("PO1", 1, "resolved"), ("PO1", 2, "open"), ("PO2", 1, "open"), ("PO3", 1, "open")];
        assert_eq!(rows, expected.map(|(k, e, st)| (k.to_string(), e, st.to_string())), "{engine}");
        let trail: Vec<(String, Option<i64>)> = s
            .audit_trail(&h.tenant.id, "purchase_order", "PO1")
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.event, e.episode))
            .collect();
        let expected = [("needs_attention", Some(1)), ("resolved", Some(1)), ("needs_attention", Some(2))];
        assert_eq!(trail, expected.map(|(e, n)| (e.to_string(), n)), "{engine}");
    }
}

#[tokio::test]
async fn replies_that_match_nothing_are_limited_per_tenant_counted_in_windows_and_purged() {
    use ml_connector::core::intake::{self, Dropped};
    use ml_connector::store::UnmatchedReply;
    for engine in engines() {
        let h = harness(engine).await;
        let (s, t) = (&h.db.store, h.tenant.id.clone());
        let reply = |i: i64| UnmatchedReply {
            tenant: t.clone(),
            phone: format!("+1555{i:07}"),
            to: "+13125550100".into(),
            body: format!("hello {i}"),
            event_id: i,
            why: "no open alert was sent to this number".into(),
        };
        let now = morning();
        // One text from each of many numbers: the tenant's limit holds them all the same.
        let mut outcomes = Vec::new();
        for i in 0..intake::UNMATCHED_PER_TENANT + 2 {
            outcomes.push(s.keep_unmatched_reply(&reply(i), now).await.unwrap());
        }
        let limit = intake::UNMATCHED_PER_TENANT as usize;
        assert!(outcomes[..limit].iter().all(Result::is_ok), "{engine}");
        assert_eq!(outcomes[limit..], [Err(Dropped::Tenant), Err(Dropped::Tenant)], "{engine}");
        assert_eq!(s.unmatched_replies(&t).await.unwrap().len(), limit, "{engine}");
        // The next window starts counting again.
        let later = now + chrono::Duration::minutes(intake::UNMATCHED_WINDOW_MINUTES + 1);
        assert_eq!(s.keep_unmatched_reply(&reply(9999), later).await.unwrap(), Ok(()), "{engine}");

        // Misses are counted per number in their window.
        let n = "+15550001111";
        for want in 1..=3 {
            assert_eq!(s.count_reference_miss(&t, n, now).await.unwrap(), want, "{engine}");
        }
        assert_eq!(s.reference_misses(&t, n, now).await.unwrap(), 3);
        assert_eq!(s.reference_misses(&t, "+15550002222", now).await.unwrap(), 0);
        let next = now + chrono::Duration::minutes(intake::MISS_WINDOW_MINUTES);
        assert_eq!(s.reference_misses(&t, n, next).await.unwrap(), 0, "{engine}: the window ended");
        assert_eq!(s.count_reference_miss(&t, n, next).await.unwrap(), 1, "{engine}");

        // Within the retention nothing goes; past it, the replies and spent counters do.
        let kept_all = s.purge_unmatched(later).await.unwrap();
        assert_eq!(kept_all.replies, 0, "{engine}");
        let gone = s
            .purge_unmatched(later + chrono::Duration::days(intake::UNMATCHED_RETENTION_DAYS) + chrono::Duration::minutes(1))
            .await
            .unwrap();
        assert_eq!(gone.replies as usize, limit + 1, "{engine}");
        assert!(gone.counters > 0, "{engine}");
        assert!(s.unmatched_replies(&t).await.unwrap().is_empty(), "{engine}");
    }
}

#[tokio::test]
async fn processed_webhooks_are_purged_past_their_retention_and_unprocessed_ones_never() {
    use ml_connector::core::intake::{self, HookKind};
    use ml_connector::store::NewWebhook;
    for engine in engines() {
        let h = harness(engine).await;
        let (s, t) = (&h.db.store, h.tenant.id.clone());
        let now = morning();
        let days = chrono::Duration::days;
        let hook = |sid: &str, body: &str| NewWebhook {
            tenant: t.clone(),
            kind: HookKind::InboundSms,
            dedup_key: format!("in/{sid}"),
            idempotency_token: None,
            delivery_id: None,
            params: vec![("MessageSid".into(), sid.into()), ("Body".into(), body.into())],
        };
        // An answer (its text in its parameters), a dropped reply (parameters cleared), an
        // event processed later, and one still queued.
        let ids: Vec<i64> = s
            .queue_webhooks(
                &[
                    hook("SMold", "APPROVE K7QM2X my notes"),
                    hook("SMdrop", "hello"),
                    hook("SMlater", "seen"),
                    hook("SMqueued", "never processed"),
                ],
                now,
            )
            .await
            .unwrap()
            .into_iter()
            .map(Option::unwrap)
            .collect();
        s.finish_webhook(ids[0], &json!({"result": "answered"}), now).await.unwrap();
        s.finish_webhook(ids[1], &json!({"result": "dropped"}), now).await.unwrap();
        s.finish_webhook(ids[2], &json!({"result": "answered"}), now + days(20))
            .await
            .unwrap();
        let left = |evs: Vec<ml_connector::store::WebhookEvent>| evs.into_iter().map(|e| e.id).collect::<Vec<_>>();

        // Within the retention nothing goes.
        let p = s
            .purge_unmatched(now + days(intake::EVENT_RETENTION_DAYS) - chrono::Duration::minutes(1))
            .await
            .unwrap();
        assert_eq!(p.events, 0, "{engine}");
        assert_eq!(left(s.webhooks(&t).await.unwrap()), ids, "{engine}");
        // Past it, the events processed then go (text and all); the later one and the
        // queued one stay.
        let p = s
            .purge_unmatched(now + days(intake::EVENT_RETENTION_DAYS) + chrono::Duration::minutes(1))
            .await
            .unwrap();
        assert_eq!(p.events, 2, "{engine}");
        assert_eq!(left(s.webhooks(&t).await.unwrap()), ids[2..], "{engine}");
        // However old, an event not yet processed is never purged.
        let p = s.purge_unmatched(now + days(400)).await.unwrap();
        assert_eq!(p.events, 1, "{engine}");
        assert_eq!(left(s.webhooks(&t).await.unwrap()), ids[3..], "{engine}");
        assert_eq!(s.webhook(ids[3]).await.unwrap().unwrap().state, "queued", "{engine}");
    }
}

#[tokio::test]
async fn a_tenants_answer_rules_are_stored_with_its_settings() {
    use ml_connector::core::intake::{AnswerRules, DecisionRoles};
    use ml_connector::core::model::RecordKind;
    use ml_connector::core::people::Role;
    for engine in engines() {
        let h = harness(engine).await;
        let (s, t) = (&h.db.store, h.tenant.id.clone());
        assert_eq!(s.answer_rules(&t).await.unwrap(), AnswerRules::default(), "{engine}");
        let rules = AnswerRules {
            execute_decisions: true,
            unproven_answers_cancel_escalations: true,
            decision_roles: DecisionRoles::from_entries(&[("supplier_invoice".into(), vec!["plant_manager".into()])]).unwrap(),
        };
        s.set_answer_rules(&t, &rules).await.unwrap();
        assert_eq!(s.answer_rules(&t).await.unwrap(), rules, "{engine}");
        let mut settings = s.tenant_settings(&t).await.unwrap();
        assert!(settings.unproven_answers_cancel_escalations);
        assert!(settings.decision_roles.allows(RecordKind::SupplierInvoice, Role::PlantManager));
        assert!(!settings.decision_roles.allows(RecordKind::SupplierInvoice, Role::ApClerk));
        settings.decision_roles = DecisionRoles::default();
        settings.unproven_answers_cancel_escalations = false;
        s.update_tenant(&settings, morning()).await.unwrap();
        assert_eq!(
            s.answer_rules(&t).await.unwrap(),
            AnswerRules {
                execute_decisions: true,
                ..Default::default()
            },
            "{engine}"
        );
    }
}
