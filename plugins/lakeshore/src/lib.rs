//! An example customer plugin, showing what a tenant can change: Lakeshore Precision
//! Components calls the plant manager for every PO at or above `call_over` (default 25,000)
//! and texts the buyer too; it tells suppliers about their short receipts and quantity
//! variances, but never during the supplier's quiet hours (`quiet_start`–`quiet_end` of the
//! plant's time zone, default 20:00–07:00): those wait until morning. Bodies carry the
//! company's prefix.

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use ml_connector::plugin::log::{Level, log};
use ml_connector::plugin::types::*;
use plugin_kit::{Intent, minutes_until_awake, money, read_reply};

struct Lakeshore;

fn cfg(ctx: &Context, key: &str, default: &str) -> String {
    plugin_kit::config_str(&ctx.config, key).unwrap_or_else(|| default.to_string())
}

fn person(record: &AlertRecord, role: Role) -> Option<Person> {
    record.people.iter().find(|p| p.role == role).cloned()
}

fn send(to: Person, channel: Channel, delay_minutes: u32) -> Delivery {
    Delivery { to, channel, delay_minutes, escalation_step: 0 }
}

impl Guest for Lakeshore {
    fn route(ctx: Context, record: AlertRecord) -> Result<Vec<Delivery>, String> {
        let mut out = Vec::new();
        let quiet = minutes_until_awake(&ctx.local_time, &cfg(&ctx, "quiet_start", "20:00"), &cfg(&ctx, "quiet_end", "07:00"));
        match (record.kind, record.reason_code.as_str()) {
            (RecordKind::PurchaseOrder, _) => {
                let big = record.amount.as_deref().is_some_and(|a| plugin_kit::at_least(a, &cfg(&ctx, "call_over", "25000")));
                if let Some(pm) = person(&record, Role::PlantManager) {
                    out.push(send(pm, if big { Channel::Voice } else { Channel::Sms }, 0));
                }
                if let Some(buyer) = person(&record, Role::Buyer).filter(|_| big) {
                    out.push(send(buyer, Channel::Sms, 0));
                }
            }
            (RecordKind::GoodsReceipt, _) | (RecordKind::SupplierInvoice, "quantity_variance") => {
                if let Some(b) = person(&record, Role::Buyer) {
                    out.push(send(b, Channel::Sms, 0));
                }
                if let Some(s) = person(&record, Role::SupplierContact) {
                    if quiet > 0 {
                        log(Level::Info, "supplier alert held until the quiet hours end", &[("minutes".into(), quiet.to_string())]);
                    }
                    out.push(send(s, Channel::Sms, quiet));
                }
            }
            (RecordKind::SupplierInvoice, _) => {
                if let Some(ap) = person(&record, Role::ApClerk) {
                    out.push(send(ap, Channel::Sms, 0));
                }
            }
        }
        Ok(out)
    }

    fn render(_ctx: Context, record: AlertRecord, delivery: Delivery) -> Result<Message, String> {
        let amount = match (&record.amount, &record.currency) {
            (Some(a), Some(c)) => format!(", {}", money(a, c)),
            _ => String::new(),
        };
        let r = &record.reference;
        Ok(match (delivery.channel, delivery.to.role) {
            (Channel::Voice, _) => Message::Voice(VoiceScript {
                say: format!(
                    "Lakeshore Precision, purchasing. Purchase order {} from {}{amount} needs your approval.",
                    record.key, record.supplier_name
                ),
                choices: vec![
                    KeypadChoice { digit: "1".into(), action: ReplyAction::Approve, label: "Press 1 to approve.".into() },
                    KeypadChoice { digit: "3".into(), action: ReplyAction::Reject, label: "Press 3 to reject.".into() },
                ],
            }),
            (Channel::Sms, Role::SupplierContact) => Message::Sms(format!(
                "Lakeshore Precision Components: about your delivery for {}: {}. Please call our buyer. Ref {r}",
                record.key, record.reason
            )),
            (Channel::Sms, _) if record.kind == RecordKind::PurchaseOrder => {
                Message::Sms(format!("[Lakeshore] {} {}{amount} awaits approval. APPROVE {r} / REJECT {r}", record.key, record.supplier_name))
            }
            (Channel::Sms, _) => Message::Sms(format!("[Lakeshore] {} {}{amount}: {}. SEEN {r} to acknowledge", record.key, record.supplier_name, record.reason)),
        })
    }

    fn interpret_reply(_ctx: Context, record: AlertRecord, _delivery: Delivery, answer: Answer) -> Result<Reply, String> {
        let action = match answer {
            Answer::Keypress(k) if k == "1" => ReplyAction::Approve,
            Answer::Keypress(k) if k == "3" => ReplyAction::Reject,
            Answer::Keypress(_) => ReplyAction::Unknown,
            Answer::Text(t) => match read_reply(&t, &record.reference) {
                (Intent::Approve, true) => ReplyAction::Approve,
                (Intent::Reject, true) => ReplyAction::Reject,
                (Intent::Acknowledge, _) => ReplyAction::Acknowledge,
                _ => ReplyAction::Unknown,
            },
        };
        let confirmation = match action {
            ReplyAction::Approve => format!("[Lakeshore] {} approved.", record.key),
            ReplyAction::Reject => format!("[Lakeshore] {} rejected.", record.key),
            ReplyAction::Acknowledge => format!("[Lakeshore] Thanks, {} noted.", record.key),
            ReplyAction::Unknown => String::new(),
        };
        Ok(Reply { action, confirmation })
    }
}

export!(Lakeshore);
