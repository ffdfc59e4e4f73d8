//! The bodies of the fuzz targets (`host/fuzz`, `cargo xtask fuzz`), shared with the test
//! that replays every corpus entry and every input that ever crashed on stable
//! (`tests/it/fuzz_corpus.rs`). Each takes arbitrary bytes as the outside world would send
//! them and panics only when a property breaks: a parser of outside input must answer every
//! input with a value or an error, never a panic, and what the host writes must stay valid.

use crate::config::ConfigFile;
use crate::core::profile::MappingProfile;
use crate::core::routing::{self, AlertInput, Channel, Delivery, KeypadChoice, Message, Reply};
use crate::core::{rows, signature, twiml};

/// A fuzz target's body: arbitrary bytes in, a panic only when a property breaks.
pub type Target = fn(&[u8]);

/// Every target, by the name of its folder under `host/fuzz/corpus`.
pub const TARGETS: [(&str, Target); 6] = [
    ("webhook_form", webhook_form),
    ("qad_rows", qad_rows),
    ("config_toml", config_toml),
    ("mapping_profile", mapping_profile),
    ("plugin_output", plugin_output),
    ("twiml", twiml_text),
];

/// Splits `data` at its first two line feeds: the URL, the signature header, the body.
fn request(data: &[u8]) -> (String, String, &[u8]) {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let url = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let header = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    (url, header, parts.next().unwrap_or_default())
}

/// A webhook's form body and signature: parsing never panics; a request the host signs
/// itself always verifies, and with one byte of the signature changed never does.
pub fn webhook_form(data: &[u8]) {
    let (url, header, body) = request(data);
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    let _ = signature::check("fuzz-token", &url, &params, body, &header);
    if signature::body_hash(&url).is_none() {
        let good = signature::sign("fuzz-token", &url, &params);
        assert!(
            signature::verify("fuzz-token", &url, &params, body, &good),
            "own signature refused: {url:?}"
        );
        let bad = if good.starts_with('A') {
            good.replacen('A', "B", 1)
        } else {
            format!("A{}", &good[1..])
        };
        assert!(
            !signature::verify("fuzz-token", &url, &params, body, &bad),
            "changed signature taken: {url:?}"
        );
    }
}

/// A QAD browse row as JSON: every record parser answers with a record or a `RowError`.
pub fn qad_rows(data: &[u8]) {
    let Ok(row) = serde_json::from_slice::<rows::Row>(data) else {
        return;
    };
    let p = MappingProfile::default();
    let _ = rows::content_version(&row);
    let _ = rows::invoice(&row, &p, "fuzz");
    let _ = rows::purchase_order(&row, &p, "fuzz");
    let _ = rows::receipt(&row, &p, "fuzz");
    let _ = rows::po_line(&row, "fuzz");
    let _ = rows::matching_line(&row, "fuzz");
    let _ = rows::tolerance(&row, "fuzz");
    let _ = rows::address(&row, &p, "fuzz");
    let _ = rows::contact(&row, &p, "fuzz");
    let _ = rows::employee(&row, &p, "fuzz");
}

/// `serve --config FILE`: a TOML file parses or is refused with a message.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(file) = ConfigFile::parse(text) {
        let _ = file.variables();
    }
}

/// A tenant's mapping profile (gRPC `profile_json`), then a row read through it.
pub fn mapping_profile(data: &[u8]) {
    let Ok(p) = serde_json::from_slice::<MappingProfile>(data) else {
        return;
    };
    let row: rows::Row = serde_json::from_str(
        r#"{"ih_inv_nbr":"SI-1","ih_vend":"S1","ih_amt":"10.00","ih_curr":"USD","ih_due_date":"2026-12-01","ad_name":"A","ad_country":"DE","ph_nbr":"030 1234567"}"#,
    )
    .expect("a JSON object");
    let _ = rows::invoice(&row, &p, "fuzz");
    let _ = rows::address(&row, &p, "fuzz");
    let _ = rows::contact(&row, &p, "fuzz");
    let _ = rows::employee(&row, &p, "fuzz");
}

#[derive(serde::Deserialize)]
struct PluginOutput {
    alert: AlertInput,
    deliveries: Vec<Delivery>,
    channel: Channel,
    message: Message,
    reply: Reply,
}

/// What a plugin returns, checked as the host checks it; a voice message the checks pass
/// becomes TwiML that an XML parser reads back.
pub fn plugin_output(data: &[u8]) {
    let Ok(out) = serde_json::from_slice::<PluginOutput>(data) else {
        return;
    };
    let _ = routing::check_deliveries(&out.alert, &out.deliveries);
    let _ = routing::check_reply(&out.reply);
    if routing::check_message(out.channel, &out.message).is_ok()
        && let Message::Voice { say, choices } = &out.message
    {
        well_formed(&twiml::voice(say, choices, "https://host/twilio/t/calls/gather?delivery=1"));
    }
}

/// Any words in TwiML: the document is well-formed XML and says the words (controls aside).
pub fn twiml_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (say, label) = text.split_once('\u{0}').unwrap_or((&text, "press 1"));
    let choices = [KeypadChoice {
        digit: "1".into(),
        action: routing::ReplyAction::Approve,
        label: label.to_string(),
    }];
    let doc = twiml::voice(say, &choices, &format!("https://host/g?x={label}"));
    let spoken = well_formed(&doc);
    let said = spoken.first().map(|s| line_ends(s));
    assert_eq!(said.as_deref(), Some(xml_text(say).as_str()), "{doc}");
    well_formed(&twiml::voice(say, &[], "https://host/g"));
    well_formed(&twiml::say_and_hang_up(say));
}

/// The text an XML 1.0 document can carry for `s`: characters XML forbids become spaces, and
/// line ends are compared as `\n` (XML parsers differ on a lone `\r`).
fn xml_text(s: &str) -> String {
    let replaced: String = s.chars().map(|c| if twiml::xml_allows(c) { c } else { ' ' }).collect();
    line_ends(&replaced)
}

fn line_ends(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

/// Parses `doc` as XML (panicking if it is not well-formed) and returns the text of its
/// `<Say>` elements in order.
fn well_formed(doc: &str) -> Vec<String> {
    let parsed = roxmltree::Document::parse(doc).unwrap_or_else(|e| panic!("not well-formed XML ({e}): {doc:?}"));
    parsed
        .descendants()
        .filter(|n| n.has_tag_name("Say"))
        .map(|n| n.text().unwrap_or("").to_string())
        .collect()
}
