//! The dispatch benchmark's peer, measured on the same machine in the same sitting: the
//! seed's send side (BullMQ on Redis, one worker at concurrency 32, a template rendered and
//! POSTed form-encoded; `peer/dispatch.mjs`) against the same Twilio stand-in process the
//! host's `dispatch` bench uses. Needs Node.js and npm (its packages are installed from
//! `peer/package-lock.json` on first run) and Redis on 127.0.0.1:6379.
//!
//!     cargo bench -p ml-connector --bench dispatch_peer
//!
//! The stand-in, not the peer, says how many messages were created: the figure counts only
//! what Twilio would have accepted.

use std::path::Path;
use std::process::Command;

#[path = "support/mod.rs"]
mod support;

const ALERTS: u64 = 20_000;

fn main() {
    ml_connector::init_tls();
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

async fn run() {
    let peer = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer");
    if !peer.join("node_modules").exists() {
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&peer)
            .status()
            .expect("npm is installed");
        assert!(ok.success(), "npm ci failed in {}", peer.display());
    }
    let stand_in = support::start(&["twilio-sandbox", "--addr", "127.0.0.1:0"]);
    let account = ml_connector::twilio_sandbox::TwilioSandboxConfig::default();
    let http = reqwest::Client::new();
    // The stand-in answers and does nothing more, as in the host's bench.
    http.post(format!("{}/_sandbox/faults", stand_in.base))
        .json(&serde_json::json!({"skip_callbacks": true}))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("the stand-in takes its settings");
    let (node_before, redis_before, stand_in_before) = (children_cpu(), redis_cpu(), stand_in.cpu());
    // The peer has the machine to itself while it runs: nothing of this process is busy.
    let out = Command::new("node")
        .arg("dispatch.mjs")
        .current_dir(&peer)
        .env("PEER_ALERTS", ALERTS.to_string())
        .env("PEER_TWILIO_BASE", &stand_in.base)
        .env("PEER_ACCOUNT_SID", &account.account_sid)
        .env("PEER_KEY_SID", &account.api_key_sid)
        .env("PEER_KEY_SECRET", &account.api_key_secret)
        .output()
        .expect("node is installed");
    let node_cpu = children_cpu() - node_before;
    let redis_cpu = redis_cpu().zip(redis_before).map(|(after, before)| after - before);
    let stand_in_cpu = stand_in.cpu().zip(stand_in_before).map(|(after, before)| after - before);
    assert!(out.status.success(), "the peer failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .find(|l| l.starts_with(b"{"))
            .expect("the peer prints its figures"),
    )
    .unwrap();
    let stats: serde_json::Value = http
        .get(format!("{}/_sandbox/stats", stand_in.base))
        .send()
        .await
        .expect("the stand-in reports")
        .json()
        .await
        .unwrap();
    println!(
        "dispatch peer: BullMQ on Redis, concurrency {}, Twilio stand-in in its own process",
        report["concurrency"]
    );
    println!(
        "  {ALERTS} alerts queued and accepted in {:.2} s: {:.0} alerts/s (all queued after {:.2} s)",
        report["elapsed_s"].as_f64().unwrap(),
        report["per_second"].as_f64().unwrap(),
        report["queued_s"].as_f64().unwrap()
    );
    println!(
        "  the stand-in created {} messages; {} jobs failed",
        stats["messages_created"], report["failed"]
    );
    let per_alert = |d: std::time::Duration| d.as_secs_f64() * 1e6 / ALERTS as f64;
    println!(
        "  the peer used {:.0} µs of CPU per alert in Node{}",
        per_alert(node_cpu),
        redis_cpu
            .map(|r| format!(" and {:.0} µs in Redis", per_alert(r)))
            .unwrap_or_default()
    );
    if let Some(cpu) = stand_in_cpu {
        println!("  the stand-in used {:.0} µs of CPU per alert (its own process)", per_alert(cpu));
    }
    assert_eq!(stats["messages_created"].as_u64(), Some(ALERTS), "each alert sent once");
}

/// CPU time used by this process's children that ended and were waited for (here: Node).
fn children_cpu() -> std::time::Duration {
    support::rusage_cpu(libc::RUSAGE_CHILDREN)
}

/// The CPU Redis has used so far, as it reports it (`INFO cpu`); `None` without `redis-cli`.
fn redis_cpu() -> Option<std::time::Duration> {
    let out = Command::new("redis-cli").args(["INFO", "cpu"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some(std::time::Duration::from_secs_f64(field("used_cpu_user")? + field("used_cpu_sys")?))
}
