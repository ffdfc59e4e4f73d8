//! `ml-connector plugin check FILE.wasm`: what a plugin author runs before shipping. Loads
//! the plugin (checking its world), runs it on sample records of every kind and reason at a
//! fixed time, prints what it decided and rendered and how it reads sample answers, and
//! fails with a clear message on the first fault.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use chrono::{TimeZone, Utc};

use crate::core::attention::Urgency;
use crate::core::model::RecordKind;
use crate::core::people::{Recipient, Role};
use crate::core::routing::{AlertInput, Answer, Channel, Message, PluginContext};
use crate::plugin::{Limits, PluginRuntime, sha256_hex};

fn person(role: Role, name: &str, phone: &str) -> Recipient {
    Recipient {
        role,
        name: name.into(),
        source: "sample".into(),
        phone: phone.into(),
    }
}

/// One record of each kind and reason, as the example manufacturer's data has them.
pub fn samples() -> Vec<AlertInput> {
    let people = vec![
        person(Role::ApClerk, "Grace Liu", "+13125550130"),
        person(Role::Buyer, "Maria Santos", "+13125550120"),
        person(Role::PlantManager, "Robert Hale", "+13125550140"),
        person(Role::SupplierContact, "Dana Whitfield", "+13125550151"),
    ];
    let base = |kind, key: &str, code: &str, reason: &str, urgency, amount: Option<&str>, due: Option<&str>| AlertInput {
        kind,
        key: key.into(),
        episode: 1,
        supplier_code: "S-1001".into(),
        supplier_name: "Midwest Castings Inc".into(),
        amount: amount.map(String::from),
        currency: amount.map(|_| "USD".into()),
        due_date: due.map(String::from),
        reason_code: code.into(),
        reason: reason.into(),
        urgency,
        people: people.clone(),
        reference: "K7QM2X".into(),
    };
    vec![
        base(
            RecordKind::SupplierInvoice,
            "SI-70003",
            "missing_receipt",
            "no goods receipt posted for PO10004 (invoiced 56875.00)",
            Urgency::Critical,
            Some("56875.00"),
            Some("2026-11-05"),
        ),
        base(
            RecordKind::SupplierInvoice,
            "SI-70011",
            "quantity_variance",
            "quantity variance on receipt RCV50011 line 1: invoiced 230, received 210 (9.52%)",
            Urgency::Normal,
            Some("2603.40"),
            Some("2026-12-02"),
        ),
        base(
            RecordKind::SupplierInvoice,
            "SI-70044",
            "price_variance",
            "price variance on receipt RCV50044 line 1: invoiced 14.75, PO price 12.50 (18.00%)",
            Urgency::Low,
            Some("56932.50"),
            Some("2026-12-21"),
        ),
        base(
            RecordKind::PurchaseOrder,
            "PO10259",
            "pending_approval",
            "waiting for approval",
            Urgency::High,
            Some("162823.40"),
            Some("2026-12-10"),
        ),
        base(
            RecordKind::PurchaseOrder,
            "PO10281",
            "pending_approval",
            "waiting for approval",
            Urgency::Low,
            Some("32921.60"),
            Some("2026-12-14"),
        ),
        base(
            RecordKind::GoodsReceipt,
            "RCV50007/1",
            "short_receipt",
            "short receipt on PO10008 line 1: 150 of 250 received",
            Urgency::Normal,
            None,
            None,
        ),
    ]
}

pub async fn run(file: &Path, config: &str) -> anyhow::Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str::<serde_json::Value>(config).context("--config is not JSON")?;
    let runtime = PluginRuntime::new(None)?;
    let t = Instant::now();
    let plugin = runtime
        .load(&wasm)
        .await
        .map_err(|f| anyhow::anyhow!("{} cannot be used: {}", file.display(), f.message))?;
    println!(
        "{}: {} bytes, sha256 {}, world {}, compiled in {} ms",
        file.display(),
        wasm.len(),
        &sha256_hex(&wasm)[..16],
        plugin.world,
        t.elapsed().as_millis()
    );
    // 22:30 on a Friday evening in Chicago: quiet-hours rules show.
    let now = Utc.with_ymd_and_hms(2026, 11, 28, 4, 30, 0).unwrap();
    let ctx = PluginContext::at("sample", config, now, chrono_tz::America::Chicago);
    println!("at {} ({}), config {}\n", ctx.local_time, ctx.time_zone, ctx.config);
    for alert in samples() {
        println!("{} {} — {} ({:?})", alert.kind.label(), alert.key, alert.reason, alert.urgency);
        let outcome = runtime
            .route_and_render(&plugin, Limits::default(), &ctx, &alert)
            .await
            .map_err(|f| anyhow::anyhow!("{} {}: {f}", alert.kind.label(), alert.key))?;
        if outcome.routed.is_empty() {
            println!("  nobody is alerted");
        }
        for r in &outcome.routed {
            let d = &r.delivery;
            let when = if d.delay_minutes > 0 || d.escalation_step > 0 {
                format!(" (after {} min, escalation step {})", d.delay_minutes, d.escalation_step)
            } else {
                String::new()
            };
            match &r.message {
                Message::Sms { body } => println!("  sms to {} {} {}{when}\n    {body:?}", d.to.role.as_str(), d.to.name, d.to.phone),
                Message::Voice { say, choices } => {
                    println!(
                        "  call to {} {} {}{when}\n    says {say:?}",
                        d.to.role.as_str(),
                        d.to.name,
                        d.to.phone
                    );
                    for c in choices {
                        println!("    key {} → {:?}: {:?}", c.digit, c.action, c.label);
                    }
                }
            }
            let answers = match d.channel {
                Channel::Sms => vec![
                    Answer::Text(format!("APPROVE {}", alert.reference)),
                    Answer::Text("approve".into()),
                    Answer::Text(format!("seen {}", alert.reference)),
                ],
                Channel::Voice => vec![Answer::Keypress("1".into()), Answer::Keypress("7".into())],
            };
            for a in answers {
                let reply = runtime
                    .interpret_reply(&plugin, Limits::default(), &ctx, &alert, d, &a)
                    .await
                    .map_err(|f| anyhow::anyhow!("{} {}: {f}", alert.kind.label(), alert.key))?;
                println!("    answer {a:?} → {:?} {:?}", reply.action, reply.confirmation);
            }
        }
        for l in &outcome.logs {
            println!("  log {}: {} {:?}", l.level, l.message, l.fields);
        }
        println!();
    }
    println!("ok: the plugin answered every sample within its budgets");
    Ok(())
}
