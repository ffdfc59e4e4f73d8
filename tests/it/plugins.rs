//! Real wasmtime with real plugins: the default plugin's decisions and words, deliberately
//! hostile plugins stopped within their budgets, determinism, the versioning rule, the
//! on-disk cache, and faults landing in the record's audit trail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use ml_connector::core::routing::{Answer, Message, PluginContext, ReplyAction};
use ml_connector::plugin::{
    CompileLimits, Compiler, DEFAULT_PLUGIN, DiskCache, FaultKind, Limits, LoadedPlugin, PluginRuntime, PluginSettings, sha256_hex,
};
use ml_connector::plugin_check::samples;
use ml_connector::secrets::{Keyring, generate_master_key};
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

async fn hostile() -> Arc<ml_connector::plugin::LoadedPlugin> {
    plugins().load(&std::fs::read(HOSTILE).unwrap()).await.unwrap()
}

#[tokio::test]
async fn hostile_plugins_are_stopped_within_their_budgets_with_a_clear_fault() {
    let rt = plugins();
    let p = hostile().await;
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
        // The first person is the AP clerk: labelled a buyer (who decides POs), refused.
        (
            "relabel",
            Limits::default(),
            FaultKind::InvalidOutput,
            "delivery 1: +13125550130 is not the record's buyer (the record names that number only as ap_clerk)",
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
    let p = hostile().await;
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
    let p = hostile().await;
    let healthy = rt.load(DEFAULT_PLUGIN).await.unwrap();
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
    let p = hostile().await;
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
    let d = rt.load(DEFAULT_PLUGIN).await.unwrap();
    for s in samples() {
        let x = rt.route_and_render(&d, Limits::default(), &ctx(json!({})), &s).await.unwrap();
        let y = rt.route_and_render(&d, Limits::default(), &ctx(json!({})), &s).await.unwrap();
        assert_eq!(x, y);
    }
}

#[tokio::test]
async fn a_log_flood_is_capped() {
    let p = hostile().await;
    let out = plugins()
        .route_and_render(&p, Limits::default(), &ctx(json!({"mode": "log-flood"})), &samples()[0])
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
    let frozen = rt.load(&std::fs::read(FROZEN).unwrap()).await.expect("a 0.1.0 plugin loads");
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
    let err = match rt.load(&std::fs::read(FUTURE).unwrap()).await {
        Err(e) => e,
        Ok(_) => panic!("a 0.2.0 plugin must be refused by a 0.1 host"),
    };
    assert_eq!(err.kind, FaultKind::WrongWorld);
    assert!(
        err.message
            .contains("built against ml-connector:plugin@0.2.0; this host runs ml-connector:plugin@0.1.0"),
        "{err}"
    );
    let err = match rt.load(&std::fs::read(PATCH).unwrap()).await {
        Err(e) => e,
        Ok(p) => panic!(
            "a 0.1.1 plugin must be refused by a host that shipped 0.1.0, not labelled {}",
            p.world
        ),
    };
    assert!(
        err.message
            .contains("built against ml-connector:plugin@0.1.1; this host runs ml-connector:plugin@0.1.0"),
        "{err}"
    );
    let junk = rt.load(b"not wasm at all").await.err().expect("junk is refused");
    assert_eq!(junk.kind, FaultKind::WrongWorld);
    assert!(junk.message.contains("not a WebAssembly component"), "{junk}");
}

fn keyring() -> Keyring {
    Keyring::new(&generate_master_key(), &[]).unwrap()
}

fn on_disk(dir: &TempDir, keys: &Keyring) -> PluginRuntime {
    PluginRuntime::new(Some(DiskCache::open(&dir.0, keys).unwrap())).unwrap()
}

/// The SMS body a plugin renders for the first sample record (healthy mode).
async fn body_of(rt: &PluginRuntime, p: &LoadedPlugin) -> String {
    let out = rt
        .route_and_render(p, Limits::default(), &ctx(json!({})), &samples()[0])
        .await
        .unwrap();
    match &out.routed[0].message {
        Message::Sms { body } => body.clone(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn compiled_plugins_are_cached_on_disk_across_restarts() {
    let dir = TempDir::new("cache");
    let keys = keyring();
    let first = on_disk(&dir, &keys);
    let t = Instant::now();
    first.load(DEFAULT_PLUGIN).await.unwrap();
    let cold = t.elapsed();
    let cached = dir.0.join(format!("{}.cwasm", sha256_hex(DEFAULT_PLUGIN)));
    assert!(cached.exists(), "the compiled plugin was written");
    let restarted = on_disk(&dir, &keys);
    let t = Instant::now();
    let p = restarted.load(DEFAULT_PLUGIN).await.unwrap();
    let warm = t.elapsed();
    restarted
        .route_and_render(&p, Limits::default(), &ctx(json!({})), &samples()[0])
        .await
        .unwrap();
    eprintln!("default plugin: compiled in {cold:?}, loaded from the disk cache in {warm:?}");
    // A corrupt cache file is not trusted: the plugin is compiled again.
    std::fs::write(&cached, b"garbage").unwrap();
    let again = on_disk(&dir, &keys);
    assert!(again.load(DEFAULT_PLUGIN).await.is_ok());
}

#[tokio::test]
async fn a_compiled_plugin_planted_under_a_new_plugins_hash_is_not_run() {
    let hostile_wasm = std::fs::read(HOSTILE).unwrap();
    let entry = |dir: &TempDir| dir.0.join(format!("{}.cwasm", sha256_hex(&hostile_wasm)));
    // The attacker's code: the frozen plugin, compiled by a host of the same engine (an
    // entry it wrote: its MAC, then the artifact).
    let theirs = TempDir::new("planter");
    let planter = on_disk(&theirs, &keyring());
    let frozen_wasm = std::fs::read(FROZEN).unwrap();
    let frozen = planter.load(&frozen_wasm).await.unwrap();
    assert!(body_of(&planter, &frozen).await.starts_with("[0.1.0] "), "the planted code's tell");
    let written = std::fs::read(theirs.0.join(format!("{}.cwasm", sha256_hex(&frozen_wasm)))).unwrap();
    let keys = keyring();
    // Planted as a bare artifact, as the other host's entry (another key), and as an entry
    // this host wrote for another plugin (right key, wrong name).
    let ours = TempDir::new("planted");
    let own = on_disk(&ours, &keys);
    own.load(&frozen_wasm).await.unwrap();
    let own_entry = std::fs::read(ours.0.join(format!("{}.cwasm", sha256_hex(&frozen_wasm)))).unwrap();
    for (what, planted) in [
        ("a bare artifact", written[32..].to_vec()),
        ("another host's entry", written.clone()),
        ("this host's entry of another plugin", own_entry),
    ] {
        std::fs::write(entry(&ours), &planted).unwrap();
        let rt = on_disk(&ours, &keys);
        let p = rt.load(&hostile_wasm).await.unwrap();
        let body = body_of(&rt, &p).await;
        assert!(
            body.contains("needs you. Ref") && !body.starts_with("[0.1.0]"),
            "{what}: the uploaded plugin ran, not the planted one: {body}"
        );
        // …and the entry now holds the uploaded plugin, authenticated.
        let again = on_disk(&ours, &keys);
        let p = again.load(&hostile_wasm).await.unwrap();
        assert!(body_of(&again, &p).await.contains("needs you. Ref"), "{what}");
        assert_ne!(std::fs::read(entry(&ours)).unwrap(), planted, "{what}: recompiled and rewritten");
    }
}

#[tokio::test]
async fn a_cache_folder_others_can_write_or_we_do_not_own_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("cache-perm");
    let keys = keyring();
    let made = dir.0.join("deep/plugins");
    let rt = PluginRuntime::serving(Some(made.clone()), &keys).unwrap();
    drop(rt);
    std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = PluginRuntime::serving(Some(made.clone()), &keys)
        .err()
        .expect("a world-writable folder is refused");
    let text = format!("{e:#}");
    assert!(
        text.contains("ML_CONNECTOR_PLUGIN_CACHE_DIR") && text.contains("can be written by others"),
        "{text}"
    );
    std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A folder above it that others can write (not sticky, unlike /tmp): someone could swap it.
    std::fs::set_permissions(dir.0.join("deep"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = format!("{:#}", PluginRuntime::serving(Some(made.clone()), &keys).err().expect("refused"));
    assert!(e.contains("ML_CONNECTOR_PLUGIN_CACHE_DIR") && e.contains("above it"), "{e}");
    std::fs::set_permissions(dir.0.join("deep"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Only root can hand a folder to another user (a folder we made is ours: its owner is us).
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&dir.0).unwrap()) == 0 {
        std::os::unix::fs::chown(&made, Some(65534), None).unwrap();
        let e = format!("{:#}", PluginRuntime::serving(Some(made.clone()), &keys).err().expect("refused"));
        assert!(
            e.contains("ML_CONNECTOR_PLUGIN_CACHE_DIR") && e.contains("belongs to uid 65534"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn a_link_planted_at_a_cache_entry_is_not_followed() {
    let dir = TempDir::new("cache-link");
    let victim = TempDir::new("victim");
    let target = victim.0.join("precious");
    std::fs::write(&target, b"not the cache's").unwrap();
    let entry = dir.0.join(format!("{}.cwasm", sha256_hex(DEFAULT_PLUGIN)));
    std::os::unix::fs::symlink(&target, &entry).unwrap();
    let keys = keyring();
    let rt = on_disk(&dir, &keys);
    let p = rt.load(DEFAULT_PLUGIN).await.unwrap();
    body_of(&rt, &p).await;
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"not the cache's",
        "the write did not go through the link"
    );
    assert!(
        std::fs::symlink_metadata(&entry).unwrap().is_file(),
        "the link was replaced by the entry"
    );
    // A link to a valid entry is not read either.
    let elsewhere = victim.0.join("entry");
    std::fs::rename(&entry, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &entry).unwrap();
    on_disk(&dir, &keys).load(DEFAULT_PLUGIN).await.unwrap();
    assert!(std::fs::symlink_metadata(&entry).unwrap().is_file());
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

fn child_compiler() -> Compiler {
    Compiler::Child(ml_connector_tests::binary())
}

fn alive(pid: u32) -> bool {
    // A zombie (killed, not yet reaped) counts as ended.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

#[tokio::test]
async fn plugins_compile_in_a_child_process_within_a_size_cap_and_a_time_limit() {
    let wasm = std::fs::read(HOSTILE).unwrap();
    // `ml-connector compile-plugin` compiles; the host loads what it wrote.
    let rt = PluginRuntime::new(None).unwrap().with_compiler(child_compiler());
    let p = rt.load(&wasm).await.unwrap();
    assert!(body_of(&rt, &p).await.contains("needs you. Ref"));
    let junk = rt.load(b"not wasm at all").await.err().expect("junk is refused");
    assert_eq!(junk.kind, FaultKind::WrongWorld);
    assert!(junk.message.contains("not a WebAssembly component"), "{junk}");
    // Over the size cap: refused before anything compiles.
    let capped = PluginRuntime::new(None)
        .unwrap()
        .with_compiler(child_compiler())
        .with_compile_limits(CompileLimits {
            max_wasm_bytes: 64 << 10,
            time: Duration::from_secs(600),
        });
    let f = capped.load(&wasm).await.err().expect("over the cap");
    assert_eq!(f.kind, FaultKind::CompileLimit, "{f}");
    assert!(
        f.message
            .contains(&format!("is {} bytes; a plugin may be at most 65536 bytes", wasm.len())),
        "{f}"
    );
    // Past the time limit: the compiler process is killed, and the caller answered.
    let hasty = PluginRuntime::new(None)
        .unwrap()
        .with_compiler(child_compiler())
        .with_compile_limits(CompileLimits {
            time: Duration::from_millis(1),
            ..CompileLimits::default()
        });
    let t = Instant::now();
    let f = hasty.load(&wasm).await.err().expect("past the time limit");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "answered at the limit, not after the compile"
    );
    assert_eq!(f.kind, FaultKind::CompileLimit, "{f}");
    assert!(f.message.contains("did not compile within 0.001 s; its compiler (process "), "{f}");
    let pid: u32 = f
        .message
        .split("(process ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(!alive(pid), "the compiler process {pid} was killed");
    // A refusal is remembered: the same bytes are not compiled again and again.
    let again = hasty.load(&wasm).await.err().unwrap();
    assert_eq!(again.message, f.message);
}

/// `ml-connector serve` on the harness's database, its plugin cache in `cache`; its HTTP
/// and gRPC addresses.
async fn serve(db_url: &str, cache: &TempDir) -> (tokio::process::Child, String, String) {
    let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (http, grpc) = (format!("127.0.0.1:{}", port()), format!("127.0.0.1:{}", port()));
    let child = tokio::process::Command::new(ml_connector_tests::binary())
        .arg("serve")
        .env("ML_CONNECTOR_DATABASE_URL", db_url)
        .env("ML_CONNECTOR_MASTER_KEY", generate_master_key())
        .env("ML_CONNECTOR_ADMIN_TOKEN", "test-admin-token-0123456789")
        .env("ML_CONNECTOR_GRPC_ADDR", &grpc)
        .env("ML_CONNECTOR_HTTP_ADDR", &http)
        .env("ML_CONNECTOR_METRICS_ADDR", "127.0.0.1:0")
        .env("ML_CONNECTOR_PLUGIN_CACHE_DIR", &cache.0)
        .env("ML_CONNECTOR_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if client
            .get(format!("http://{http}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return (child, http, grpc);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("serve never became ready on {http}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_other_calls_answer_while_serve_compiles_a_plugin() {
    use ml_connector::grpc::pb;
    let h = harness("sqlite").await;
    let cache = TempDir::new("serve-cache");
    let (_serve, http, grpc) = serve(&h.db.url, &cache).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auth = |mut req: tonic::Request<()>| {
        req.metadata_mut()
            .insert("authorization", "Bearer test-admin-token-0123456789".parse().unwrap());
        Ok(req)
    };
    let mut uploads = pb::plugins_client::PluginsClient::with_interceptor(channel.clone(), auth);
    let mut tenants = pb::tenants_client::TenantsClient::with_interceptor(channel, auth);
    // The biggest plugin at hand, compiled cold by serve's compiler process.
    let wasm = std::fs::read(HOSTILE).unwrap();
    let compiling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let prober = tokio::spawn({
        let compiling = compiling.clone();
        async move {
            let client = reqwest::Client::new();
            let (mut health, mut calls) = (Vec::new(), Vec::new());
            while compiling.load(std::sync::atomic::Ordering::SeqCst) {
                let t = Instant::now();
                let r = client.get(format!("http://{http}/healthz")).send().await.unwrap();
                assert!(r.status().is_success(), "/healthz answered {}", r.status());
                health.push(t.elapsed());
                let t = Instant::now();
                tenants.list_tenants(pb::ListTenantsRequest {}).await.unwrap();
                calls.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (health, calls)
        }
    });
    let t = Instant::now();
    let uploaded = uploads
        .upload_plugin(pb::UploadPluginRequest {
            tenant_id: h.tenant.id.clone(),
            wasm: wasm.clone(),
            activate: false,
        })
        .await
        .unwrap()
        .into_inner();
    let compile = t.elapsed();
    compiling.store(false, std::sync::atomic::Ordering::SeqCst);
    let (mut health, mut calls) = prober.await.unwrap();
    assert_eq!(uploaded.sha256, sha256_hex(&wasm));
    assert!(
        std::fs::read_dir(&cache.0)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".cwasm")),
        "the compiled plugin was kept in the configured cache folder"
    );
    health.sort();
    calls.sort();
    let pct = |v: &[Duration], p: usize| {
        v.get((v.len() * p / 100).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    eprintln!(
        "while serve compiled a {} KiB plugin ({compile:?}): {} /healthz round-trips, median {:?}, max {:?}; {} ListTenants calls, median {:?}, max {:?}",
        wasm.len() >> 10,
        health.len(),
        pct(&health, 50),
        pct(&health, 100),
        calls.len(),
        pct(&calls, 50),
        pct(&calls, 100),
    );
}

#[tokio::test]
async fn a_sleeping_plugin_is_cut_by_the_wall_clock_limit_and_its_instance_discarded() {
    let rt = PluginRuntime::new(None).unwrap().with_call_timeout(Duration::from_millis(200));
    let p = rt.load(&std::fs::read(HOSTILE).unwrap()).await.unwrap();
    let alert = &samples()[0];
    let sleepy = ctx(json!({"mode": "sleep"}));
    let t = Instant::now();
    let f = rt.route_and_render(&p, Limits::default(), &sleepy, alert).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(600), "cut long before the guest's hour");
    assert_eq!(f.kind, FaultKind::Timeout, "{f}");
    assert_eq!(f.call, "route");
    assert!(f.message.contains("ran past its wall-clock limit of 0.2 s"), "{f}");
    let ok = rt.route_and_render(&p, Limits::default(), &ctx(json!({})), alert).await.unwrap();
    let f = rt
        .interpret_reply(
            &p,
            Limits::default(),
            &sleepy,
            alert,
            &ok.routed[0].delivery,
            &Answer::Text("ok".into()),
        )
        .await
        .unwrap_err();
    assert_eq!((f.kind, f.call.as_str()), (FaultKind::Timeout, "interpret-reply"), "{f}");
    // Every cut call's instance went back to the pool (256 slots): more cut calls than slots.
    let quick = PluginRuntime::new(None).unwrap().with_call_timeout(Duration::from_millis(5));
    let p = quick.load(&std::fs::read(HOSTILE).unwrap()).await.unwrap();
    for i in 0..300 {
        let f = quick.route_and_render(&p, Limits::default(), &sleepy, alert).await.unwrap_err();
        assert_eq!(f.kind, FaultKind::Timeout, "call {i}: {f}");
    }
    quick.route_and_render(&p, Limits::default(), &ctx(json!({})), alert).await.unwrap();
}

#[tokio::test]
async fn fuel_and_memory_settings_have_a_ceiling() {
    use ml_connector::core::limits::{PLUGIN_FUEL_MAX, PLUGIN_MEMORY_MAX_BYTES};
    let huge = Limits {
        fuel: u64::MAX,
        ..Limits::default()
    };
    assert!(
        huge.check()
            .unwrap_err()
            .contains(&format!("limits.fuel is {}; it must be 1 to {PLUGIN_FUEL_MAX}", u64::MAX))
    );
    let greedy = Limits {
        memory_bytes: PLUGIN_MEMORY_MAX_BYTES + 1,
        ..Limits::default()
    };
    assert!(greedy.check().unwrap_err().contains("limits.memory_bytes"));
    Limits::default().check().unwrap();
    // A setting stored before the ceiling existed gets the ceiling: a loop stops on its fuel.
    let rt = PluginRuntime::new(None).unwrap().with_call_timeout(Duration::from_secs(600));
    let p = rt.load(&std::fs::read(HOSTILE).unwrap()).await.unwrap();
    let f = rt
        .route_and_render(&p, huge, &ctx(json!({"mode": "loop"})), &samples()[0])
        .await
        .unwrap_err();
    assert_eq!(f.kind, FaultKind::BudgetExhausted, "{f}");
}
