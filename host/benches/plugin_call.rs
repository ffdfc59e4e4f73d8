//! Route + render per record through the default plugin (a fresh Store per record from a
//! cached InstancePre, pooling allocator, fuel on) against the same logic written as a native
//! Rust function; plus the plugin's cold compile time and its load time from the disk cache.
//! Before timing, the bench checks that both produce the same deliveries and words.
//!
//!     cargo bench -p ml-connector --bench plugin_call

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use ml_connector::core::attention::Urgency;
use ml_connector::core::model::RecordKind;
use ml_connector::core::people::Role;
use ml_connector::core::routing::{AlertInput, Channel, Delivery, KeypadChoice, Message, PluginContext, ReplyAction, Routed};
use ml_connector::plugin::{DEFAULT_PLUGIN, Limits, PluginRuntime};
use ml_connector::plugin_check::samples;

const ROUNDS: usize = 5_000;

fn money(amount: &str, currency: &str) -> String {
    let (int, frac) = amount.split_once('.').unwrap_or((amount, ""));
    let mut g = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            g.push(',');
        }
        g.push(c);
    }
    if frac.is_empty() {
        format!("{g} {currency}")
    } else {
        format!("{g}.{frac} {currency}")
    }
}

/// plugins/default, natively: the same rules and the same words.
fn native(a: &AlertInput) -> Vec<Routed> {
    let roles: &[Role] = match (a.kind, a.reason_code.as_str()) {
        (RecordKind::SupplierInvoice, "missing_receipt") => &[Role::Buyer, Role::ApClerk],
        (RecordKind::SupplierInvoice, _) => &[Role::ApClerk, Role::Buyer],
        (RecordKind::PurchaseOrder, _) => &[Role::PlantManager, Role::Buyer],
        (RecordKind::GoodsReceipt, _) => &[Role::Buyer],
    };
    let Some(person) = roles.iter().find_map(|r| a.people.iter().find(|p| p.role == *r).cloned()) else {
        return vec![];
    };
    let decision = a.kind == RecordKind::PurchaseOrder;
    let high_value = a
        .amount
        .as_deref()
        .is_some_and(|x| x.split('.').next().unwrap_or("0").parse::<u64>().unwrap_or(0) >= 50_000);
    let first = if decision && high_value { Channel::Voice } else { Channel::Sms };
    let mut ds = vec![Delivery {
        to: person.clone(),
        channel: first,
        delay_minutes: 0,
        escalation_step: 0,
    }];
    if matches!(a.urgency, Urgency::High | Urgency::Critical) && first == Channel::Sms {
        ds.push(Delivery {
            to: person,
            channel: Channel::Voice,
            delay_minutes: 60,
            escalation_step: 1,
        });
    }
    let label = match a.kind {
        RecordKind::SupplierInvoice => "Invoice",
        RecordKind::PurchaseOrder => "Purchase order",
        RecordKind::GoodsReceipt => "Receipt",
    };
    let amount = match (&a.amount, &a.currency) {
        (Some(x), Some(c)) => format!(" {}", money(x, c)),
        _ => String::new(),
    };
    let due = match (&a.due_date, a.urgency) {
        (Some(d), Urgency::Critical) => format!(" Overdue since {d}."),
        (Some(d), _) => format!(" Due {d}."),
        _ => String::new(),
    };
    let what = format!("{label} {} from {}{amount}", a.key, a.supplier_name);
    let r = &a.reference;
    ds.into_iter()
        .map(|d| {
            let message = match d.channel {
                Channel::Sms if decision => Message::Sms {
                    body: format!("{what} is waiting for your approval.{due} Reply APPROVE {r} or REJECT {r}."),
                },
                Channel::Sms => Message::Sms {
                    body: format!("{what}: {}.{due} Reply SEEN {r} when you are on it.", a.reason),
                },
                Channel::Voice => {
                    let mut choices = Vec::new();
                    if decision {
                        choices.push(KeypadChoice {
                            digit: "1".into(),
                            action: ReplyAction::Approve,
                            label: "To approve, press 1.".into(),
                        });
                        choices.push(KeypadChoice {
                            digit: "2".into(),
                            action: ReplyAction::Reject,
                            label: "To reject, press 2.".into(),
                        });
                    }
                    choices.push(KeypadChoice {
                        digit: "9".into(),
                        action: ReplyAction::Acknowledge,
                        label: "If you will handle it, press 9.".into(),
                    });
                    Message::Voice {
                        say: format!("Hello {}, this is ml-connector. {what}: {}.{due}", d.to.name, a.reason),
                        choices,
                    }
                }
            };
            Routed { delivery: d, message }
        })
        .collect()
}

/// The allocator the host runs with (see `ml_connector::HostAllocator`).
#[global_allocator]
static ALLOCATOR: ml_connector::HostAllocator = ml_connector::HostAllocator;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cache = std::env::temp_dir().join(format!("mlc-bench-cache-{}", std::process::id()));
    let t = Instant::now();
    let keys = ml_connector::secrets::Keyring::new(&ml_connector::secrets::generate_master_key(), &[]).unwrap();
    let disk = || ml_connector::plugin::DiskCache::open(&cache, &keys).unwrap();
    let rt = PluginRuntime::new(Some(disk())).unwrap();
    let plugin = rt.load(DEFAULT_PLUGIN).await.unwrap();
    let cold = t.elapsed();
    let t = Instant::now();
    let restarted = PluginRuntime::new(Some(disk())).unwrap();
    restarted.load(DEFAULT_PLUGIN).await.unwrap();
    let from_disk = t.elapsed();
    let _ = std::fs::remove_dir_all(&cache);

    let ctx = PluginContext::at(
        "bench",
        "{}",
        Utc.with_ymd_and_hms(2026, 11, 27, 16, 0, 0).unwrap(),
        chrono_tz::America::Chicago,
    );
    let records = samples();
    for a in &records {
        let wasm = rt.route_and_render(&plugin, Limits::default(), &ctx, a).await.unwrap().routed;
        assert_eq!(wasm, native(a), "the native baseline is the same logic ({})", a.key);
    }
    for _ in 0..500 {
        for a in &records {
            std::hint::black_box(rt.route_and_render(&plugin, Limits::default(), &ctx, a).await.unwrap());
        }
    }
    let t = Instant::now();
    for _ in 0..ROUNDS {
        for a in &records {
            std::hint::black_box(
                rt.route_and_render(&plugin, Limits::default(), &ctx, std::hint::black_box(a))
                    .await
                    .unwrap(),
            );
        }
    }
    let wasm = t.elapsed() / (ROUNDS * records.len()) as u32;
    let t = Instant::now();
    for _ in 0..ROUNDS * 10 {
        for a in &records {
            std::hint::black_box(native(std::hint::black_box(a)));
        }
    }
    let native_t = t.elapsed() / (ROUNDS * 10 * records.len()) as u32;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "route + render per record, fresh Store from a cached InstancePre: {:>8.2} µs",
        us(wasm)
    );
    println!(
        "the same logic as a native Rust function:                       {:>8.2} µs",
        us(native_t)
    );
    println!(
        "ratio plugin / native: {:.0}   (goal: under 10 µs per record)",
        wasm.as_secs_f64() / native_t.as_secs_f64()
    );
    println!(
        "default plugin: cold compile {:.1} ms, load from the disk cache {:.2} ms",
        cold.as_secs_f64() * 1e3,
        from_disk.as_secs_f64() * 1e3
    );
}
