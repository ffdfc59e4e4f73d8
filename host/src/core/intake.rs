//! Webhooks from Twilio, decided purely: which event a request is, the key that makes a
//! retry or a duplicate a no-op, whether a status moves a delivery forward, what an inbound
//! SMS says (an opt-out word, a reference code), and what an answer may do.

use super::model::RecordKind;
use super::routing::{Answer, Channel, ReplyAction};

/// The four webhook paths of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    MessageStatus,
    CallStatus,
    InboundSms,
    Gather,
}

impl HookKind {
    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "messages/status" => HookKind::MessageStatus,
            "calls/status" => HookKind::CallStatus,
            "messages/inbound" => HookKind::InboundSms,
            "calls/gather" => HookKind::Gather,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::MessageStatus => "message_status",
            HookKind::CallStatus => "call_status",
            HookKind::InboundSms => "inbound_sms",
            HookKind::Gather => "gather",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            HookKind::MessageStatus,
            HookKind::CallStatus,
            HookKind::InboundSms,
            HookKind::Gather,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Why a validated request still cannot be queued: it lacks what identifies it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {kind} webhook has no {missing}")]
pub struct Unidentified {
    pub kind: &'static str,
    pub missing: &'static str,
}

/// The key under which an event is stored once: `(MessageSid, MessageStatus)` for message
/// statuses, `(CallSid, SequenceNumber)` for call statuses, the inbound message's own sid,
/// and for a `<Gather>` answer (no sequence number) the call and the prompt it answers.
/// Twilio's `I-Twilio-Idempotency-Token` is a second, independent guard kept beside it.
pub fn dedup_key(kind: HookKind, params: &[(String, String)], prompt: Option<&str>) -> Result<String, Unidentified> {
    // Twilio sends both the current and the legacy name (`MessageSid` and `SmsSid`).
    let need_any = |names: &[&'static str]| {
        names.iter().find_map(|n| param(params, n)).ok_or(Unidentified {
            kind: kind.as_str(),
            missing: names[0],
        })
    };
    let need = |name: &'static str| need_any(&[name]);
    Ok(match kind {
        HookKind::MessageStatus => {
            let sid = need_any(&["MessageSid", "SmsSid"])?;
            let status = need_any(&["MessageStatus", "SmsStatus"])?;
            format!("ms/{sid}/{status}")
        }
        HookKind::CallStatus => {
            let sid = need("CallSid")?;
            // Without a sequence number (an older account) the status names the step.
            match param(params, "SequenceNumber") {
                Some(seq) => format!("cs/{sid}/{seq}"),
                None => format!("cs/{sid}/{}", need("CallStatus")?),
            }
        }
        HookKind::InboundSms => format!("in/{}", need_any(&["MessageSid", "SmsSid"])?),
        HookKind::Gather => format!("g/{}/{}", need("CallSid")?, prompt.unwrap_or("0")),
    })
}

/// Where a status stands in its lifecycle; a status moves a delivery only forward. Final
/// statuses share the top rank: the first one to arrive stands. `None`: not a status we know
/// (Twilio adds values without notice), recorded but moving nothing.
pub fn status_rank(channel: Channel, status: &str) -> Option<u8> {
    Some(match channel {
        Channel::Sms => match status {
            "accepted" | "scheduled" => 1,
            "queued" => 2,
            "sending" => 3,
            "sent" => 4,
            "delivered" | "undelivered" | "failed" | "canceled" => 5,
            "read" => 6,
            _ => return None,
        },
        Channel::Voice => match status {
            "queued" | "initiated" => 1,
            "ringing" => 2,
            "in-progress" | "answered" => 3,
            "completed" | "busy" | "failed" | "no-answer" | "canceled" => 5,
            _ => return None,
        },
    })
}

pub fn is_final(channel: Channel, status: &str) -> bool {
    status_rank(channel, status).is_some_and(|r| r >= 5)
}

/// Whether `new` replaces `current` (a late `sent` never overwrites `delivered`).
pub fn advances(channel: Channel, current: Option<&str>, new: &str) -> bool {
    match (current.and_then(|c| status_rank(channel, c)), status_rank(channel, new)) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(c), Some(n)) => n > c,
    }
}

/// A carrier keyword in an inbound SMS. Twilio acts on these itself, so none may be a
/// command of ours; they never reach a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    OptOut,
    OptIn,
    Help,
}

/// The keyword an inbound SMS carries: Twilio's `OptOutType` when Advanced Opt-Out is on,
/// else the whole body being one of the default words (case and spaces ignored).
pub fn keyword(body: &str, opt_out_type: Option<&str>) -> Option<Keyword> {
    match opt_out_type.map(str::to_ascii_uppercase).as_deref() {
        Some("STOP") => return Some(Keyword::OptOut),
        Some("START") => return Some(Keyword::OptIn),
        Some("HELP") => return Some(Keyword::Help),
        _ => {}
    }
    let word = body.trim().trim_end_matches(['.', '!']).to_ascii_uppercase();
    match word.as_str() {
        "STOP" | "UNSUBSCRIBE" | "END" | "QUIT" | "STOPALL" | "REVOKE" | "OPTOUT" | "CANCEL" => Some(Keyword::OptOut),
        "START" | "YES" | "UNSTOP" => Some(Keyword::OptIn),
        "HELP" | "INFO" => Some(Keyword::Help),
        _ => None,
    }
}

/// The alphabet of alert references (no look-alikes: no I, L, O, 0, 1).
pub const REFERENCE_ALPHABET: &str = "ABCDEFGHJKMNPQRSTUVWXYZ23456789";
pub const REFERENCE_LEN: usize = 6;

/// Words of an SMS body that could be an alert reference, upper-cased, in order.
pub fn reference_candidates(body: &str) -> Vec<String> {
    body.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.len() == REFERENCE_LEN)
        .map(str::to_ascii_uppercase)
        .filter(|w| w.chars().all(|c| REFERENCE_ALPHABET.contains(c)))
        .collect()
}

/// What an answer may do once interpreted. A sender's number can be spoofed, so an SMS
/// approval or rejection counts only when the reply carried the alert's reference; a keypress
/// on a call we placed is its own proof. Without proof the answer is recorded as seen.
pub fn effective_action(action: ReplyAction, channel: Channel, reference_given: bool) -> (ReplyAction, Option<&'static str>) {
    match (action, channel, reference_given) {
        (ReplyAction::Approve | ReplyAction::Reject, Channel::Sms, false) => (
            ReplyAction::Acknowledge,
            Some("a decision by SMS counts only with the alert's reference code; recorded as seen"),
        ),
        (a, _, _) => (a, None),
    }
}

pub fn action_word(a: ReplyAction) -> &'static str {
    match a {
        ReplyAction::Acknowledge => "acknowledged",
        ReplyAction::Approve => "approved",
        ReplyAction::Reject => "rejected",
        ReplyAction::Unknown => "not understood",
    }
}

/// How QAD names a record in a comment: reference type and number (a receipt line's
/// comment goes on its receiver).
pub fn qad_reference(kind: RecordKind, key: &str) -> (&'static str, String) {
    match kind {
        RecordKind::PurchaseOrder => ("PO", key.to_string()),
        RecordKind::SupplierInvoice => ("SUPPLIER_INVOICE", key.to_string()),
        RecordKind::GoodsReceipt => ("RECEIVER", key.split('/').next().unwrap_or(key).to_string()),
    }
}

fn channel_word(channel: Channel) -> &'static str {
    match channel {
        Channel::Sms => "SMS",
        Channel::Voice => "Call",
    }
}

/// The QAD comment for a delivery's final status, `at` in the tenant's local time.
pub fn status_comment(channel: Channel, name: &str, phone: &str, status: &str, error_code: Option<&str>, at: &str) -> String {
    let mut s = format!("ml-connector: {} to {name} ({phone}) {status} {at}", channel_word(channel));
    if let Some(code) = error_code {
        s.push_str(&format!(", Twilio error {code}"));
    }
    s.push('.');
    s
}

/// The QAD comment for an answer.
pub fn answer_comment(name: &str, answer: &Answer, action: ReplyAction, at: &str) -> String {
    let said = match answer {
        Answer::Text(t) => {
            let t: String = t.chars().take(200).collect();
            format!("replied {at}: \"{}\"", t.replace('"', "'"))
        }
        Answer::Keypress(k) => format!("pressed {k} on the call {at}"),
    };
    format!("ml-connector: {name} {said} ({}).", action_word(action))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn dedup_keys() {
        // (kind, params, prompt, the key or the missing parameter)
        type Case<'a> = (HookKind, &'a [(&'a str, &'a str)], Option<&'a str>, Result<&'a str, &'a str>);
        let cases: &[Case] = &[
            (
                HookKind::MessageStatus,
                &[("MessageSid", "SM1"), ("MessageStatus", "sent")],
                None,
                Ok("ms/SM1/sent"),
            ),
            (
                HookKind::MessageStatus,
                &[("SmsSid", "SM1"), ("SmsStatus", "delivered")],
                None,
                Ok("ms/SM1/delivered"),
            ),
            (HookKind::MessageStatus, &[("MessageStatus", "sent")], None, Err("MessageSid")),
            (
                HookKind::CallStatus,
                &[("CallSid", "CA1"), ("SequenceNumber", "2"), ("CallStatus", "in-progress")],
                None,
                Ok("cs/CA1/2"),
            ),
            (
                HookKind::CallStatus,
                &[("CallSid", "CA1"), ("CallStatus", "completed")],
                None,
                Ok("cs/CA1/completed"),
            ),
            (HookKind::CallStatus, &[("CallSid", "CA1")], None, Err("CallStatus")),
            (HookKind::InboundSms, &[("MessageSid", "SM9"), ("Body", "ok")], None, Ok("in/SM9")),
            (HookKind::Gather, &[("CallSid", "CA1"), ("Digits", "1")], Some("7"), Ok("g/CA1/7")),
            (HookKind::Gather, &[("Digits", "1")], Some("7"), Err("CallSid")),
        ];
        for (kind, params, prompt, want) in cases {
            let got = dedup_key(*kind, &p(params), *prompt);
            match want {
                Ok(k) => assert_eq!(got.as_deref(), Ok(*k), "{kind:?} {params:?}"),
                Err(missing) => assert_eq!(got.unwrap_err().missing, *missing, "{kind:?} {params:?}"),
            }
        }
    }

    #[test]
    fn statuses_only_move_forward() {
        let cases: &[(Channel, Option<&str>, &str, bool)] = &[
            (Channel::Sms, None, "sent", true),
            (Channel::Sms, Some("sent"), "delivered", true),
            (Channel::Sms, Some("delivered"), "sent", false),
            (Channel::Sms, Some("delivered"), "delivered", false),
            (Channel::Sms, Some("delivered"), "undelivered", false),
            (Channel::Sms, Some("failed"), "delivered", false),
            (Channel::Sms, Some("delivered"), "read", true),
            (Channel::Sms, Some("queued"), "sending", true),
            (Channel::Sms, Some("sent"), "some-new-status", false),
            (Channel::Voice, None, "initiated", true),
            (Channel::Voice, Some("ringing"), "initiated", false),
            (Channel::Voice, Some("in-progress"), "completed", true),
            (Channel::Voice, Some("completed"), "ringing", false),
            (Channel::Voice, Some("no-answer"), "completed", false),
        ];
        for (ch, cur, new, want) in cases {
            assert_eq!(advances(*ch, *cur, new), *want, "{ch:?} {cur:?} -> {new}");
        }
        assert!(is_final(Channel::Sms, "undelivered"));
        assert!(!is_final(Channel::Voice, "ringing"));
    }

    #[test]
    fn keywords() {
        let cases: &[(&str, Option<&str>, Option<Keyword>)] = &[
            ("STOP", None, Some(Keyword::OptOut)),
            (" stop ", None, Some(Keyword::OptOut)),
            ("Unsubscribe", None, Some(Keyword::OptOut)),
            ("cancel", None, Some(Keyword::OptOut)),
            ("STOPALL", None, Some(Keyword::OptOut)),
            ("start", None, Some(Keyword::OptIn)),
            ("Yes", None, Some(Keyword::OptIn)),
            ("unstop", None, Some(Keyword::OptIn)),
            ("help", None, Some(Keyword::Help)),
            ("INFO", None, Some(Keyword::Help)),
            ("stop sending me these", None, None),
            ("APPROVE K7QM2X", None, None),
            ("please stop", Some("STOP"), Some(Keyword::OptOut)),
            ("ok", Some("START"), Some(Keyword::OptIn)),
        ];
        for (body, oot, want) in cases {
            assert_eq!(keyword(body, *oot), *want, "{body:?} {oot:?}");
        }
    }

    #[test]
    fn references_in_bodies() {
        let cases: &[(&str, &[&str])] = &[
            ("APPROVE K7QM2X", &["K7QM2X"]),
            // Every word of the shape is a candidate; the store knows which is a reference.
            ("approve k7qm2x thanks", &["K7QM2X", "THANKS"]),
            ("K7QM2X: seen", &["K7QM2X"]),
            ("ok", &[]),
            // I, L, O, 0 and 1 are not in the alphabet: not a reference.
            ("APPROVE K7QM2I", &[]),
            ("PLEASE APPROVE", &[]),
            ("SEEN BRAVE2", &["BRAVE2"]),
            ("R2D2C3PO", &[]),
        ];
        for (body, want) in cases {
            assert_eq!(reference_candidates(body), *want, "{body:?}");
        }
    }

    #[test]
    fn decisions_need_proof_by_sms() {
        use ReplyAction::*;
        let cases = [
            (Approve, Channel::Sms, true, Approve, false),
            (Approve, Channel::Sms, false, Acknowledge, true),
            (Reject, Channel::Sms, false, Acknowledge, true),
            (Acknowledge, Channel::Sms, false, Acknowledge, false),
            (Approve, Channel::Voice, false, Approve, false),
            (Unknown, Channel::Sms, false, Unknown, false),
        ];
        for (a, ch, proof, want, noted) in cases {
            let (got, note) = effective_action(a, ch, proof);
            assert_eq!((got, note.is_some()), (want, noted), "{a:?} {ch:?} {proof}");
        }
    }

    #[test]
    fn qad_comments() {
        assert_eq!(
            qad_reference(RecordKind::GoodsReceipt, "RCV50007/1"),
            ("RECEIVER", "RCV50007".into())
        );
        assert_eq!(
            qad_reference(RecordKind::SupplierInvoice, "SI-70003"),
            ("SUPPLIER_INVOICE", "SI-70003".into())
        );
        assert_eq!(
            status_comment(Channel::Sms, "Ana Ruiz", "+13125550130", "delivered", None, "2026-11-27 10:02 CST"),
            "ml-connector: SMS to Ana Ruiz (+13125550130) delivered 2026-11-27 10:02 CST."
        );
        assert_eq!(
            status_comment(Channel::Voice, "Ana Ruiz", "+13125550130", "no-answer", Some("30003"), "10:02"),
            "ml-connector: Call to Ana Ruiz (+13125550130) no-answer 10:02, Twilio error 30003."
        );
        assert_eq!(
            answer_comment(
                "Ana Ruiz",
                &Answer::Text("receipt \"posted\"".into()),
                ReplyAction::Acknowledge,
                "10:05"
            ),
            "ml-connector: Ana Ruiz replied 10:05: \"receipt 'posted'\" (acknowledged)."
        );
        assert_eq!(
            answer_comment("Ana Ruiz", &Answer::Keypress("1".into()), ReplyAction::Approve, "10:05"),
            "ml-connector: Ana Ruiz pressed 1 on the call 10:05 (approved)."
        );
    }
}
