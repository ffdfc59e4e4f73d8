//! One incremental poll cycle against a QAD sandbox holding 1,000,000 invoices of which 100
//! changed today, and against one holding 100 invoices in all. The sandbox runs in its own
//! process (the release `ml-connector qad-sandbox`), so the host's CPU time is its own.
//! The host's cursors are where a previous poll left them (today), as in production.
//!
//!     cargo bench -p ml-connector --bench poll_cycle

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use ml_connector::clock::ManualClock;
use ml_connector::poller::Poller;
use ml_connector::qad_sandbox::SandboxConfig;
use ml_connector::sandbox::{example_tenant, provision_example};
use ml_connector::secrets::{Keyring, generate_master_key};
use ml_connector::store::Store;

const RUNS: usize = 7;

#[path = "support/mod.rs"]
mod support;

fn start_sandbox(invoices: usize, changed: usize, today: &str) -> support::Emulator {
    support::start(&[
        "qad-sandbox",
        "--addr",
        "127.0.0.1:0",
        "--today",
        today,
        "--invoices",
        &invoices.to_string(),
        "--changed",
        &changed.to_string(),
    ])
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct Figures {
    wall: Duration,
    cpu: Duration,
    rows: u64,
    requests: u64,
}

async fn measure(sb: &support::Emulator, today: chrono::NaiveDate) -> Figures {
    // One runtime with the default plugin compiled, as in a running host: a cold compile is
    // not part of a poll cycle.
    let plugins = Arc::new(ml_connector::plugin::PluginRuntime::new(None).unwrap());
    plugins.load(ml_connector::plugin::DEFAULT_PLUGIN).await.unwrap();
    let mut samples = Vec::new();
    for run in 0..RUNS {
        let dir = std::env::temp_dir().join(format!("mlc-bench-{}-{run}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.join("b.db").display())).await.unwrap();
        store.migrate().await.unwrap();
        let keys = Arc::new(Keyring::new(&generate_master_key(), &[]).unwrap());
        let now = Utc.from_utc_datetime(&today.and_hms_opt(18, 0, 0).unwrap());
        let cfg = SandboxConfig::new(today);
        let tenant = example_tenant(&sb.base, &cfg, 300);
        provision_example(&store, &keys, &tenant, &cfg, now).await.unwrap();
        for stream in ["receipts", "purchase_orders", "invoices"] {
            store.set_cursor(&tenant.id, stream, &today.to_string(), now).await.unwrap();
        }
        let poller = Poller::new(
            store.clone(),
            keys,
            reqwest::Client::new(),
            Arc::new(ManualClock::new(now)),
            plugins.clone(),
        );
        let (t0, c0) = (Instant::now(), cpu_time());
        let report = poller.poll(&tenant.id, "bench").await.unwrap();
        let (wall, cpu) = (t0.elapsed(), cpu_time() - c0);
        assert_eq!(report.error, None);
        assert_eq!(report.totals.rows_changed, 100, "the 100 changed invoices, nothing else");
        samples.push(Figures {
            wall,
            cpu,
            rows: report.qad_rows,
            requests: report.qad_requests,
        });
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    samples.sort_by_key(|f| f.wall);
    samples.swap_remove(RUNS / 2)
}

/// The allocator the host runs with (see `ml_connector::HostAllocator`).
#[global_allocator]
static ALLOCATOR: ml_connector::HostAllocator = ml_connector::HostAllocator;

#[tokio::main]
async fn main() {
    ml_connector::init_tls();
    let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    let mut results = Vec::new();
    for (total, label) in [(100usize, "100 invoices in all"), (1_000_000, "1,000,000 invoices, 100 changed")] {
        let t = Instant::now();
        let sb = start_sandbox(total, 100, &today.to_string());
        eprintln!("sandbox with {label} ready in {:.1} s", t.elapsed().as_secs_f64());
        let f = measure(&sb, today).await;
        println!(
            "poll cycle, {label:<32} wall {:>7.1} ms   host CPU {:>7.1} ms   rows fetched {:>5}   QAD requests {:>4}   (median of {RUNS})",
            f.wall.as_secs_f64() * 1e3,
            f.cpu.as_secs_f64() * 1e3,
            f.rows,
            f.requests
        );
        results.push(f);
    }
    let ratio = results[1].wall.as_secs_f64() / results[0].wall.as_secs_f64();
    let cpu_ratio = results[1].cpu.as_secs_f64() / results[0].cpu.as_secs_f64();
    println!("ratio 1,000,000 / 100: wall {ratio:.2}, host CPU {cpu_ratio:.2} (goal: under 2)");
}
