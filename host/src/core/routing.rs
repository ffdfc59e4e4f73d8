//! What a plugin is given and what it returns, as plain data, and the host's checks on
//! what it returns. A plugin is untrusted: every output is validated here before the host
//! acts on it. Pure: the plugin runtime (an adapter) converts to and from these types.

use chrono::{DateTime, Datelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::attention::Urgency;
use super::model::RecordKind;
use super::people::Recipient;

/// Twilio's limit on a message body.
pub const MAX_SMS_CHARS: usize = 1600;
/// TwiML may hold 4,000 characters; the script leaves room for the markup and choices.
pub const MAX_VOICE_CHARS: usize = 3000;
pub const MAX_DELIVERIES: usize = 20;
pub const MAX_DELAY_MINUTES: u32 = 7 * 24 * 60;
pub const MAX_ESCALATION_STEP: u8 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Sms,
    Voice,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Voice => "voice",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sms" => Some(Channel::Sms),
            "voice" => Some(Channel::Voice),
            _ => None,
        }
    }
}

/// One episode of a record needing attention, as a plugin sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertInput {
    pub kind: RecordKind,
    pub key: String,
    pub episode: u32,
    pub supplier_code: String,
    pub supplier_name: String,
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub due_date: Option<String>,
    pub reason_code: String,
    pub reason: String,
    pub urgency: Urgency,
    pub people: Vec<Recipient>,
    pub reference: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginContext {
    pub tenant: String,
    pub config: String,
    pub now_utc: String,
    pub time_zone: String,
    pub local_time: String,
    pub local_weekday: u8,
}

impl PluginContext {
    /// Time passes into a plugin as data: the plugin itself has no clock.
    pub fn at(tenant: &str, config: &str, now: DateTime<Utc>, tz: Tz) -> Self {
        let local = now.with_timezone(&tz);
        PluginContext {
            tenant: tenant.to_string(),
            config: if config.trim().is_empty() {
                "{}".into()
            } else {
                config.to_string()
            },
            now_utc: now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            time_zone: tz.name().to_string(),
            local_time: local.format("%Y-%m-%dT%H:%M:%S").to_string(),
            local_weekday: local.weekday().number_from_monday() as u8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub to: Recipient,
    pub channel: Channel,
    pub delay_minutes: u32,
    pub escalation_step: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyAction {
    Acknowledge,
    Approve,
    Reject,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeypadChoice {
    pub digit: String,
    pub action: ReplyAction,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "snake_case")]
pub enum Message {
    Sms { body: String },
    Voice { say: String, choices: Vec<KeypadChoice> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Answer {
    Text(String),
    Keypress(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub action: ReplyAction,
    pub confirmation: String,
}

/// A delivery the plugin decided, with the words it rendered for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Routed {
    pub delivery: Delivery,
    pub message: Message,
}

fn is_e164(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or("");
    (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

/// Deliveries must go to the record's own people, each as the role the record gives them
/// (the role labels an answer: who may decide is the tenant's rule, so a plugin may not
/// relabel a supplier contact as a buyer), at E.164 numbers, within sane bounds.
pub fn check_deliveries(alert: &AlertInput, deliveries: &[Delivery]) -> Result<(), String> {
    if deliveries.len() > MAX_DELIVERIES {
        return Err(format!(
            "route returned {} deliveries; at most {MAX_DELIVERIES} are allowed",
            deliveries.len()
        ));
    }
    for (i, d) in deliveries.iter().enumerate() {
        let n = i + 1;
        if !is_e164(&d.to.phone) {
            return Err(format!("delivery {n}: {:?} is not an E.164 number", d.to.phone));
        }
        if !alert.people.iter().any(|p| p.phone == d.to.phone) {
            return Err(format!("delivery {n}: {} is not one of the record's people", d.to.phone));
        }
        if !alert.people.iter().any(|p| p.phone == d.to.phone && p.role == d.to.role) {
            return Err(format!(
                "delivery {n}: {} is not the record's {} (the record names that number only as {})",
                d.to.phone,
                d.to.role.as_str(),
                roles_of(alert, &d.to.phone)
            ));
        }
        if d.delay_minutes > MAX_DELAY_MINUTES {
            return Err(format!("delivery {n}: a delay of {} minutes is more than a week", d.delay_minutes));
        }
        if d.escalation_step > MAX_ESCALATION_STEP {
            return Err(format!(
                "delivery {n}: escalation step {} is beyond {MAX_ESCALATION_STEP}",
                d.escalation_step
            ));
        }
    }
    Ok(())
}

/// The roles the record gives a number, for an error: "buyer, plant_manager".
fn roles_of(alert: &AlertInput, phone: &str) -> String {
    let roles: Vec<&str> = alert.people.iter().filter(|p| p.phone == phone).map(|p| p.role.as_str()).collect();
    roles.join(", ")
}

/// The person of the record a delivery went to: the record's own entry for its (phone, role),
/// never the plugin's label; `None` when the record names no such pair.
pub fn person_of<'a>(alert: &'a AlertInput, delivery: &Delivery) -> Option<&'a Recipient> {
    alert
        .people
        .iter()
        .find(|p| p.phone == delivery.to.phone && p.role == delivery.to.role)
}

/// The standard compliance lines an SMS may carry although they name carrier keywords
/// (matched case-insensitively). The check below and its test share this list.
pub const COMPLIANCE_LINES: &[&str] = &[
    "Reply STOP to opt out",
    "Reply STOP to unsubscribe",
    "Reply STOP to cancel",
    "Text STOP to opt out",
    "STOP to opt out",
    "STOP to end",
    "Reply HELP for help",
    "Text HELP for help",
    "HELP for help",
];

/// Words that introduce what a person should send back.
const ASKING_WORDS: [&str; 6] = ["reply", "text", "send", "respond", "answer", "type"];

/// A carrier keyword the SMS asks the person to send, outside the compliance lines: in
/// capitals anywhere ("APPROVE or CANCEL"), or after "reply", "text" and the like. The carrier
/// acts on such a reply itself (YES, START and UNSTOP opt a person back in; STOP, CANCEL and
/// the rest out), so no message of ours may ask for one.
pub fn asked_keyword(body: &str) -> Option<String> {
    let mut rest = body.to_string();
    for line in COMPLIANCE_LINES {
        rest = replace_ignoring_case(&rest, line);
    }
    let words: Vec<&str> = rest.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    words.iter().enumerate().find_map(|(i, w)| {
        let is_keyword = super::intake::keyword(w, None).is_some();
        let capitals = w.chars().all(|c| c.is_ascii_uppercase());
        let asked = i > 0 && ASKING_WORDS.contains(&words[i - 1].to_ascii_lowercase().as_str());
        (is_keyword && (capitals || asked)).then(|| w.to_ascii_uppercase())
    })
}

/// `text` with every occurrence of `line` (ASCII case ignored) replaced by a space.
fn replace_ignoring_case(text: &str, line: &str) -> String {
    let (lower, needle) = (text.to_ascii_lowercase(), line.to_ascii_lowercase());
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(found) = lower[at..].find(&needle) {
        out.push_str(&text[at..at + found]);
        out.push(' ');
        at += found + needle.len();
    }
    out.push_str(&text[at..]);
    out
}

fn check_sms_words(what: &str, body: &str) -> Result<(), String> {
    match asked_keyword(body) {
        Some(word) => Err(format!(
            "{what} asks for {word}, a carrier keyword: the carrier acts on it (opt in or out) before we see it; \
             only the standard compliance lines (e.g. \"Reply STOP to opt out\") may name one"
        )),
        None => Ok(()),
    }
}

pub fn check_message(channel: Channel, m: &Message) -> Result<(), String> {
    match (channel, m) {
        (Channel::Sms, Message::Sms { body }) => {
            let n = body.chars().count();
            if body.trim().is_empty() {
                Err("the SMS body is empty".into())
            } else if n > MAX_SMS_CHARS {
                Err(format!("the SMS body has {n} characters; Twilio takes at most {MAX_SMS_CHARS}"))
            } else {
                check_sms_words("the SMS body", body)
            }
        }
        (Channel::Voice, Message::Voice { say, choices }) => {
            let n = say.chars().count() + choices.iter().map(|c| c.label.chars().count()).sum::<usize>();
            if say.trim().is_empty() {
                return Err("the voice script is empty".into());
            }
            if n > MAX_VOICE_CHARS {
                return Err(format!(
                    "the voice script has {n} characters; at most {MAX_VOICE_CHARS} fit in TwiML"
                ));
            }
            let mut seen = Vec::new();
            for c in choices {
                let valid = c.digit.len() == 1 && c.digit.chars().all(|d| d.is_ascii_digit() || d == '*' || d == '#');
                if !valid {
                    return Err(format!("keypad choice {:?} is not a single key 0-9, * or #", c.digit));
                }
                if seen.contains(&&c.digit) {
                    return Err(format!("keypad key {} is offered twice", c.digit));
                }
                seen.push(&c.digit);
            }
            Ok(())
        }
        (Channel::Sms, Message::Voice { .. }) => Err("render returned a voice script for an SMS delivery".into()),
        (Channel::Voice, Message::Sms { .. }) => Err("render returned an SMS body for a voice delivery".into()),
    }
}

pub fn check_reply(r: &Reply) -> Result<(), String> {
    let n = r.confirmation.chars().count();
    if n > MAX_SMS_CHARS {
        return Err(format!("the confirmation has {n} characters; at most {MAX_SMS_CHARS}"));
    }
    check_sms_words("the confirmation", &r.confirmation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sms_may_not_ask_for_a_carrier_keyword() {
        let cases: &[(&str, Option<&str>)] = &[
            ("Reply YES to approve", Some("YES")),
            ("reply yes to approve", Some("YES")),
            ("Text START to resume alerts", Some("START")),
            ("Send UNSTOP", Some("UNSTOP")),
            ("APPROVE K7QM2X or CANCEL", Some("CANCEL")),
            ("Reply \"stop\" to stop these", Some("STOP")),
            ("Invoice SI-1 is held. Reply SEEN K7QM2X", None),
            ("Yes, the invoice is held; we will stop the payment run", None),
            ("PO 42 waits for you. Reply APPROVE K7QM2X. Reply STOP to opt out", None),
            ("PO 42 waits. reply stop to opt out. Reply HELP for help.", None),
            ("PO 42. Reply STOP to opt out, Reply YES to approve", Some("YES")),
        ];
        for (body, want) in cases {
            assert_eq!(asked_keyword(body).as_deref(), *want, "{body:?}");
            let checked = check_message(Channel::Sms, &Message::Sms { body: body.to_string() });
            assert_eq!(checked.is_err(), want.is_some(), "{body:?}: {checked:?}");
        }
        for line in COMPLIANCE_LINES {
            let body = format!("Invoice SI-1 is held. {line}");
            assert_eq!(check_message(Channel::Sms, &Message::Sms { body: body.clone() }), Ok(()), "{body}");
        }
        let asked = Reply {
            action: ReplyAction::Acknowledge,
            confirmation: "Noted. Reply START for more".into(),
        };
        assert!(check_reply(&asked).unwrap_err().contains("START"));
    }
    use crate::core::people::Role;

    fn person(phone: &str) -> Recipient {
        Recipient {
            role: Role::Buyer,
            name: "B".into(),
            source: "employee B-01".into(),
            phone: phone.into(),
        }
    }
    fn alert() -> AlertInput {
        AlertInput {
            kind: RecordKind::PurchaseOrder,
            key: "PO1".into(),
            episode: 1,
            supplier_code: "S-1".into(),
            supplier_name: "S".into(),
            amount: Some("10.00".into()),
            currency: Some("USD".into()),
            due_date: None,
            reason_code: "pending_approval".into(),
            reason: "waiting for approval".into(),
            urgency: Urgency::Low,
            people: vec![person("+13125550120")],
            reference: "K7QM2X".into(),
        }
    }
    fn d(phone: &str, delay: u32, step: u8) -> Delivery {
        Delivery {
            to: person(phone),
            channel: Channel::Sms,
            delay_minutes: delay,
            escalation_step: step,
        }
    }
    /// A delivery to `phone` labelled `role`.
    fn as_role(phone: &str, role: Role) -> Delivery {
        Delivery {
            to: Recipient { role, ..person(phone) },
            ..d(phone, 0, 0)
        }
    }
    /// The alert with a second person: the same buyer's number is also a supplier contact's
    /// (a small company), and a supplier contact of its own.
    fn shared_alert() -> AlertInput {
        let mut a = alert();
        a.people.push(Recipient {
            role: Role::SupplierContact,
            ..person("+13125550151")
        });
        a.people.push(Recipient {
            role: Role::PlantManager,
            ..person("+13125550120")
        });
        a
    }

    #[test]
    fn a_delivery_keeps_the_role_the_record_gives_its_person() {
        let cases: Vec<(Delivery, Result<(), &str>)> = vec![
            (as_role("+13125550120", Role::Buyer), Ok(())),
            (as_role("+13125550120", Role::PlantManager), Ok(())),
            (as_role("+13125550151", Role::SupplierContact), Ok(())),
            // A plugin relabelling a supplier contact as a buyer (who may decide POs).
            (
                as_role("+13125550151", Role::Buyer),
                Err("delivery 1: +13125550151 is not the record's buyer (the record names that number only as supplier_contact)"),
            ),
            (
                as_role("+13125550120", Role::ApClerk),
                Err("delivery 1: +13125550120 is not the record's ap_clerk (the record names that number only as buyer, plant_manager)"),
            ),
            (
                as_role("+13125550199", Role::Buyer),
                Err("delivery 1: +13125550199 is not one of the record's people"),
            ),
        ];
        for (delivery, want) in cases {
            let a = shared_alert();
            assert_eq!(
                check_deliveries(&a, std::slice::from_ref(&delivery)),
                want.map_err(String::from),
                "{delivery:?}"
            );
            assert_eq!(person_of(&a, &delivery).is_some(), want.is_ok(), "{delivery:?}");
        }
        // The delivery's error is named by its place.
        let ds = vec![as_role("+13125550120", Role::Buyer), as_role("+13125550151", Role::PlantManager)];
        assert!(check_deliveries(&shared_alert(), &ds).unwrap_err().starts_with("delivery 2: "));
    }

    #[test]
    fn deliveries_table() {
        let cases: Vec<(Vec<Delivery>, Result<(), &str>)> = vec![
            (vec![], Ok(())),
            (vec![d("+13125550120", 0, 0)], Ok(())),
            (vec![d("+13125550120", 60, 1)], Ok(())),
            (
                vec![d("3125550120", 0, 0)],
                Err("delivery 1: \"3125550120\" is not an E.164 number"),
            ),
            (vec![d("+1555", 0, 0)], Err("delivery 1: \"+1555\" is not an E.164 number")),
            (
                vec![d("+13125550120", 0, 0), d("+13125550199", 0, 0)],
                Err("delivery 2: +13125550199 is not one of the record's people"),
            ),
            (
                vec![d("+13125550120", 20_000, 0)],
                Err("delivery 1: a delay of 20000 minutes is more than a week"),
            ),
            (vec![d("+13125550120", 0, 11)], Err("delivery 1: escalation step 11 is beyond 10")),
            (
                (0..21).map(|_| d("+13125550120", 0, 0)).collect(),
                Err("route returned 21 deliveries; at most 20 are allowed"),
            ),
        ];
        for (ds, want) in cases {
            assert_eq!(check_deliveries(&alert(), &ds), want.map_err(String::from));
        }
    }

    #[test]
    fn messages_table() {
        let choice = |digit: &str| KeypadChoice {
            digit: digit.into(),
            action: ReplyAction::Approve,
            label: "x".into(),
        };
        let voice = |say: &str, choices: Vec<KeypadChoice>| Message::Voice { say: say.into(), choices };
        let sms = |b: &str| Message::Sms { body: b.into() };
        let cases: Vec<(Channel, Message, Result<(), String>)> = vec![
            (Channel::Sms, sms("hello"), Ok(())),
            (Channel::Sms, sms("  "), Err("the SMS body is empty".into())),
            (Channel::Sms, sms(&"é".repeat(1600)), Ok(())),
            (
                Channel::Sms,
                sms(&"x".repeat(1601)),
                Err("the SMS body has 1601 characters; Twilio takes at most 1600".into()),
            ),
            (Channel::Voice, voice("hi", vec![choice("1"), choice("#")]), Ok(())),
            (
                Channel::Voice,
                voice("hi", vec![choice("1"), choice("1")]),
                Err("keypad key 1 is offered twice".into()),
            ),
            (
                Channel::Voice,
                voice("hi", vec![choice("12")]),
                Err("keypad choice \"12\" is not a single key 0-9, * or #".into()),
            ),
            (Channel::Voice, voice("", vec![]), Err("the voice script is empty".into())),
            (
                Channel::Sms,
                voice("hi", vec![]),
                Err("render returned a voice script for an SMS delivery".into()),
            ),
            (
                Channel::Voice,
                sms("hi"),
                Err("render returned an SMS body for a voice delivery".into()),
            ),
        ];
        for (ch, m, want) in cases {
            assert_eq!(check_message(ch, &m), want, "{m:?}");
        }
    }

    #[test]
    fn context_carries_local_time_and_weekday() {
        let now = DateTime::parse_from_rfc3339("2026-11-28T03:30:00Z").unwrap().with_timezone(&Utc);
        let c = PluginContext::at("t", "", now, chrono_tz::America::Chicago);
        assert_eq!(
            (c.local_time.as_str(), c.local_weekday, c.config.as_str()),
            ("2026-11-27T21:30:00", 5, "{}")
        );
    }
}
