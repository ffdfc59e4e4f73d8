//! Helpers any ml-connector plugin may use. Pure functions over strings: each plugin
//! generates its own bindings from `wit/plugin.wit` and maps to them.

/// Words a carrier treats as opt-out, opt-in or help (Twilio's defaults). None of them may
/// be a reply command: "reply YES to approve" would opt the person back in, "CANCEL" out.
pub const CARRIER_WORDS: &[&str] =
    &["STOP", "STOPALL", "UNSUBSCRIBE", "END", "QUIT", "REVOKE", "OPTOUT", "CANCEL", "START", "YES", "UNSTOP", "HELP", "INFO"];

/// The reply words a plugin offers.
pub const APPROVE_WORD: &str = "APPROVE";
pub const REJECT_WORD: &str = "REJECT";
pub const SEEN_WORD: &str = "SEEN";

/// What a reply text asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Approve,
    Reject,
    Acknowledge,
    Unknown,
}

/// Read an SMS reply: the first command word found, and whether the alert's reference
/// appears in it (an approval without it must not count: a sender can be spoofed).
pub fn read_reply(text: &str, reference: &str) -> (Intent, bool) {
    let upper = text.to_uppercase();
    let words: Vec<&str> = upper.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let has_reference = !reference.is_empty() && words.contains(&reference.to_uppercase().as_str());
    let intent = words
        .iter()
        .find_map(|w| match *w {
            "APPROVE" | "APPROVED" | "APPROVAL" => Some(Intent::Approve),
            "REJECT" | "REJECTED" | "DENY" | "DENIED" => Some(Intent::Reject),
            "SEEN" | "ACK" | "OK" | "DONE" | "ONIT" => Some(Intent::Acknowledge),
            _ => None,
        })
        .unwrap_or(Intent::Unknown);
    (intent, has_reference)
}

/// "56875.00" + "GBP" → "56,875.00 GBP".
pub fn money(amount: &str, currency: &str) -> String {
    let (int, frac) = amount.split_once('.').unwrap_or((amount, ""));
    let (sign, digits) = int.strip_prefix('-').map(|d| ("-", d)).unwrap_or(("", int));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let frac = if frac.is_empty() { String::new() } else { format!(".{frac}") };
    format!("{sign}{grouped}{frac} {currency}").trim().to_string()
}

/// Minutes since local midnight of "YYYY-MM-DDTHH:MM:SS", or of "HH:MM".
pub fn minute_of_day(text: &str) -> Option<u32> {
    let time = text.split('T').next_back()?;
    let mut parts = time.split(':');
    let h: u32 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// Minutes to wait from `local_time` until the quiet hours [start, end) are over (0 when
/// outside them). The window may wrap midnight ("20:00"–"07:00").
pub fn minutes_until_awake(local_time: &str, quiet_start: &str, quiet_end: &str) -> u32 {
    let (Some(now), Some(start), Some(end)) = (minute_of_day(local_time), minute_of_day(quiet_start), minute_of_day(quiet_end)) else {
        return 0;
    };
    let quiet = if start <= end { now >= start && now < end } else { now >= start || now < end };
    if !quiet {
        return 0;
    }
    (end + 24 * 60 - now) % (24 * 60)
}

/// Read one string field from a flat JSON object ("{\"k\": \"v\"}") without a JSON
/// dependency; plugins stay small. Returns None when absent.
pub fn config_str(config: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\"");
    let at = config.find(&needle)? + needle.len();
    let rest = config[at..].trim_start().strip_prefix(':')?.trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        return s.find('"').map(|end| s[..end].to_string());
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

/// Compare two non-negative decimal strings ("50000" vs "162823.40").
pub fn at_least(amount: &str, threshold: &str) -> bool {
    let parse = |s: &str| -> Option<(u128, u128)> {
        let (i, f) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
        let f = format!("{f:0<6}");
        Some((i.parse().ok()?, f.get(..6)?.parse().ok()?))
    };
    matches!((parse(amount), parse(threshold)), (Some(a), Some(t)) if a >= t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        let cases = [
            ("approve K7QM2X", (Intent::Approve, true)),
            ("Approved, thanks", (Intent::Approve, false)),
            ("REJECT k7qm2x too expensive", (Intent::Reject, true)),
            ("seen", (Intent::Acknowledge, false)),
            ("what is this?", (Intent::Unknown, false)),
            ("K7QM2X", (Intent::Unknown, true)),
        ];
        for (text, want) in cases {
            assert_eq!(read_reply(text, "K7QM2X"), want, "{text}");
        }
    }

    #[test]
    fn reply_words_are_not_carrier_words() {
        for w in [APPROVE_WORD, REJECT_WORD, SEEN_WORD] {
            assert!(!CARRIER_WORDS.contains(&w), "{w}");
        }
    }

    #[test]
    fn money_quiet_hours_config() {
        assert_eq!(money("56875.00", "GBP"), "56,875.00 GBP");
        assert_eq!(money("875", "USD"), "875 USD");
        assert_eq!(money("1234567.5", "EUR"), "1,234,567.5 EUR");
        assert_eq!(minutes_until_awake("2026-11-27T22:30:00", "20:00", "07:00"), 510);
        assert_eq!(minutes_until_awake("2026-11-27T06:00:00", "20:00", "07:00"), 60);
        assert_eq!(minutes_until_awake("2026-11-27T12:00:00", "20:00", "07:00"), 0);
        assert_eq!(config_str(r#"{"a": "x", "b": 50000}"#, "b").as_deref(), Some("50000"));
        assert_eq!(config_str(r#"{"a": "x"}"#, "a").as_deref(), Some("x"));
        assert!(at_least("162823.40", "50000") && !at_least("49999.99", "50000") && at_least("50000", "50000.00"));
    }
}
