//! Sending decisions, pure: the job id that makes an alert unique (the seed's "BullMQ
//! jobId"), what a Twilio answer means for the job, and when to try again.

use std::time::Duration;

use super::model::RecordKind;
use super::routing::Channel;

/// One alert's identity: tenant, record, episode and delivery step (recipient, channel,
/// escalation step). Enqueueing the same id twice is a no-op; a second recipient, an
/// escalation call or a new episode of the same record are other ids.
pub fn send_job_id(tenant: &str, kind: RecordKind, key: &str, episode: i64, channel: Channel, phone: &str, step: u8) -> String {
    format!(
        "send/{tenant}/{}/{key}/{episode}/{}/{phone}/{step}",
        kind.as_str(),
        channel.as_str()
    )
}

/// A `LIKE` pattern (escape character `\`) matching the id of every send job of `channel`
/// to `phone`, whichever its tenant, record, episode or step.
pub fn send_jobs_to(channel: Channel, phone: &str) -> String {
    let escaped: String = phone
        .chars()
        .flat_map(|c| match c {
            '%' | '_' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    format!("send/%/{}/{escaped}/%", channel.as_str())
}

/// Error codes that no retry can fix: record them on the alert and move on.
pub const PERMANENT_CODES: &[u32] = &[
    20003, // authentication
    21210, // From not verified (calls)
    21211, // invalid To
    21216, // blocked number (calls)
    21408, // geo permission
    21606, // From not usable
    21608, // unverified trial number
    21610, // recipient opted out (STOP)
    21612, // To not reachable from this From
    21614, // not a mobile number
];

/// What one answer (or its absence) from Twilio means for the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Created: the sid to track it by.
    Accepted { sid: String },
    /// Not processed (429 / 20429): safe to send again after the delay.
    Throttled { retry_after: Option<Duration> },
    /// Twilio could not be reached at all (no connection): nothing was sent; safe to retry.
    Unreachable { reason: String },
    /// May or may not have been processed (5xx, timeout, connection lost after sending):
    /// reconcile before sending again.
    Unknown { reason: String },
    /// Will never work; `opted_out` puts the number on the tenant's suppression list.
    Permanent {
        code: Option<u32>,
        message: String,
        opted_out: bool,
    },
}

/// Classify an HTTP answer to a create-message or create-call request.
pub fn classify(status: u16, code: Option<u32>, message: &str, sid: Option<&str>, retry_after: Option<Duration>) -> SendOutcome {
    match (status, code, sid) {
        (200..=299, _, Some(sid)) if !sid.is_empty() => SendOutcome::Accepted { sid: sid.to_string() },
        (200..=299, _, _) => SendOutcome::Unknown {
            reason: format!("Twilio answered {status} without a sid"),
        },
        (429, _, _) | (_, Some(20429), _) => SendOutcome::Throttled { retry_after },
        (500..=599, _, _) => SendOutcome::Unknown {
            reason: format!("Twilio answered {status}: {message}"),
        },
        (_, Some(c), _) if PERMANENT_CODES.contains(&c) => SendOutcome::Permanent {
            code: Some(c),
            message: message.to_string(),
            opted_out: c == 21610,
        },
        // Any other 4xx is a request Twilio refuses as it is: sending it again changes nothing.
        (_, c, _) => SendOutcome::Permanent {
            code: c,
            message: format!("Twilio answered {status}: {message}"),
            opted_out: false,
        },
    }
}

pub const RETRY_BASE: Duration = Duration::from_secs(1);
pub const RETRY_CAP: Duration = Duration::from_secs(300);

/// Exponential back-off with jitter for the `attempt`-th retry (1-based): a random point in
/// the upper half of base·2^(attempt−1), capped; never sooner than Twilio's `Retry-After`.
/// `jitter` is a number in [0, 1) the caller draws, so this stays pure.
pub fn retry_delay(attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let exp = RETRY_BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(RETRY_CAP);
    let jittered = exp.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    retry_after.map_or(jittered, |r| jittered.max(r))
}

/// A message in Twilio's list of messages to one number from one number (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedMessage {
    pub sid: String,
    pub body: String,
    /// `date_created`, Unix seconds; `None` when Twilio's date could not be read.
    pub created_at: Option<i64>,
}

/// What Twilio's message list says about an SMS whose create had an unknown outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmsReconciliation {
    /// A message with its words that no other delivery of ours holds: it was sent.
    Sent { sid: String },
    /// No such message: it was not sent, and sending it now is no duplicate.
    NotSent,
    /// Such a message may be one another delivery to the same number is sending right now,
    /// whose answer is not recorded yet: ask again once that one is.
    Wait { why: String },
    /// Not found, but the list may not show it all: sending it may be a duplicate.
    Unproven { why: String },
}

/// Reconcile an unknown SMS of `body` against `listed`, the messages to its number from its
/// number, one page of `page_size`, newest first — every message, queued ones included: a
/// message waiting in a sender's queue has no `date_sent`, so the list is read by creation.
/// A message created before `since` (the job's creation, less clock skew) is not this one;
/// nor is one with other words, nor one another delivery of ours already holds (`known`
/// sids) — a confirmation may well have had the same words. Anything else with its words is
/// this one — unless other sends to the number are in flight (`placing`, their job ids, read
/// after the list): then it may be theirs, and taking it would lose this alert.
pub fn reconcile_sms(
    listed: &[ListedMessage],
    page_size: usize,
    body: &str,
    known: &[String],
    placing: &[String],
    since: i64,
) -> SmsReconciliation {
    let unaccounted: Vec<&str> = listed
        .iter()
        .filter(|m| m.created_at.is_none_or(|t| t >= since) && m.body == body && !known.contains(&m.sid))
        .map(|m| m.sid.as_str())
        .collect();
    let oldest_listed = listed.iter().filter_map(|m| m.created_at).min();
    match unaccounted.first() {
        None if listed.len() >= page_size && oldest_listed.is_none_or(|t| t >= since) => SmsReconciliation::Unproven {
            why: format!("Twilio's list holds more than one page ({page_size}) of messages to this number since the job was queued"),
        },
        None => SmsReconciliation::NotSent,
        Some(_) if !placing.is_empty() => SmsReconciliation::Wait {
            why: format!(
                "Twilio lists {} message(s) with its words no delivery of ours accounts for yet ({}) while {} is being sent",
                unaccounted.len(),
                unaccounted.join(", "),
                placing.join(", ")
            ),
        },
        Some(sid) => SmsReconciliation::Sent { sid: sid.to_string() },
    }
}

/// A call in Twilio's list of calls to one number from one number (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedCall {
    pub sid: String,
    /// `date_created`, Unix seconds; `None` when Twilio's date could not be read.
    pub created_at: Option<i64>,
}

/// What Twilio's call list says about a call whose create had an unknown outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallReconciliation {
    /// No call there could be this one: it was not placed, and placing it now is no duplicate.
    NotPlaced,
    /// A call there may be this one, or may be one another delivery to the same number is
    /// placing right now, whose answer is not recorded yet: ask again once that one is.
    Wait { why: String },
    /// A call there may be this one; a call carries no id of ours to tell, so it is not
    /// placed again and stays visibly unknown.
    Unproven { why: String },
}

/// Reconcile an unknown call against `listed`, the calls to its number from its number, one
/// page of `page_size`. A call created before `since` (the job's creation, less clock skew)
/// is not this one; nor is a call another delivery of ours already holds (`known` sids).
/// Anything else may be this one — unless other deliveries to the number are being placed
/// (`placing`, their job keys, read after the list): such a call may be theirs, with its
/// answer not yet recorded, so the question waits for them. Deciding "not placed" wrongly
/// would call a person twice, so every other doubt (an unreadable date, a full page that may
/// hide more) is "unproven".
pub fn reconcile_call(listed: &[ListedCall], page_size: usize, known: &[String], placing: &[String], since: i64) -> CallReconciliation {
    let maybe_ours: Vec<&str> = listed
        .iter()
        .filter(|c| c.created_at.is_none_or(|t| t >= since) && !known.contains(&c.sid))
        .map(|c| c.sid.as_str())
        .collect();
    if !maybe_ours.is_empty() && !placing.is_empty() {
        return CallReconciliation::Wait {
            why: format!(
                "Twilio lists {} call(s) to this number no delivery of ours accounts for yet ({}) while {} is being placed",
                maybe_ours.len(),
                maybe_ours.join(", "),
                placing.join(", ")
            ),
        };
    }
    if !maybe_ours.is_empty() {
        return CallReconciliation::Unproven {
            why: format!(
                "Twilio lists {} call(s) to this number since the job was queued that no delivery of ours accounts for: {}",
                maybe_ours.len(),
                maybe_ours.join(", ")
            ),
        };
    }
    let oldest_listed = listed.iter().filter_map(|c| c.created_at).min();
    if listed.len() >= page_size && oldest_listed.is_none_or(|t| t >= since) {
        return CallReconciliation::Unproven {
            why: format!("Twilio's list holds more than one page ({page_size}) of calls to this number since the job was queued"),
        };
    }
    CallReconciliation::NotPlaced
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sends_to_a_number_pattern_matches_their_ids_alone() {
        let like = |pattern: &str, id: &str| {
            // LIKE as both engines read it: % any run, _ any one character, \ escapes.
            fn m(p: &[char], s: &[char]) -> bool {
                match p {
                    [] => s.is_empty(),
                    ['\\', c, rest @ ..] => s.first() == Some(c) && m(rest, &s[1..]),
                    ['%', rest @ ..] => (0..=s.len()).any(|i| m(rest, &s[i..])),
                    ['_', rest @ ..] => !s.is_empty() && m(rest, &s[1..]),
                    [c, rest @ ..] => s.first() == Some(c) && m(rest, &s[1..]),
                }
            }
            m(&pattern.chars().collect::<Vec<_>>(), &id.chars().collect::<Vec<_>>())
        };
        let pattern = send_jobs_to(Channel::Voice, "+13125550140");
        let id = |tenant, phone, channel, step| send_job_id(tenant, RecordKind::PurchaseOrder, "PO/1", 2, channel, phone, step);
        let cases = [
            ("a call to the number", id("t", "+13125550140", Channel::Voice, 0), true),
            ("an escalation call", id("t", "+13125550140", Channel::Voice, 1), true),
            ("another tenant's call", id("u", "+13125550140", Channel::Voice, 0), true),
            ("an SMS to the number", id("t", "+13125550140", Channel::Sms, 0), false),
            ("a call to another number", id("t", "+131255501400", Channel::Voice, 0), false),
            ("a confirmation", "confirm/t/x/+13125550140".to_string(), false),
        ];
        for (name, job, matches) in cases {
            assert_eq!(like(&pattern, &job), matches, "{name}: {job} against {pattern}");
        }
        assert!(like(
            &send_jobs_to(Channel::Sms, "+13125550140"),
            &id("t", "+13125550140", Channel::Sms, 0)
        ));
        assert_eq!(send_jobs_to(Channel::Voice, "a_b%c\\"), "send/%/voice/a\\_b\\%c\\\\/%");
    }

    #[test]
    fn job_ids_separate_what_must_be_separate() {
        let base = send_job_id("t", RecordKind::SupplierInvoice, "SI-1", 1, Channel::Sms, "+13125550120", 0);
        assert_eq!(base, "send/t/supplier_invoice/SI-1/1/sms/+13125550120/0");
        let others = [
            send_job_id("t", RecordKind::SupplierInvoice, "SI-1", 1, Channel::Sms, "+13125550121", 0),
            send_job_id("t", RecordKind::SupplierInvoice, "SI-1", 1, Channel::Voice, "+13125550120", 1),
            send_job_id("t", RecordKind::SupplierInvoice, "SI-1", 2, Channel::Sms, "+13125550120", 0),
            send_job_id("u", RecordKind::SupplierInvoice, "SI-1", 1, Channel::Sms, "+13125550120", 0),
        ];
        assert!(others.iter().all(|o| o != &base));
        assert_eq!(
            base,
            send_job_id("t", RecordKind::SupplierInvoice, "SI-1", 1, Channel::Sms, "+13125550120", 0)
        );
    }

    #[test]
    fn classify_table() {
        let s = |x: u64| Some(Duration::from_secs(x));
        type Answer<'a> = (u16, Option<u32>, Option<&'a str>, Option<Duration>);
        let cases: Vec<(Answer, SendOutcome)> = vec![
            ((201, None, Some("SM1"), None), SendOutcome::Accepted { sid: "SM1".into() }),
            (
                (201, None, None, None),
                SendOutcome::Unknown {
                    reason: "Twilio answered 201 without a sid".into(),
                },
            ),
            ((429, Some(20429), None, s(3)), SendOutcome::Throttled { retry_after: s(3) }),
            ((429, None, None, None), SendOutcome::Throttled { retry_after: None }),
            (
                (503, None, None, None),
                SendOutcome::Unknown {
                    reason: "Twilio answered 503: m".into(),
                },
            ),
            (
                (400, Some(21211), None, None),
                SendOutcome::Permanent {
                    code: Some(21211),
                    message: "m".into(),
                    opted_out: false,
                },
            ),
            (
                (400, Some(21610), None, None),
                SendOutcome::Permanent {
                    code: Some(21610),
                    message: "m".into(),
                    opted_out: true,
                },
            ),
            (
                (401, Some(20003), None, None),
                SendOutcome::Permanent {
                    code: Some(20003),
                    message: "m".into(),
                    opted_out: false,
                },
            ),
            (
                (400, Some(21604), None, None),
                SendOutcome::Permanent {
                    code: Some(21604),
                    message: "Twilio answered 400: m".into(),
                    opted_out: false,
                },
            ),
        ];
        for ((st, code, sid, ra), want) in cases {
            assert_eq!(classify(st, code, "m", sid, ra), want, "{st} {code:?}");
        }
    }

    #[test]
    fn retry_schedule_table() {
        let secs = |d: Duration| d.as_secs_f64();
        let cases = [
            (1, None, 0.0, 0.5),
            (1, None, 0.999, 0.9995),
            (2, None, 0.0, 1.0),
            (4, None, 1.0, 8.0),
            (10, None, 1.0, 300.0),
            (40, None, 0.0, 150.0),
            (1, Some(Duration::from_secs(30)), 0.5, 30.0),
            (6, Some(Duration::from_secs(2)), 1.0, 32.0),
        ];
        for (attempt, ra, jitter, want) in cases {
            assert!(
                (secs(retry_delay(attempt, ra, jitter)) - want).abs() < 1e-6,
                "{attempt} {ra:?} {jitter}: {:?}",
                retry_delay(attempt, ra, jitter)
            );
        }
    }

    #[test]
    fn sms_reconciliation_table() {
        let body = "Invoice SI-1 is held.";
        let m = |sid: &str, words: &str, at: Option<i64>| ListedMessage {
            sid: sid.into(),
            body: words.into(),
            created_at: at,
        };
        let known = vec!["SM-other".to_string()];
        let since = 1_000;
        let other = "send/t/supplier_invoice/SI-2/1/sms/+13125550130/0";
        let sent = |sid: &str| SmsReconciliation::Sent { sid: sid.into() };
        let (wait, unproven) = ("wait", "unproven");
        // (case, listed newest first, page size, another send to the number in flight, expected)
        type Case<'a> = (&'a str, Vec<ListedMessage>, usize, bool, Result<SmsReconciliation, &'a str>);
        let cases: Vec<Case> = vec![
            ("nothing listed", vec![], 1000, false, Ok(SmsReconciliation::NotSent)),
            (
                "only other words",
                vec![m("SM-x", "Invoice SI-2 is held.", Some(1_500))],
                1000,
                false,
                Ok(SmsReconciliation::NotSent),
            ),
            (
                "its words, before the job",
                vec![m("SM-x", body, Some(999))],
                1000,
                false,
                Ok(SmsReconciliation::NotSent),
            ),
            (
                "its words, held by another delivery",
                vec![m("SM-other", body, Some(1_500))],
                1000,
                false,
                Ok(SmsReconciliation::NotSent),
            ),
            (
                "its words, held by no one",
                vec![m("SM-x", body, Some(1_000)), m("SM-other", body, Some(999))],
                1000,
                false,
                Ok(sent("SM-x")),
            ),
            (
                "an unreadable date may be ours",
                vec![m("SM-x", body, None)],
                1000,
                false,
                Ok(sent("SM-x")),
            ),
            (
                "the newest of two",
                vec![m("SM-new", body, Some(1_200)), m("SM-old", body, Some(1_100))],
                1000,
                false,
                Ok(sent("SM-new")),
            ),
            (
                "held by no one while another send is in flight",
                vec![m("SM-x", body, Some(1_500))],
                1000,
                true,
                Err(wait),
            ),
            (
                "nothing unaccounted while another is in flight",
                vec![m("SM-other", body, Some(1_500))],
                1000,
                true,
                Ok(SmsReconciliation::NotSent),
            ),
            (
                "a full page that may hide more",
                vec![m("SM-a", "a", Some(1_500)), m("SM-b", "b", Some(1_200))],
                2,
                false,
                Err(unproven),
            ),
            (
                "a full page reaching back before the job",
                vec![m("SM-a", "a", Some(1_500)), m("SM-b", "b", Some(900))],
                2,
                false,
                Ok(SmsReconciliation::NotSent),
            ),
        ];
        for (name, listed, page, another_placing, expected) in cases {
            let placing: Vec<String> = another_placing.then(|| other.to_string()).into_iter().collect();
            let got = reconcile_sms(&listed, page, body, &known, &placing, since);
            match (&got, expected) {
                (SmsReconciliation::Wait { why }, Err("wait")) => {
                    assert!(why.contains("SM-x") && why.contains(other), "{name}: names both: {why}");
                }
                (SmsReconciliation::Unproven { why }, Err("unproven")) => assert!(why.contains("page"), "{name}: {why}"),
                (got, Ok(expected)) => assert_eq!(got, &expected, "{name}"),
                (got, Err(kind)) => panic!("{name}: expected {kind}, got {got:?}"),
            }
        }
    }

    #[test]
    fn call_reconciliation_table() {
        let call = |sid: &str, at: Option<i64>| ListedCall {
            sid: sid.into(),
            created_at: at,
        };
        let known = vec!["CA-other".to_string()];
        let since = 1_000;
        let other = "send/t/purchase_order/PO1/1/voice/+13125550140/0";
        let (none, one) = (false, true);
        // (case, listed, page size, another delivery to the number being placed, expected)
        let cases: Vec<(&str, Vec<ListedCall>, usize, bool, &str)> = vec![
            ("no call at all", vec![], 1000, none, "not placed"),
            ("no call at all, another being placed", vec![], 1000, one, "not placed"),
            (
                "only calls from before the job",
                vec![call("CA-old", Some(999))],
                1000,
                none,
                "not placed",
            ),
            (
                "only another delivery's call",
                vec![call("CA-other", Some(1_500))],
                1000,
                none,
                "not placed",
            ),
            (
                "an unaccounted call since the job",
                vec![call("CA-x", Some(1_000))],
                1000,
                none,
                "unproven",
            ),
            (
                "an unaccounted call while another is being placed",
                vec![call("CA-x", Some(1_000))],
                1000,
                one,
                "wait",
            ),
            ("an unreadable date may be ours", vec![call("CA-x", None)], 1000, none, "unproven"),
            (
                "a full page of ours that may hide more",
                vec![call("CA-other", Some(1_500)), call("CA-other", Some(1_200))],
                2,
                none,
                "unproven",
            ),
            (
                "a full page reaching back before the job",
                vec![call("CA-other", Some(1_500)), call("CA-old", Some(900))],
                2,
                none,
                "not placed",
            ),
        ];
        for (name, listed, page, another_placing, expected) in cases {
            let placing: Vec<String> = another_placing.then(|| other.to_string()).into_iter().collect();
            let got = reconcile_call(&listed, page, &known, &placing, since);
            let (kind, why) = match &got {
                CallReconciliation::NotPlaced => ("not placed", ""),
                CallReconciliation::Wait { why } => ("wait", why.as_str()),
                CallReconciliation::Unproven { why } => ("unproven", why.as_str()),
            };
            assert_eq!(kind, expected, "{name}: {got:?}");
            if listed.iter().any(|c| c.sid == "CA-x") {
                assert!(why.contains("CA-x"), "{name}: the unaccounted call is named: {why}");
            }
            if kind == "wait" {
                assert!(why.contains(other), "{name}: the delivery waited for is named: {why}");
            }
        }
    }
}
