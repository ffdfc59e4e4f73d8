//! Real wasmtime with real plugins: the default plugin's decisions and words, deliberately
//! hostile plugins stopped within their budgets, determinism, the versioning rule, the
//! on-disk cache, and faults landing in the record's audit trail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use ml_connector::core::routing::{Answer, Message, PluginContext, ReplyAction};
use ml_connector::plugin::{DEFAULT_PLUGIN, FaultKind, Limits, PluginRuntime, PluginSettings, sha256_hex};
use ml_connector::plugin_check::samples;
use ml_connector_tests::{TempDir, harness, plugins};
use serde_json::{Value, json};

const HOSTILE: &str = env!("HOSTILE_PLUGIN_WASM");
const FROZEN: &str = env!("FROZEN_PLUGIN_WASM");
const FUTURE: &str = env!("FUTURE_PLUGIN_WASM");
const PATCH: &str = env!("PATCH_PLUGIN_WASM");

fn ctx(config: Value) -> PluginContext {
    PluginContext::at(
        "t1",
        &config.to_string(),
        Utc.with_ymd_and_hms(2026, 11, 27, 16, 0, 0).unwrap(),
        chrono_tz::America::Chicago,
    )
}

fn hostile() -> Arc<ml_connector::plugin::LoadedPlugin> {
    plugins().load(&std::fs::read(HOSTILE).unwrap()).unwrap()
}

#[tokio::test]
async fn hostile_plugins_are_stopped_within_their_budgets_with_a_clear_fault() {
    let rt = plugins();
    let p = hostile();
    let alert = &samples()[0];
    let roomy = Limits {
        fuel: 1_000_000_000,
        ..Limits::default()
    };
    let cases: &[(&str, Limits, FaultKind, &str)] = &[
        (
            "loop",
            Limits::default(),
            FaultKind::BudgetExhausted,
            "used up its CPU budget (fuel) and was stopped",
        ),
        ("memory", Limits::default(), FaultKind::MemoryCap, "its cap is 32 MiB"),
        ("trap", Limits::default(), FaultKind::Trap, "trapped"),
        // Writing 10 MB costs more than the default fuel: stopped by the budget…
        (
            "big-output",
            Limits::default(),
            FaultKind::BudgetExhausted,
            "used up its CPU budget",
        ),
        // …and with fuel to spare, refused by the output check.
        (
            "big-output",
            roomy,
            FaultKind::InvalidOutput,
            "the SMS body has 10485760 characters; Twilio takes at most 1600",
        ),
        (
            "bad-number",
            Limits::default(),
            FaultKind::InvalidOutput,
            "delivery 1: \"+1555\" is not an E.164 number",
        ),
        (
            "stranger",
            Limits::default(),
            FaultKind::InvalidOutput,
            "delivery 1: +13125559999 is not one of the record's people",
        ),
        (
            "asks-yes",
            Limits::default(),
            FaultKind::InvalidOutput,
            "asks for YES, a carrier keyword",
        ),
    ];
    for (mode, limits, kind, text) in cases {
        let fault = rt
            .route_and_render(&p, *limits, &ctx(json!({"mode": mode})), alert)
            .await
            .unwrap_err();
        assert_eq!(fault.kind, *kind, "{mode}: {fault}");
        assert!(fault.message.contains(text), "{mode}: {}", fault.message);
    }
    // An 8 MB error fits the default fuel; what lands of it is capped at 1 KiB.
    let roomy_error = Limits {
        fuel: 1_000_000_000,
        ..Limits::default()
    };
    let fault = rt
        .route_and_render(&p, roomy_error, &ctx(json!({"mode": "long-error"})), alert)
        .await
        .unwrap_err();
    assert_eq!(fault.kind, FaultKind::PluginError, "{fault}");
    assert!(fault.message.len() <= 1100, "{} bytes kept", fault.message.len());
    assert!(fault.message.ends_with("(8000000 bytes in all)"), "{}", &fault.message[1000..]);
    // After all that, the same plugin still answers: every call had a store of its own.
    let ok = rt.route_and_render(&p, Limits::default(), &ctx(json!({})), alert).await.unwrap();
    assert_eq!(ok.routed.len(), 1);
}

#[tokio::test]
async fn budgets_are_per_tenant() {
    let rt = plugins();
    let p = hostile();
    let alert = &samples()[0];
    let tight = Limits {
        fuel: 10_000_000,
        memory_bytes: 4 << 20,
    };
    let f = rt
        .route_and_render(&p, tight, &ctx(json!({"mode": "memory"})), alert)
        .await
        .unwrap_err();
    assert_eq!(f.kind, FaultKind::MemoryCap);
    assert!(f.message.contains("its cap is 4 MiB"), "{f}");
    let tiny_fuel = Limits {
        fuel: 1_000,
        memory_bytes: 32 << 20,
    };
    let f = rt.route_and_render(&p, tiny_fuel, &ctx(json!({})), alert).await.unwrap_err();
    assert_eq!(f.kind, FaultKind::BudgetExhausted, "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_does_not_stop_a_healthy_one() {
    let rt = plugins();
    let p = hostile();
    let healthy = rt.load(DEFAULT_PLUGIN).unwrap();
    let alert = samples()[0].clone();
    // Baseline of the healthy plugin alone.
    let t = Instant::now();
    for _ in 0..20 {
        rt.route_and_render(&healthy, Limits::default(), &ctx(json!({})), &alert)
            .await
            .unwrap();
    }
    let alone = t.elapsed() / 20;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for mode in ["loop", "memory", "loop", "big-output"] {
        let (rt, p, alert, stop) = (rt.clone(), p.clone(), alert.clone(), stop.clone());
        attackers.push(tokio::spawn(async move {
            let mut faults = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rt.route_and_render(&p, Limits::default(), &ctx(json!({"mode": mode})), &alert)
                    .await
                    .unwrap_err();
                faults += 1;
            }
            faults
        }));
    }
    let mut worst = Duration::ZERO;
    for _ in 0..50 {
        let t = Instant::now();
        let out = rt
            .route_and_render(&healthy, Limits::default(), &ctx(json!({})), &alert)
            .await
            .unwrap();
        worst = worst.max(t.elapsed());
        assert!(!out.routed.is_empty());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut faults = 0;
    for a in attackers {
        faults += a.await.unwrap();
    }
    assert!(faults >= 4, "the attackers ran alongside");
    // A generous bound: it catches a hang or starvation, not a slowdown.
    assert!(
        worst < Duration::from_secs(2),
        "healthy call took {worst:?} under attack (alone: {alone:?})"
    );
    eprintln!("healthy plugin: {alone:?} per record alone, worst {worst:?} under attack by {faults} hostile calls");
}

#[tokio::test]
async fn plugins_are_deterministic_and_cannot_reach_out() {
    let rt = plugins();
    let p = hostile();
    let alert = &samples()[0];
    let observe = || async {
        let out = rt
            .route_and_render(&p, Limits::default(), &ctx(json!({"mode": "clock-random"})), alert)
            .await
            .unwrap();
        out.logs[0].fields.clone()
    };
    let (a, b) = (observe().await, observe().await);
    assert_eq!(a, b, "clocks and random sources are fixed");
    assert_eq!(a[0], ("wall".to_string(), "0".to_string()), "the wall clock reads the epoch");
    for (mode, text) in [("open-file", "cannot open a file"), ("open-socket", "cannot open a socket")] {
        let f = rt
            .route_and_render(&p, Limits::default(), &ctx(json!({"mode": mode})), alert)
            .await
            .unwrap_err();
        assert_eq!(f.kind, FaultKind::PluginError, "{mode}: {f}");
        assert!(f.message.contains(text), "{mode}: {f}");
    }
    // Same record, same decisions and words.
    let d = rt.load(DEFAULT_PLUGIN).unwrap();
    for s in samples() {
        let x = rt.route_and_render(&d, Limits::default(), &ctx(json!({})), &s).await.unwrap();
        let y = rt.route_and_render(&d, Limits::default(), &ctx(json!({})), &s).await.unwrap();
        assert_eq!(x, y);
    }
}

#[tokio::test]
async fn a_log_flood_is_capped() {
    let out = plugins()
        .route_and_render(&hostile(), Limits::default(), &ctx(json!({"mode": "log-flood"})), &samples()[0])
        .await
        .unwrap();
    assert_eq!(out.logs.len(), 51);
    assert!(out.logs[0].message.len() <= 1100, "{} bytes kept", out.logs[0].message.len());
    assert!(out.logs[0].message.ends_with("(5000 bytes in all)"));
    assert_eq!(out.logs[50].message, "150 more log lines dropped");
}

#[tokio::test]
async fn plugins_built_against_the_frozen_0_1_0_world_keep_running_and_unknown_worlds_are_refused() {
    let rt = plugins();
    let frozen = rt.load(&std::fs::read(FROZEN).unwrap()).expect("a 0.1.0 plugin loads");
    assert_eq!(frozen.world, "ml-connector:plugin@0.1.0");
    let out = rt
        .route_and_render(&frozen, Limits::default(), &ctx(json!({})), &samples()[0])
        .await
        .unwrap();
    assert_eq!(out.routed.len(), 1);
    assert!(matches!(&out.routed[0].message, Message::Sms { body } if body.starts_with("[0.1.0] SI-70003")));
    let reply = rt
        .interpret_reply(
            &frozen,
            Limits::default(),
            &ctx(json!({})),
            &samples()[0],
            &out.routed[0].delivery,
            &Answer::Text("seen".into()),
        )
        .await
        .unwrap();
    assert_eq!(reply.action, ReplyAction::Acknowledge);
    let err = match rt.load(&std::fs::read(FUTURE).unwrap()) {
        Err(e) => e,
        Ok(_) => panic!("a 0.2.0 plugin must be refused by a 0.1 host"),
    };
    assert_eq!(err.kind, FaultKind::WrongWorld);
    assert!(
        err.message
            .contains("built against ml-connector:plugin@0.2.0; this host runs ml-connector:plugin@0.1.0"),
        "{err}"
    );
    let err = match rt.load(&std::fs::read(PATCH).unwrap()) {
        Err(e) => e,
        Ok(p) => panic!("a 0.1.1 plugin must be refused by a host that shipped 0.1.0, not labelled {}", p.world),
    };
    assert!(
        err.message
            .contains("built against ml-connector:plugin@0.1.1; this host runs ml-connector:plugin@0.1.0"),
        "{err}"
    );
    let junk = rt.load(b"not wasm at all").err().expect("junk is refused");
    assert_eq!(junk.kind, FaultKind::WrongWorld);
    assert!(junk.message.contains("not a WebAssembly component"), "{junk}");
}

#[tokio::test]
async fn compiled_plugins_are_cached_on_disk_across_restarts() {
    let dir = TempDir::new("cache");
    let first = PluginRuntime::new(Some(dir.0.clone())).unwrap();
    let t = Instant::now();
    first.load(DEFAULT_PLUGIN).unwrap();
    let cold = t.elapsed();
    let cached = dir.0.join(format!("{}.cwasm", sha256_hex(DEFAULT_PLUGIN)));
    assert!(cached.exists(), "the compiled plugin was written");
    let restarted = PluginRuntime::new(Some(dir.0.clone())).unwrap();
    let t = Instant::now();
    let p = restarted.load(DEFAULT_PLUGIN).unwrap();
    let warm = t.elapsed();
    restarted
        .route_and_render(&p, Limits::default(), &ctx(json!({})), &samples()[0])
        .await
        .unwrap();
    eprintln!("default plugin: compiled in {cold:?}, loaded from the disk cache in {warm:?}");
    // A corrupt cache file is not trusted: the plugin is compiled again.
    std::fs::write(&cached, b"garbage").unwrap();
    let again = PluginRuntime::new(Some(dir.0.clone())).unwrap();
    assert!(again.load(DEFAULT_PLUGIN).is_ok());
}

#[tokio::test]
async fn the_default_plugins_decisions_and_words_for_the_sandbox_records() {
    let h = harness("sqlite").await;
    h.poller.poll(&h.tenant.id, "test").await.unwrap();
    let mut lines = Vec::new();
    for a in h.db.store.attention(&h.tenant.id, Some("open")).await.unwrap() {
        let trail = h.db.store.audit_trail(&h.tenant.id, &a.kind, &a.record_key).await.unwrap();
        let routed = trail
            .iter()
            .find(|e| e.event == "routed")
            .unwrap_or_else(|| panic!("{} was routed", a.record_key));
        assert_eq!(routed.detail["plugin"], json!("default"));
        lines.push(format!("{} {} [{}]", a.kind, a.record_key, a.urgency));
        for d in routed.detail["deliveries"].as_array().unwrap() {
            let dl = &d["delivery"];
            let text = match d["message"]["channel"].as_str().unwrap() {
                "sms" => d["message"]["body"].as_str().unwrap().to_string(),
                _ => format!("{} {}", d["message"]["say"].as_str().unwrap(), d["message"]["choices"]),
            };
            lines.push(format!(
                "  {} to {} {} after {} min, step {}: {}",
                dl["channel"].as_str().unwrap(),
                dl["to"]["role"].as_str().unwrap(),
                dl["to"]["name"].as_str().unwrap(),
                dl["delay_minutes"],
                dl["escalation_step"],
                text.replace(&a.reference, "<ref>")
            ));
        }
    }
    insta::assert_snapshot!("default_plugin_decisions", lines.join("\n"));
}

#[tokio::test]
async fn a_faulty_tenant_plugin_is_audited_on_the_record_and_falls_back_only_when_configured() {
    for fallback in [false, true] {
        let h = harness("sqlite").await;
        let wasm = std::fs::read(HOSTILE).unwrap();
        let v =
            h.db.store
                .add_plugin(
                    &h.tenant.id,
                    &wasm,
                    &sha256_hex(&wasm),
                    "ml-connector:plugin@0.1.0",
                    ml_connector_tests::morning(),
                )
                .await
                .unwrap();
        h.db.store.activate_plugin(&h.tenant.id, Some(v)).await.unwrap();
        let settings = PluginSettings {
            config: json!({"mode": "loop"}),
            fallback_to_default: fallback,
            ..Default::default()
        };
        h.db.store
            .set_plugin_settings(&h.tenant.id, &serde_json::to_string(&settings).unwrap())
            .await
            .unwrap();
        let report = h.poller.poll(&h.tenant.id, "test").await.unwrap();
        assert_eq!(report.error, None, "a faulty plugin does not stop the poll");
        let open = h.db.store.attention(&h.tenant.id, Some("open")).await.unwrap();
        assert!(open.len() > 30, "every record still needs attention");
        let trail =
            h.db.store
                .audit_trail(&h.tenant.id, &open[0].kind, &open[0].record_key)
                .await
                .unwrap();
        let fault = trail
            .iter()
            .find(|e| e.event == "plugin_fault")
            .expect("the fault is on the record");
        assert_eq!(fault.detail["kind"], json!("budget_exhausted"));
        assert_eq!(fault.detail["call"], json!("route"));
        assert!(fault.detail["plugin"].as_str().unwrap().starts_with("v1 ("));
        let fell_back = trail
            .iter()
            .any(|e| e.event == "routed" && e.detail["plugin"] == json!("default (fallback)"));
        assert_eq!(fell_back, fallback);
    }
}
