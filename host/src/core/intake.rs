//! Webhooks from Twilio, decided purely: which event a request is, the key that makes a
//! retry or a duplicate a no-op, whether a status moves a delivery forward, what an inbound
//! SMS says (an opt-out word, a reference code), what an answer may do (proof, roles,
//! escalations), how often a stranger is heard, and how a person's words are kept as data.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::model::RecordKind;
use super::people::Role;
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

/// A new reference: [`REFERENCE_LEN`] characters of [`REFERENCE_ALPHABET`], at least one of
/// them a digit, so that no English word (THANKS, REJECT, CHANGE) is ever shaped like one.
/// `pick(n)` is a uniform random index below `n`; a draw without a digit is drawn again,
/// so every digit-bearing reference is equally likely (about 25% of draws are redrawn).
pub fn reference_from(mut pick: impl FnMut(usize) -> usize) -> String {
    let alphabet = REFERENCE_ALPHABET.as_bytes();
    loop {
        let r: String = (0..REFERENCE_LEN).map(|_| alphabet[pick(alphabet.len())] as char).collect();
        if r.bytes().any(|b| b.is_ascii_digit()) {
            return r;
        }
    }
}

/// Words of an SMS body that could be an alert reference, upper-cased, in order: six
/// characters of the alphabet, at least one a digit (every reference generated carries one; a
/// word of letters only is English, neither tried nor counted as a miss). All of them; a
/// reply's are looked up only as far as [`references_to_try`] goes.
pub fn reference_candidates(body: &str) -> Vec<String> {
    body.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.len() == REFERENCE_LEN)
        .map(str::to_ascii_uppercase)
        .filter(|w| w.chars().all(|c| REFERENCE_ALPHABET.contains(c)) && w.bytes().any(|b| b.is_ascii_digit()))
        .collect()
}

/// How many reference-shaped words of one reply are looked up, the first ones in the text.
/// A person quotes the code once ("APPROVE K7QM2X"); trying every word let one SMS carry
/// about 228 guesses.
pub const REFERENCES_TRIED: usize = 3;

/// The references of a reply that are looked up: its first [`REFERENCES_TRIED`] candidates.
pub fn references_to_try(body: &str) -> Vec<String> {
    let mut words = reference_candidates(body);
    words.truncate(REFERENCES_TRIED);
    words
}

/// A miss: a reply from a number carried reference-shaped words and none was the reference
/// of an open alert sent to that number. After this many misses within
/// [`MISS_WINDOW_MINUTES`], the number's references are not looked up until the window ends.
/// Misses are counted per `From`, which can be spoofed: a stranger can block a number's SMS
/// references for the window (a keypress on our call still answers). A reply that quoted a
/// reference never falls back to the latest alert sent to its number — not while throttled,
/// not after a miss — so such a block cannot land an answer on the wrong record.
pub const MISSES_BEFORE_THROTTLE: i64 = 10;
/// The window misses are counted in, fixed from a number's first miss.
pub const MISS_WINDOW_MINUTES: i64 = 60;

/// Why a reply's references were not looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this number's replies quoted {misses} codes that matched nothing within the hour; its codes are not looked up until the hour ends"
)]
pub struct Throttled {
    pub misses: i64,
}

/// Whether a number with `misses` misses in the current window may have its references looked up.
pub fn may_look_up_references(misses: i64) -> Result<(), Throttled> {
    if misses < MISSES_BEFORE_THROTTLE {
        Ok(())
    } else {
        Err(Throttled { misses })
    }
}

/// Replies that match nothing, kept per sender and per tenant within
/// [`UNMATCHED_WINDOW_MINUTES`]; past either limit a reply is counted and dropped.
pub const UNMATCHED_PER_SENDER: i64 = 5;
pub const UNMATCHED_PER_TENANT: i64 = 200;
pub const UNMATCHED_WINDOW_MINUTES: i64 = 60;
/// How long a kept reply that matched nothing is kept before it is purged.
pub const UNMATCHED_RETENTION_DAYS: i64 = 30;
/// How long a processed webhook event (its parameters: an answer's text, numbers) is kept
/// before the inbox purges it. Twilio retries a callback for hours at most, so a duplicate
/// arriving after this is no concern; what an event changed stays on the audit trail, which
/// names the event by id only (no table refers to events).
pub const EVENT_RETENTION_DAYS: i64 = 30;

/// Why a reply that matched nothing was dropped rather than kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("more than {UNMATCHED_PER_SENDER} replies matching nothing from this number within the hour")]
    Sender,
    #[error("more than {UNMATCHED_PER_TENANT} replies matching nothing to this tenant within the hour")]
    Tenant,
}

/// Whether an unmatched reply is kept, given the counts in the window including it.
pub fn keep_unmatched(from_sender: i64, to_tenant: i64) -> Result<(), Dropped> {
    if from_sender > UNMATCHED_PER_SENDER {
        Err(Dropped::Sender)
    } else if to_tenant > UNMATCHED_PER_TENANT {
        Err(Dropped::Tenant)
    } else {
        Ok(())
    }
}

/// What proves an answer came from the person alerted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proof {
    /// An SMS from the number the alert went to, quoting its reference.
    Reference,
    /// A keypress on a call we placed.
    Keypress,
    /// Neither: a reply matched only by the number it came from (which can be spoofed).
    None,
}

impl Proof {
    pub fn proven(self) -> bool {
        self != Proof::None
    }
}

/// Who may decide records of each kind (approve or reject them in QAD). Kinds not named
/// keep [`DecisionRoles::default`]; a kind named with no roles is decided by nobody.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DecisionRoles(pub BTreeMap<RecordKind, BTreeSet<Role>>);

impl Default for DecisionRoles {
    /// Buyers and plant managers decide purchase orders; AP clerks, supplier invoices.
    fn default() -> Self {
        DecisionRoles(BTreeMap::from([
            (RecordKind::PurchaseOrder, BTreeSet::from([Role::Buyer, Role::PlantManager])),
            (RecordKind::SupplierInvoice, BTreeSet::from([Role::ApClerk])),
            (RecordKind::GoodsReceipt, BTreeSet::new()),
        ]))
    }
}

/// Why a tenant's decision roles were refused; `field` names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionRolesError {
    #[error("at most {max} entries, one per record kind")]
    TooManyEntries { max: usize },
    #[error("{name:?} is not a record kind (purchase_order, supplier_invoice, goods_receipt)")]
    UnknownKind { entry: usize, name: String },
    #[error("{name:?} is named twice")]
    DuplicateKind { entry: usize, name: String },
    #[error("at most {max} roles")]
    TooManyRoles { entry: usize, max: usize },
    #[error("{name:?} is not a role (buyer, ap_clerk, plant_manager, supplier_contact)")]
    UnknownRole { entry: usize, role: usize, name: String },
    #[error("{name:?} is named twice")]
    DuplicateRole { entry: usize, role: usize, name: String },
}

impl DecisionRolesError {
    /// The part refused, relative to the list: `[1].record_kind`, `[0].roles[2]`.
    pub fn field(&self) -> String {
        match self {
            DecisionRolesError::TooManyEntries { .. } => String::new(),
            DecisionRolesError::UnknownKind { entry, .. } | DecisionRolesError::DuplicateKind { entry, .. } => {
                format!("[{entry}].record_kind")
            }
            DecisionRolesError::TooManyRoles { entry, .. } => format!("[{entry}].roles"),
            DecisionRolesError::UnknownRole { entry, role, .. } | DecisionRolesError::DuplicateRole { entry, role, .. } => {
                format!("[{entry}].roles[{role}]")
            }
        }
    }
}

/// How many characters of a refused name an error repeats.
const NAME_SHOWN: usize = 64;

fn shown(name: &str) -> String {
    name.chars().take(NAME_SHOWN).collect()
}

const ROLES: [Role; 4] = [Role::Buyer, Role::ApClerk, Role::PlantManager, Role::SupplierContact];
const KINDS: [RecordKind; 3] = [RecordKind::PurchaseOrder, RecordKind::SupplierInvoice, RecordKind::GoodsReceipt];

impl DecisionRoles {
    /// From (record kind, role names) entries as the control plane gives them; kinds not
    /// named keep their defaults.
    pub fn from_entries(entries: &[(String, Vec<String>)]) -> Result<Self, DecisionRolesError> {
        if entries.len() > KINDS.len() {
            return Err(DecisionRolesError::TooManyEntries { max: KINDS.len() });
        }
        let mut out = DecisionRoles::default();
        let mut seen = BTreeSet::new();
        for (entry, (kind_name, role_names)) in entries.iter().enumerate() {
            let kind = RecordKind::parse(kind_name).ok_or_else(|| DecisionRolesError::UnknownKind {
                entry,
                name: shown(kind_name),
            })?;
            if !seen.insert(kind) {
                return Err(DecisionRolesError::DuplicateKind {
                    entry,
                    name: shown(kind_name),
                });
            }
            out.0.insert(kind, roles_of(entry, role_names)?);
        }
        Ok(out)
    }

    /// Every record kind with its roles, in a stable order.
    pub fn entries(&self) -> Vec<(RecordKind, Vec<Role>)> {
        KINDS
            .iter()
            .map(|k| (*k, self.0.get(k).map(|r| r.iter().copied().collect()).unwrap_or_default()))
            .collect()
    }

    pub fn allows(&self, kind: RecordKind, role: Role) -> bool {
        self.0.get(&kind).is_some_and(|roles| roles.contains(&role))
    }
}

fn roles_of(entry: usize, names: &[String]) -> Result<BTreeSet<Role>, DecisionRolesError> {
    if names.len() > ROLES.len() {
        return Err(DecisionRolesError::TooManyRoles { entry, max: ROLES.len() });
    }
    let mut roles = BTreeSet::new();
    for (role, name) in names.iter().enumerate() {
        let r = ROLES
            .into_iter()
            .find(|r| r.as_str() == name)
            .ok_or_else(|| DecisionRolesError::UnknownRole {
                entry,
                role,
                name: shown(name),
            })?;
        if !roles.insert(r) {
            return Err(DecisionRolesError::DuplicateRole {
                entry,
                role,
                name: shown(name),
            });
        }
    }
    Ok(roles)
}

/// A tenant's rules for answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnswerRules {
    /// Execute approve/reject decisions in QAD.
    pub execute_decisions: bool,
    /// Let an answer without proof cancel the episode's escalations.
    pub unproven_answers_cancel_escalations: bool,
    pub decision_roles: DecisionRoles,
}

/// Why an approval or rejection was recorded as seen instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotDecided {
    #[error("a decision by SMS counts only with the alert's reference code, from the number the alert went to; recorded as seen")]
    Unproven,
    #[error("the tenant lets no {role} decide a {kind}; recorded as seen", role = .role.as_str(), kind = .kind.label())]
    Role { role: Role, kind: RecordKind },
    #[error("the person answering has no known role; recorded as seen")]
    NoRole,
}

/// Why a decision was not executed in QAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotExecuted {
    #[error("QAD takes approval decisions for purchase orders only")]
    NotPurchaseOrder,
    #[error("the tenant has not enabled executing decisions in QAD")]
    TenantOff,
}

/// What an answer does, decided from what the plugin read, its proof, who gave it and the
/// tenant's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub action: ReplyAction,
    /// Why the plugin's approval or rejection stands as seen.
    pub not_decided: Option<NotDecided>,
    /// For a decision: executed in QAD, or why not.
    pub execute: Option<Result<(), NotExecuted>>,
    pub cancels_escalations: bool,
}

/// Judge an answer. A decision needs proof (a sender's number can be spoofed) and a role the
/// tenant lets decide the record's kind; only a proven answer cancels escalations unless the
/// tenant allows it.
pub fn judge(read: ReplyAction, proof: Proof, role: Option<Role>, kind: RecordKind, rules: &AnswerRules) -> Verdict {
    let not_decided = match (read, role) {
        (ReplyAction::Approve | ReplyAction::Reject, _) if !proof.proven() => Some(NotDecided::Unproven),
        (ReplyAction::Approve | ReplyAction::Reject, None) => Some(NotDecided::NoRole),
        (ReplyAction::Approve | ReplyAction::Reject, Some(r)) if !rules.decision_roles.allows(kind, r) => {
            Some(NotDecided::Role { role: r, kind })
        }
        _ => None,
    };
    let action = if not_decided.is_some() { ReplyAction::Acknowledge } else { read };
    let execute = matches!(action, ReplyAction::Approve | ReplyAction::Reject).then_some(if kind != RecordKind::PurchaseOrder {
        Err(NotExecuted::NotPurchaseOrder)
    } else if !rules.execute_decisions {
        Err(NotExecuted::TenantOff)
    } else {
        Ok(())
    });
    Verdict {
        action,
        not_decided,
        execute,
        cancels_escalations: proof.proven() || rules.unproven_answers_cancel_escalations,
    }
}

/// How many characters of a reply are kept (audit, plugin, QAD comment): two SMS segments.
/// Twilio delivers up to 1,600; a person's answer is a few words.
pub const REPLY_CHARS: usize = 320;

/// A reply's text as data: control and bidirectional-override characters gone (line breaks
/// and tabs become spaces), runs of spaces collapsed, at most [`REPLY_CHARS`] characters with
/// an ellipsis where cut.
pub fn reply_text(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .collect();
    let words: Vec<&str> = cleaned.split(' ').filter(|w| !w.is_empty()).collect();
    clip(&words.join(" "), REPLY_CHARS)
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}')
}

/// `s` cut to `max` characters, the last of them an ellipsis when anything was cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The longest comment written to QAD, in characters. `qad-api.md` gives the write
/// (`POST transactionComments`, one entry's `commentText`) but no length; we assume
/// `commentText` holds 1,000 characters ([GUESS]: QAD's own comment lines, `cmt_cmmt`,
/// are 15 lines of 76 characters, 1,140 in all). Every comment is trimmed to it.
pub const QAD_COMMENT_CHARS: usize = 1000;

/// A reply's text as quoted in a QAD comment: what [`reply_text`] keeps, with the characters
/// that make markup or end the quote (`<`, `>`, `&`, `"`) replaced by plain ones.
pub fn quoted_for_qad(text: &str) -> String {
    reply_text(text)
        .chars()
        .map(|c| match c {
            '<' => '(',
            '>' => ')',
            '&' => '+',
            '"' => '\'',
            c => c,
        })
        .collect()
}

/// A comment as written to QAD: at most [`QAD_COMMENT_CHARS`] characters.
pub fn fit_comment(text: &str) -> String {
    clip(text, QAD_COMMENT_CHARS)
}

/// How many characters of a person's name a QAD comment or decision carries.
pub const NAME_CHARS: usize = 80;

/// A person's name as written to QAD (a comment, a decision's approver): names come from QAD,
/// the tenant's profile or a plugin, so they are data like a reply — quoted as
/// [`quoted_for_qad`] does, and cut to [`NAME_CHARS`].
pub fn name_for_qad(name: &str) -> String {
    clip(&quoted_for_qad(name), NAME_CHARS)
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
    let name = name_for_qad(name);
    let mut s = format!("ml-connector: {} to {name} ({phone}) {status} {at}", channel_word(channel));
    if let Some(code) = error_code {
        s.push_str(&format!(", Twilio error {code}"));
    }
    s.push('.');
    fit_comment(&s)
}

/// The QAD comment for an answer: the reply quoted as data ([`quoted_for_qad`]), the whole
/// fitted to [`QAD_COMMENT_CHARS`].
pub fn answer_comment(name: &str, answer: &Answer, action: ReplyAction, at: &str) -> String {
    let said = match answer {
        Answer::Text(t) => format!("replied {at}: \"{}\"", quoted_for_qad(t)),
        Answer::Keypress(k) => format!("pressed {} on the call {at}", quoted_for_qad(k)),
    };
    fit_comment(&format!("ml-connector: {} {said} ({}).", name_for_qad(name), action_word(action)))
}

/// The comment of a decision written to QAD, the person named as data, fitted to
/// [`QAD_COMMENT_CHARS`].
pub fn decision_comment(name: &str, action: ReplyAction) -> String {
    fit_comment(&format!("{} by {} through ml-connector", action_word(action), name_for_qad(name)))
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
            ("approve k7qm2x 2brave", &["K7QM2X", "2BRAVE"]),
            ("K7QM2X: seen", &["K7QM2X"]),
            ("ok", &[]),
            // I, L, O, 0 and 1 are not in the alphabet: not a reference.
            ("APPROVE K7QM2I", &[]),
            ("PLEASE APPROVE", &[]),
            ("SEEN BRAVE2", &["BRAVE2"]),
            ("R2D2C3PO", &[]),
            // Words of letters only are English, never a reference: references carry a digit.
            ("approve k7qm2x thanks", &["K7QM2X"]),
            ("THANKS REJECT ACCEPT CHANGE STATUS", &[]),
            ("AAAAAA", &[]),
            ("222222", &["222222"]),
        ];
        for (body, want) in cases {
            assert_eq!(reference_candidates(body), *want, "{body:?}");
        }
    }

    #[test]
    fn only_the_first_few_references_of_a_reply_are_tried() {
        let cases: &[(&str, &[&str])] = &[
            ("APPROVE K7QM2X", &["K7QM2X"]),
            ("ok", &[]),
            // A reply stuffed with guesses is tried for its first three only.
            ("2AAAAA 2BBBBB 2CCCCC 2DDDDD 2EEEEE", &["2AAAAA", "2BBBBB", "2CCCCC"]),
            ("AAAAAA BBBBBB CCCCCC DDDDDD EEEEEE", &[]),
            // Honest words neither crowd the code out nor count as guesses.
            ("thanks K7QM2X", &["K7QM2X"]),
            ("REJECT, CHANGE, THANKS K7QM2X", &["K7QM2X"]),
            ("Accept. Status? Thanks! Change K7QM2X please", &["K7QM2X"]),
        ];
        for (body, want) in cases {
            assert_eq!(references_to_try(body), *want, "{body:?}");
        }
        let stuffed: String = (0..300).map(|i| format!("A{i:05} ")).collect();
        assert_eq!(reference_candidates(&stuffed).len(), 0, "digits 0 and 1 are not in the alphabet");
        let stuffed: String = (0..300).map(|_| "K7QM2X ").collect();
        assert_eq!(reference_candidates(&stuffed).len(), 300);
        assert_eq!(references_to_try(&stuffed).len(), REFERENCES_TRIED);
    }

    #[test]
    fn every_reference_generated_carries_a_digit() {
        // A picker that draws letters only for its first draws: they are drawn again.
        let alphabet: Vec<char> = REFERENCE_ALPHABET.chars().collect();
        let first_digit = alphabet.iter().position(char::is_ascii_digit).unwrap();
        let mut n = 0usize;
        let r = reference_from(|len| {
            n += 1;
            if n <= 3 * REFERENCE_LEN { 0 } else { (n * 7) % len }
        });
        assert_eq!(r.len(), REFERENCE_LEN);
        assert!(r.chars().any(|c| c.is_ascii_digit()), "{r}");
        assert_eq!(reference_candidates(&format!("APPROVE {r}")), vec![r.clone()]);
        let only_digit = reference_from(|_| first_digit);
        assert_eq!(only_digit, "222222");
        // Spread over the whole alphabet: every generated reference is a candidate.
        let mut seed = 12345u64;
        for _ in 0..2000 {
            let r = reference_from(|len| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((seed >> 33) as usize) % len
            });
            assert!(
                r.chars().all(|c| REFERENCE_ALPHABET.contains(c)) && r.bytes().any(|b| b.is_ascii_digit()),
                "{r}"
            );
            assert_eq!(reference_candidates(&r), vec![r.clone()]);
        }
    }

    #[test]
    fn a_number_with_many_misses_is_throttled() {
        let cases: &[(i64, bool)] = &[
            (0, true),
            (MISSES_BEFORE_THROTTLE - 1, true),
            (MISSES_BEFORE_THROTTLE, false),
            (1000, false),
        ];
        for (misses, allowed) in cases {
            assert_eq!(may_look_up_references(*misses).is_ok(), *allowed, "{misses}");
        }
    }

    #[test]
    fn unmatched_replies_are_kept_within_limits() {
        let cases: &[(i64, i64, Result<(), Dropped>)] = &[
            (1, 1, Ok(())),
            (UNMATCHED_PER_SENDER, UNMATCHED_PER_TENANT, Ok(())),
            (UNMATCHED_PER_SENDER + 1, 1, Err(Dropped::Sender)),
            (1, UNMATCHED_PER_TENANT + 1, Err(Dropped::Tenant)),
            (UNMATCHED_PER_SENDER + 1, UNMATCHED_PER_TENANT + 1, Err(Dropped::Sender)),
        ];
        for (sender, tenant, want) in cases {
            assert_eq!(keep_unmatched(*sender, *tenant), *want, "{sender} {tenant}");
        }
    }

    #[test]
    fn answers_are_judged_by_proof_role_and_tenant() {
        use RecordKind::*;
        use ReplyAction::*;
        let on = AnswerRules {
            execute_decisions: true,
            ..Default::default()
        };
        let off = AnswerRules::default();
        let lenient = AnswerRules {
            unproven_answers_cancel_escalations: true,
            ..on.clone()
        };
        let custom = AnswerRules {
            decision_roles: DecisionRoles::from_entries(&[("purchase_order".into(), vec!["buyer".into()])]).unwrap(),
            ..on.clone()
        };
        let pm = Some(Role::PlantManager);
        // (read, proof, role, kind, rules, action, not decided, executed, cancels)
        type Case<'a> = (
            ReplyAction,
            Proof,
            Option<Role>,
            RecordKind,
            &'a AnswerRules,
            ReplyAction,
            Option<NotDecided>,
            Option<Result<(), NotExecuted>>,
            bool,
        );
        let cases: &[Case] = &[
            (
                Approve,
                Proof::Reference,
                Some(Role::Buyer),
                PurchaseOrder,
                &on,
                Approve,
                None,
                Some(Ok(())),
                true,
            ),
            (Reject, Proof::Keypress, pm, PurchaseOrder, &on, Reject, None, Some(Ok(())), true),
            (
                Approve,
                Proof::Keypress,
                pm,
                PurchaseOrder,
                &off,
                Approve,
                None,
                Some(Err(NotExecuted::TenantOff)),
                true,
            ),
            // No proof: recorded as seen, cancels nothing unless the tenant allows it.
            (
                Approve,
                Proof::None,
                Some(Role::Buyer),
                PurchaseOrder,
                &on,
                Acknowledge,
                Some(NotDecided::Unproven),
                None,
                false,
            ),
            (
                Acknowledge,
                Proof::None,
                Some(Role::Buyer),
                PurchaseOrder,
                &on,
                Acknowledge,
                None,
                None,
                false,
            ),
            (
                Acknowledge,
                Proof::None,
                Some(Role::Buyer),
                PurchaseOrder,
                &lenient,
                Acknowledge,
                None,
                None,
                true,
            ),
            (
                Approve,
                Proof::None,
                Some(Role::Buyer),
                PurchaseOrder,
                &lenient,
                Acknowledge,
                Some(NotDecided::Unproven),
                None,
                true,
            ),
            (Unknown, Proof::None, None, PurchaseOrder, &on, Unknown, None, None, false),
            // The wrong role: a supplier contact's keypress does not approve a PO.
            (
                Approve,
                Proof::Keypress,
                Some(Role::SupplierContact),
                PurchaseOrder,
                &on,
                Acknowledge,
                Some(NotDecided::Role {
                    role: Role::SupplierContact,
                    kind: PurchaseOrder,
                }),
                None,
                true,
            ),
            (
                Approve,
                Proof::Reference,
                None,
                PurchaseOrder,
                &on,
                Acknowledge,
                Some(NotDecided::NoRole),
                None,
                true,
            ),
            (
                Approve,
                Proof::Reference,
                Some(Role::ApClerk),
                SupplierInvoice,
                &on,
                Approve,
                None,
                Some(Err(NotExecuted::NotPurchaseOrder)),
                true,
            ),
            (
                Approve,
                Proof::Reference,
                Some(Role::Buyer),
                SupplierInvoice,
                &on,
                Acknowledge,
                Some(NotDecided::Role {
                    role: Role::Buyer,
                    kind: SupplierInvoice,
                }),
                None,
                true,
            ),
            (
                Approve,
                Proof::Reference,
                pm,
                PurchaseOrder,
                &custom,
                Acknowledge,
                Some(NotDecided::Role {
                    role: Role::PlantManager,
                    kind: PurchaseOrder,
                }),
                None,
                true,
            ),
            (
                Approve,
                Proof::Reference,
                Some(Role::Buyer),
                PurchaseOrder,
                &custom,
                Approve,
                None,
                Some(Ok(())),
                true,
            ),
        ];
        for (read, proof, role, kind, rules, action, not_decided, execute, cancels) in cases {
            let v = judge(*read, *proof, *role, *kind, rules);
            assert_eq!(
                (v.action, v.not_decided, v.execute, v.cancels_escalations),
                (*action, *not_decided, *execute, *cancels),
                "{read:?} {proof:?} {role:?} {kind:?} {rules:?}"
            );
        }
    }

    #[test]
    fn decision_roles_are_checked_and_errors_name_the_field() {
        let e = |k: &str, roles: &[&str]| (k.to_string(), roles.iter().map(|r| r.to_string()).collect::<Vec<_>>());
        let long = "x".repeat(10_000);
        // (entries, the field refused or none)
        type Entries = Vec<(String, Vec<String>)>;
        let cases: Vec<(Entries, Option<&str>)> = vec![
            (vec![], None),
            (vec![e("purchase_order", &["buyer"])], None),
            (
                vec![e("purchase_order", &[]), e("supplier_invoice", &["ap_clerk", "plant_manager"])],
                None,
            ),
            (vec![e("invoice", &["buyer"])], Some("[0].record_kind")),
            (vec![e("purchase_order", &[]), e("purchase_order", &[])], Some("[1].record_kind")),
            (vec![e("purchase_order", &["buyer", "boss"])], Some("[0].roles[1]")),
            (vec![e("purchase_order", &["Buyer"])], Some("[0].roles[0]")),
            (vec![e("purchase_order", &["buyer", "buyer"])], Some("[0].roles[1]")),
            (vec![e("purchase_order", &["buyer"; 5])], Some("[0].roles")),
            (vec![e("purchase_order", &[]); 4], Some("")),
            (vec![e(&long, &[])], Some("[0].record_kind")),
        ];
        for (entries, want) in &cases {
            match (DecisionRoles::from_entries(entries), want) {
                (Ok(_), None) => {}
                (Err(err), Some(field)) => {
                    assert_eq!(err.field(), *field, "{err}");
                    assert!(err.to_string().chars().count() < 200, "a refused name is shown cut: {err}");
                }
                (got, _) => panic!("{entries:?}: {got:?}, want {want:?}"),
            }
        }
        let d = DecisionRoles::default();
        assert!(d.allows(RecordKind::PurchaseOrder, Role::Buyer) && d.allows(RecordKind::PurchaseOrder, Role::PlantManager));
        assert!(d.allows(RecordKind::SupplierInvoice, Role::ApClerk));
        assert!(!d.allows(RecordKind::PurchaseOrder, Role::SupplierContact) && !d.allows(RecordKind::PurchaseOrder, Role::ApClerk));
        // Kinds not named keep their defaults; a kind named with no roles has nobody.
        let only_po = DecisionRoles::from_entries(&[e("purchase_order", &[])]).unwrap();
        assert!(!only_po.allows(RecordKind::PurchaseOrder, Role::Buyer));
        assert!(only_po.allows(RecordKind::SupplierInvoice, Role::ApClerk));
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<DecisionRoles>(&json).unwrap(), d, "{json}");
    }

    #[test]
    fn what_people_write_is_kept_as_data() {
        let long = "A".repeat(5000);
        let cut = format!("{}…", "A".repeat(REPLY_CHARS - 1));
        // (raw, as kept, as quoted in QAD)
        let cases: &[(&str, &str, &str)] = &[
            ("seen K7QM2X, on it", "seen K7QM2X, on it", "seen K7QM2X, on it"),
            ("line one\nline two\r\n\tend", "line one line two end", "line one line two end"),
            ("\u{1b}[31mred\u{7}\u{0}", "[31mred", "[31mred"),
            ("evil\u{202e}txt.exe\u{2066}", "eviltxt.exe", "eviltxt.exe"),
            (
                "<script>alert(1)</script> & \"x\"",
                "<script>alert(1)</script> & \"x\"",
                "(script)alert(1)(/script) + 'x'",
            ),
            ("  ", "", ""),
            ("Zürich ✓ 👍", "Zürich ✓ 👍", "Zürich ✓ 👍"),
            (&long, &cut, &cut),
        ];
        for (raw, kept, quoted) in cases {
            assert_eq!(reply_text(raw), *kept, "{raw:?}");
            assert_eq!(quoted_for_qad(raw), *quoted, "{raw:?}");
        }
        // A comment never exceeds what QAD's comment field is assumed to hold.
        let name = "N".repeat(3000);
        let c = answer_comment(&name, &Answer::Text(long.clone()), ReplyAction::Acknowledge, "10:05");
        assert!(c.chars().count() <= QAD_COMMENT_CHARS, "{}", c.chars().count());
        assert!(c.contains(&format!("{}…", "N".repeat(NAME_CHARS - 1))), "{c}");
        assert_eq!(fit_comment(&long).chars().count(), QAD_COMMENT_CHARS);
        assert!(fit_comment(&long).ends_with('…'));
        let c = answer_comment("Ana", &Answer::Text(format!("{long}\n<b>")), ReplyAction::Acknowledge, "10:05");
        assert!(
            c.chars().count() <= QAD_COMMENT_CHARS && !c.contains('<') && !c.contains('\n'),
            "{c}"
        );
        let c = status_comment(Channel::Sms, &name, "+1", "delivered", None, "10:02");
        assert!(c.chars().count() <= QAD_COMMENT_CHARS, "{c}");
        // A person's name (from QAD, the profile or a plugin) is data too, in every comment
        // and decision: no markup, no line breaks, no closing quote, cut.
        let hostile = "Ana\n<b>\"Ruiz\"</b> & co\u{202e}\u{1b}[2J";
        let quoted = "Ana (b)'Ruiz'(/b) + co[2J";
        assert_eq!(name_for_qad(hostile), quoted);
        assert_eq!(name_for_qad(&name).chars().count(), NAME_CHARS);
        for c in [
            status_comment(Channel::Voice, hostile, "+13125550130", "completed", None, "10:02"),
            answer_comment(hostile, &Answer::Keypress("1".into()), ReplyAction::Approve, "10:05"),
            answer_comment(hostile, &Answer::Text("ok".into()), ReplyAction::Acknowledge, "10:05"),
            decision_comment(hostile, ReplyAction::Approve),
            decision_comment(hostile, ReplyAction::Reject),
        ] {
            assert!(c.contains(quoted), "{c}");
            assert!(!c.contains(['<', '>', '&', '\n', '\u{1b}', '\u{202e}']), "{c:?}");
            assert!(c.matches('"').count() <= 2, "only the reply's own quotes: {c:?}");
        }
        for c in [
            decision_comment(&name, ReplyAction::Approve),
            decision_comment(&long, ReplyAction::Reject),
        ] {
            assert!(c.chars().count() <= QAD_COMMENT_CHARS, "{}", c.chars().count());
        }
        assert_eq!(
            decision_comment("Ana Ruiz", ReplyAction::Approve),
            "approved by Ana Ruiz through ml-connector"
        );
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
