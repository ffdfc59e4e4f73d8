//! Text from outside made safe to show: in a log line a value can neither start a line of
//! its own nor fill the disk.

use super::limits::{LOGGED_CHARS, LOGGED_ERROR_CHARS};

/// `s` for a log field: control characters escaped (`\n`, `\u{1b}`), at most
/// [`LOGGED_CHARS`] characters shown, and the length of what was cut said.
pub fn for_log(s: &str) -> String {
    clipped(s, LOGGED_CHARS)
}

/// An error for a log field: as [`for_log`], with room for [`LOGGED_ERROR_CHARS`] (an error
/// names the record and the field, and may quote a value from outside).
pub fn error_for_log(e: &dyn std::fmt::Display) -> String {
    clipped(&e.to_string(), LOGGED_ERROR_CHARS)
}

/// Text a plugin wrote (an error, a log line) where it lands: at most `max_bytes` bytes of
/// it, cut at a character boundary, and the length of the whole said when it was cut.
pub fn capped(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_string();
    }
    let end = (0..=max_bytes).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    format!("{}… ({} bytes in all)", &s[..end], s.len())
}

fn clipped(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        None => escape_controls(s),
        Some((cut, _)) => format!("{}… ({} bytes in all)", escape_controls(&s[..cut]), s.len()),
    }
}

/// Characters that reorder or break a line where a viewer shows it: the Unicode line and
/// paragraph separators and the bidirectional controls (a "right-to-left override" makes
/// a line read differently from what it holds).
pub fn is_line_trick(c: char) -> bool {
    matches!(
        c,
        '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}'
    )
}

/// `s` with every control character and line trick escaped (`\n`, `\u{1b}`, `\u{202e}`), so
/// it stays on its line and reads as it is.
pub fn escape_controls(s: &str) -> String {
    s.chars().fold(String::with_capacity(s.len()), |mut out, c| {
        if c.is_control() || is_line_trick(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_for_logs() {
        let long = "x".repeat(20_000);
        let clipped = format!("{}… (20000 bytes in all)", "x".repeat(LOGGED_CHARS));
        let cases: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("", ""),
            ("SI-1\n2026-12-04T00:00:00Z INFO forged", "SI-1\\n2026-12-04T00:00:00Z INFO forged"),
            ("\r\u{1b}[31mred", "\\r\\u{1b}[31mred"),
            ("\u{85}next", "\\u{85}next"),
            ("a\u{2028}b\u{202e}c", "a\\u{2028}b\\u{202e}c"),
            ("Zürich ✓", "Zürich ✓"),
            (&long, &clipped),
        ];
        for (raw, want) in cases {
            assert_eq!(for_log(raw), *want, "{raw:?}");
        }
        let error = "e".repeat(LOGGED_ERROR_CHARS + 1);
        let want = format!("{}… ({} bytes in all)", "e".repeat(LOGGED_ERROR_CHARS), LOGGED_ERROR_CHARS + 1);
        assert_eq!(error_for_log(&error), want);
        assert_eq!(error_for_log(&"row\nkey"), "row\\nkey");
    }

    #[test]
    fn plugin_text_capped() {
        let cases: &[(&str, usize, &str)] = &[
            ("short", 1024, "short"),
            ("abcdef", 3, "abc… (6 bytes in all)"),
            ("ééé", 3, "é… (6 bytes in all)"),
            ("", 0, ""),
        ];
        for (raw, max, want) in cases {
            assert_eq!(capped(raw, *max), *want, "{raw:?} {max}");
        }
        let huge = "x".repeat(8_000_000);
        assert!(capped(&huge, 1024).len() < 1100);
    }
}
