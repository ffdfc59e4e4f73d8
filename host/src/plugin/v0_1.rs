//! Bindings for `ml-connector:plugin@0.1.0` and conversions to the core's plain types.
//! A later world version gets a module of its own beside this one; plugins built against
//! this one keep running through it (ARCHITECTURE.md, "Plugin versions").

use crate::core::people::{Recipient, Role as CoreRole};
use crate::core::routing;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: async },
    exports: { default: async },
});

pub use ml_connector::plugin::types as t;

pub const WORLD: &str = "ml-connector:plugin@0.1.0";

impl From<&routing::PluginContext> for t::Context {
    fn from(c: &routing::PluginContext) -> Self {
        t::Context {
            tenant: c.tenant.clone(),
            config: c.config.clone(),
            now_utc: c.now_utc.clone(),
            time_zone: c.time_zone.clone(),
            local_time: c.local_time.clone(),
            local_weekday: c.local_weekday,
        }
    }
}

fn role(r: CoreRole) -> t::Role {
    match r {
        CoreRole::Buyer => t::Role::Buyer,
        CoreRole::ApClerk => t::Role::ApClerk,
        CoreRole::PlantManager => t::Role::PlantManager,
        CoreRole::SupplierContact => t::Role::SupplierContact,
    }
}

fn person(p: &Recipient) -> t::Person {
    t::Person {
        role: role(p.role),
        name: p.name.clone(),
        phone: p.phone.clone(),
    }
}

impl From<&routing::AlertInput> for t::AlertRecord {
    fn from(a: &routing::AlertInput) -> Self {
        use crate::core::attention::Urgency as U;
        use crate::core::model::RecordKind as K;
        t::AlertRecord {
            kind: match a.kind {
                K::SupplierInvoice => t::RecordKind::SupplierInvoice,
                K::PurchaseOrder => t::RecordKind::PurchaseOrder,
                K::GoodsReceipt => t::RecordKind::GoodsReceipt,
            },
            key: a.key.clone(),
            episode: a.episode,
            supplier_code: a.supplier_code.clone(),
            supplier_name: a.supplier_name.clone(),
            amount: a.amount.clone(),
            currency: a.currency.clone(),
            due_date: a.due_date.clone(),
            reason_code: a.reason_code.clone(),
            reason: a.reason.clone(),
            urgency: match a.urgency {
                U::Low => t::Urgency::Low,
                U::Normal => t::Urgency::Normal,
                U::High => t::Urgency::High,
                U::Critical => t::Urgency::Critical,
            },
            people: a.people.iter().map(person).collect(),
            reference: a.reference.clone(),
        }
    }
}

fn channel(c: t::Channel) -> routing::Channel {
    match c {
        t::Channel::Sms => routing::Channel::Sms,
        t::Channel::Voice => routing::Channel::Voice,
    }
}

pub fn to_channel(c: routing::Channel) -> t::Channel {
    match c {
        routing::Channel::Sms => t::Channel::Sms,
        routing::Channel::Voice => t::Channel::Voice,
    }
}

/// A plugin's delivery back to the core; `to` is matched against the record's people by
/// number and role, so the host never trusts a plugin's idea of who someone is (name,
/// source). A pair the record does not name stays as the plugin labelled it, and
/// `routing::check_deliveries` refuses it (a supplier contact relabelled a buyer, who
/// may decide a PO).
pub fn delivery(alert: &routing::AlertInput, d: &t::Delivery) -> routing::Delivery {
    let role = match d.to.role {
        t::Role::Buyer => CoreRole::Buyer,
        t::Role::ApClerk => CoreRole::ApClerk,
        t::Role::PlantManager => CoreRole::PlantManager,
        t::Role::SupplierContact => CoreRole::SupplierContact,
    };
    let to = alert
        .people
        .iter()
        .find(|p| p.phone == d.to.phone && p.role == role)
        .cloned()
        .unwrap_or_else(|| Recipient {
            role,
            name: d.to.name.clone(),
            source: "named by the plugin".into(),
            phone: d.to.phone.clone(),
        });
    routing::Delivery {
        to,
        channel: channel(d.channel),
        delay_minutes: d.delay_minutes,
        escalation_step: d.escalation_step,
    }
}

pub fn to_delivery(d: &routing::Delivery) -> t::Delivery {
    t::Delivery {
        to: person(&d.to),
        channel: to_channel(d.channel),
        delay_minutes: d.delay_minutes,
        escalation_step: d.escalation_step,
    }
}

pub fn action(a: t::ReplyAction) -> routing::ReplyAction {
    match a {
        t::ReplyAction::Acknowledge => routing::ReplyAction::Acknowledge,
        t::ReplyAction::Approve => routing::ReplyAction::Approve,
        t::ReplyAction::Reject => routing::ReplyAction::Reject,
        t::ReplyAction::Unknown => routing::ReplyAction::Unknown,
    }
}

pub fn message(m: t::Message) -> routing::Message {
    match m {
        t::Message::Sms(body) => routing::Message::Sms { body },
        t::Message::Voice(v) => routing::Message::Voice {
            say: v.say,
            choices: v
                .choices
                .into_iter()
                .map(|c| routing::KeypadChoice {
                    digit: c.digit,
                    action: action(c.action),
                    label: c.label,
                })
                .collect(),
        },
    }
}

pub fn answer(a: &routing::Answer) -> t::Answer {
    match a {
        routing::Answer::Text(s) => t::Answer::Text(s.clone()),
        routing::Answer::Keypress(k) => t::Answer::Keypress(k.clone()),
    }
}
