//! The default plugin: what ml-connector does for a tenant that brings no plugin of its own.
//!
//! Routing: a missing receipt goes to the PO's buyer (who can get it posted), a price or
//! quantity variance to the AP clerk, a PO waiting for approval to the plant manager (by
//! voice at or above `voice_threshold`, default 50,000), a short or over receipt to the
//! buyer. High and critical items escalate to a call if nobody answers. Suppliers are not
//! alerted. Configuration (JSON): `{"voice_threshold": "50000", "escalate_after_minutes": 60}`.

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use ml_connector::plugin::types::*;
use plugin_kit::{Intent, money, read_reply};

struct DefaultPlugin;

fn first_with(record: &AlertRecord, roles: &[Role]) -> Option<Person> {
    roles.iter().find_map(|r| record.people.iter().find(|p| p.role == *r).cloned())
}

fn delivery(to: Person, channel: Channel, delay: u32, step: u8) -> Delivery {
    Delivery { to, channel, delay_minutes: delay, escalation_step: step }
}

fn label(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::SupplierInvoice => "Invoice",
        RecordKind::PurchaseOrder => "Purchase order",
        RecordKind::GoodsReceipt => "Receipt",
    }
}

fn amount(record: &AlertRecord) -> String {
    match (&record.amount, &record.currency) {
        (Some(a), Some(c)) => format!(" {}", money(a, c)),
        _ => String::new(),
    }
}

fn due(record: &AlertRecord) -> String {
    match (&record.due_date, record.urgency) {
        (Some(d), Urgency::Critical) => format!(" Overdue since {d}."),
        (Some(d), _) => format!(" Due {d}."),
        _ => String::new(),
    }
}

fn needs_decision(record: &AlertRecord) -> bool {
    record.kind == RecordKind::PurchaseOrder
}

impl Guest for DefaultPlugin {
    fn route(ctx: Context, record: AlertRecord) -> Result<Vec<Delivery>, String> {
        let threshold = plugin_kit::config_str(&ctx.config, "voice_threshold").unwrap_or_else(|| "50000".into());
        let after: u32 = plugin_kit::config_str(&ctx.config, "escalate_after_minutes").and_then(|m| m.parse().ok()).unwrap_or(60);
        let roles: &[Role] = match (record.kind, record.reason_code.as_str()) {
            (RecordKind::SupplierInvoice, "missing_receipt") => &[Role::Buyer, Role::ApClerk],
            (RecordKind::SupplierInvoice, _) => &[Role::ApClerk, Role::Buyer],
            (RecordKind::PurchaseOrder, _) => &[Role::PlantManager, Role::Buyer],
            (RecordKind::GoodsReceipt, _) => &[Role::Buyer],
        };
        let Some(person) = first_with(&record, roles) else {
            return Ok(Vec::new());
        };
        let high_value = record.amount.as_deref().is_some_and(|a| plugin_kit::at_least(a, &threshold));
        let first = if needs_decision(&record) && high_value { Channel::Voice } else { Channel::Sms };
        let mut out = vec![delivery(person.clone(), first, 0, 0)];
        if matches!(record.urgency, Urgency::High | Urgency::Critical) && first == Channel::Sms {
            out.push(delivery(person, Channel::Voice, after, 1));
        }
        Ok(out)
    }

    fn render(ctx: Context, record: AlertRecord, delivery: Delivery) -> Result<Message, String> {
        let _ = ctx;
        let what = format!("{} {} from {}{}", label(record.kind), record.key, record.supplier_name, amount(&record));
        let reference = &record.reference;
        Ok(match delivery.channel {
            Channel::Sms if needs_decision(&record) => Message::Sms(format!(
                "{what} is waiting for your approval.{} Reply APPROVE {reference} or REJECT {reference}.",
                due(&record)
            )),
            Channel::Sms => Message::Sms(format!("{what}: {}.{} Reply SEEN {reference} when you are on it.", record.reason, due(&record))),
            Channel::Voice => {
                let mut choices = Vec::new();
                if needs_decision(&record) {
                    choices.push(KeypadChoice { digit: "1".into(), action: ReplyAction::Approve, label: "To approve, press 1.".into() });
                    choices.push(KeypadChoice { digit: "2".into(), action: ReplyAction::Reject, label: "To reject, press 2.".into() });
                }
                choices.push(KeypadChoice { digit: "9".into(), action: ReplyAction::Acknowledge, label: "If you will handle it, press 9.".into() });
                Message::Voice(VoiceScript {
                    say: format!("Hello {}, this is ml-connector. {what}: {}.{}", delivery.to.name, record.reason, due(&record)),
                    choices,
                })
            }
        })
    }

    fn interpret_reply(ctx: Context, record: AlertRecord, delivery: Delivery, answer: Answer) -> Result<Reply, String> {
        let key = &record.key;
        let action = match &answer {
            Answer::Keypress(k) => match Self::render(ctx, record.clone(), delivery)? {
                Message::Voice(v) => v.choices.iter().find(|c| &c.digit == k).map(|c| c.action).unwrap_or(ReplyAction::Unknown),
                Message::Sms(_) => ReplyAction::Unknown,
            },
            Answer::Text(t) => match read_reply(t, &record.reference) {
                (Intent::Approve | Intent::Reject, false) => {
                    return Ok(Reply {
                        action: ReplyAction::Unknown,
                        confirmation: format!("To decide on {key}, reply APPROVE {r} or REJECT {r}.", r = record.reference),
                    });
                }
                (Intent::Approve, true) if needs_decision(&record) => ReplyAction::Approve,
                (Intent::Reject, true) if needs_decision(&record) => ReplyAction::Reject,
                (Intent::Unknown, _) => ReplyAction::Unknown,
                _ => ReplyAction::Acknowledge,
            },
        };
        let confirmation = match action {
            ReplyAction::Approve => format!("Approved {key}. Thank you."),
            ReplyAction::Reject => format!("Rejected {key}. The buyer will be told."),
            ReplyAction::Acknowledge => format!("Thanks, noted that you are on {key}."),
            ReplyAction::Unknown => format!("Sorry, not understood. Reply SEEN {} for {key}.", record.reference),
        };
        Ok(Reply { action, confirmation })
    }
}

export!(DefaultPlugin);
