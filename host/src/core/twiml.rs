//! TwiML for voice alerts. Every value placed in it (supplier names, amounts, a plugin's
//! words) is XML-escaped; a decision is a `<Gather numDigits="1">` whose action is the
//! tenant's gather webhook.

use super::routing::KeypadChoice;

/// Escape text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 does not allow at all (controls, U+FFFE, U+FFFF).
            c if !xml_allows(c) => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Whether XML 1.0 allows `c` in a document (its `Char` production).
pub fn xml_allows(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// The call's script: what to say, then the keypad choices gathered with one digit posted
/// to `gather_url`. Without choices the call only speaks.
pub fn voice(say: &str, choices: &[KeypadChoice], gather_url: &str) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\n");
    if choices.is_empty() {
        x.push_str(&format!("  <Say>{}</Say>\n", escape(say)));
    } else {
        x.push_str(&format!(
            "  <Gather numDigits=\"1\" action=\"{}\" method=\"POST\" timeout=\"10\">\n",
            escape(gather_url)
        ));
        x.push_str(&format!("    <Say>{}</Say>\n", escape(say)));
        for c in choices {
            x.push_str(&format!("    <Say>{}</Say>\n", escape(&c.label)));
        }
        x.push_str("  </Gather>\n  <Say>No key was pressed. Goodbye.</Say>\n");
    }
    x.push_str("</Response>\n");
    x
}

/// The answer to a gather callback: speak the confirmation and hang up.
pub fn say_and_hang_up(text: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\n  <Say>{}</Say>\n  <Hangup/>\n</Response>\n",
        escape(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::routing::ReplyAction;

    #[test]
    fn escapes_every_value() {
        assert_eq!(escape(r#"Smith & Sons <"A'B">"#), "Smith &amp; Sons &lt;&quot;A&apos;B&quot;&gt;");
        assert_eq!(escape("bell\u{7}"), "bell ");
    }

    #[test]
    fn voice_alert_with_choices() {
        let choices = vec![
            KeypadChoice {
                digit: "1".into(),
                action: ReplyAction::Approve,
                label: "To approve, press 1.".into(),
            },
            KeypadChoice {
                digit: "2".into(),
                action: ReplyAction::Reject,
                label: "To reject, press 2.".into(),
            },
        ];
        let x = voice(
            "Purchase order PO10259 from O'Brien & Söhne <GmbH> for 162,823.40 USD is waiting for approval.",
            &choices,
            "https://hooks.example.com/twilio/lakeshore/calls/gather?delivery=42&step=0",
        );
        insta::assert_snapshot!(x, @r#"
        <?xml version="1.0" encoding="UTF-8"?>
        <Response>
          <Gather numDigits="1" action="https://hooks.example.com/twilio/lakeshore/calls/gather?delivery=42&amp;step=0" method="POST" timeout="10">
            <Say>Purchase order PO10259 from O&apos;Brien &amp; Söhne &lt;GmbH&gt; for 162,823.40 USD is waiting for approval.</Say>
            <Say>To approve, press 1.</Say>
            <Say>To reject, press 2.</Say>
          </Gather>
          <Say>No key was pressed. Goodbye.</Say>
        </Response>
        "#);
        assert!(x.len() < 4000, "fits Twilio's Twiml parameter");
    }

    #[test]
    fn speak_only_and_confirmation() {
        insta::assert_snapshot!(voice("Invoice SI-1 is held.", &[], "https://x"), @r#"
        <?xml version="1.0" encoding="UTF-8"?>
        <Response>
          <Say>Invoice SI-1 is held.</Say>
        </Response>
        "#);
        insta::assert_snapshot!(say_and_hang_up("Approved PO10259 & thanks."), @r#"
        <?xml version="1.0" encoding="UTF-8"?>
        <Response>
          <Say>Approved PO10259 &amp; thanks.</Say>
          <Hangup/>
        </Response>
        "#);
    }
}
