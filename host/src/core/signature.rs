//! X-Twilio-Signature: HMAC-SHA1 over the full URL Twilio requested and the sorted POST
//! parameters, keyed with the account's Auth Token, base64. Pure; checked against the
//! public test vectors of the spec, and in the integration suite against the official
//! `twilio` library as an independent signer.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use url::Url;

type HmacSha1 = Hmac<Sha1>;

/// How a signer orders names and values. Twilio's back end and twilio-python compare code
/// points (the same as UTF-8 byte order); twilio-node compares UTF-16 code units, which differs
/// once a string mixes characters above U+FFFF with ones from U+E000 to U+FFFF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    CodePoints,
    Utf16,
}

impl SortOrder {
    fn cmp(self, a: &str, b: &str) -> std::cmp::Ordering {
        match self {
            SortOrder::CodePoints => a.cmp(b),
            SortOrder::Utf16 => a.encode_utf16().cmp(b.encode_utf16()),
        }
    }
}

/// The string Twilio signs: the URL, then each parameter name followed by its value, names in
/// byte order; a repeated name contributes each distinct value, values in byte order.
pub fn signed_payload(url: &str, params: &[(String, String)]) -> String {
    signed_payload_in(SortOrder::CodePoints, url, params)
}

/// [`signed_payload`] with names and values compared as `order` says.
pub fn signed_payload_in(order: SortOrder, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    sorted.sort_unstable_by(|a, b| order.cmp(a.0, b.0).then_with(|| order.cmp(a.1, b.1)));
    sorted.dedup();
    let mut s = String::from(url);
    for (k, v) in sorted {
        s.push_str(k);
        s.push_str(v);
    }
    s
}

fn mac(token: &str, payload: &str) -> HmacSha1 {
    let mut m = HmacSha1::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    m.update(payload.as_bytes());
    m
}

/// The signature Twilio would send for this request.
pub fn sign(token: &str, url: &str, params: &[(String, String)]) -> String {
    STANDARD.encode(mac(token, &signed_payload(url, params)).finalize().into_bytes())
}

/// The URL as requested, without its port, and with the scheme's default port added when
/// none was given: the official libraries accept a signature over any of them.
fn port_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    if let Ok(mut u) = Url::parse(url) {
        let default = match u.scheme() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        };
        // `Url` hides a default port it was given, so rebuild the text by hand for that case.
        if u.port().is_some() {
            let _ = u.set_port(None);
            out.push(u.to_string());
        } else if let Some(p) = default {
            let authority_end = url
                .find("://")
                .map(|i| i + 3)
                .and_then(|start| url[start..].find(['/', '?', '#']).map(|e| start + e))
                .unwrap_or(url.len());
            let explicit = url[..authority_end]
                .rsplit_once(':')
                .is_some_and(|(_, port)| port.chars().all(|c| c.is_ascii_digit()) && !port.is_empty());
            if explicit {
                // "https://host:443/…": Url normalised the port away; offer the bare form too.
                out.push(u.to_string());
            } else {
                out.push(format!("{}:{p}{}", &url[..authority_end], &url[authority_end..]));
            }
        }
    }
    out
}

/// Every form of the URL an official validator (twilio-node 6) accepts a signature over: as
/// received, with and without its port; then, for back ends that signed an escaped form, the
/// URL as a WHATWG parser writes it and that with its query re-encoded as Node's legacy
/// `querystring` module does (`a+b` becomes `a%20b`), each with and without the port.
fn url_variants(url: &str) -> Vec<String> {
    let mut out = port_variants(url);
    if let Ok(u) = Url::parse(url) {
        for v in port_variants(u.as_str()) {
            let legacy = legacy_querystring(&v);
            out.push(v);
            out.push(legacy);
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|u| seen.insert(u.clone()));
    out
}

/// What Node's `querystring.escape` leaves alone; everything else is percent-encoded.
const NODE_QUERYSTRING: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The query as `querystring.stringify(querystring.parse(query))` writes it: `+` and escapes
/// decoded, the values of a repeated name gathered at its first place, then re-escaped.
fn legacy_querystring(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    if query.is_empty() {
        return url.to_string();
    }
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match groups.iter_mut().find(|(name, _)| *name == k) {
            Some((_, values)) => values.push(v.into_owned()),
            None => groups.push((k.into_owned(), vec![v.into_owned()])),
        }
    }
    let escape = |s: &str| utf8_percent_encode(s, NODE_QUERYSTRING).to_string();
    let pairs: Vec<String> = groups
        .iter()
        .flat_map(|(k, values)| values.iter().map(move |v| format!("{}={}", escape(k), escape(v))))
        .collect();
    format!("{base}?{}", pairs.join("&"))
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("X-Twilio-Signature is not base64")]
    NotBase64,
    #[error("the body does not match the URL's bodySHA256")]
    BodyHash,
    #[error("X-Twilio-Signature does not match")]
    Mismatch,
}

/// The `bodySHA256` of the URL's query, when it has one: Twilio then signs the URL alone and
/// the hash covers the body, whatever its content type.
pub fn body_hash(url: &str) -> Option<String> {
    Url::parse(url)
        .ok()
        .and_then(|u| u.query_pairs().find(|(k, _)| k == "bodySHA256").map(|(_, v)| v.into_owned()))
}

/// Whether `header` is a valid X-Twilio-Signature for this request: over the URL and the form
/// `params`, or, when the URL carries `bodySHA256`, over the URL alone with that hash checked
/// against the raw body as received. Accepts what the official validators accept (the URL
/// variants above, either sort order). Each comparison is constant-time.
pub fn check(token: &str, url: &str, params: &[(String, String)], raw_body: &[u8], header: &str) -> Result<(), Refusal> {
    let given = STANDARD.decode(header.trim()).map_err(|_| Refusal::NotBase64)?;
    let params: &[(String, String)] = match body_hash(url) {
        Some(expected) => {
            let actual = hex::encode(Sha256::digest(raw_body));
            if !constant_eq(actual.as_bytes(), expected.to_ascii_lowercase().as_bytes()) {
                return Err(Refusal::BodyHash);
            }
            &[]
        }
        None => params,
    };
    for u in url_variants(url) {
        let by_code_point = signed_payload_in(SortOrder::CodePoints, &u, params);
        let by_utf16 = signed_payload_in(SortOrder::Utf16, &u, params);
        let payloads = if by_utf16 == by_code_point {
            vec![by_code_point]
        } else {
            vec![by_code_point, by_utf16]
        };
        if payloads.iter().any(|p| mac(token, p).verify_slice(&given).is_ok()) {
            return Ok(());
        }
    }
    Err(Refusal::Mismatch)
}

/// [`check`], as a yes or no.
pub fn verify(token: &str, url: &str, params: &[(String, String)], raw_body: &[u8], header: &str) -> bool {
    check(token, url, params, raw_body, header).is_ok()
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn call() -> Vec<(String, String)> {
        p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ])
    }

    #[test]
    fn the_public_test_vectors() {
        let json_url =
            "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        let json_body = br#"{"property": "value", "boolean": true}"#;
        type Vector<'a> = (&'a str, Vec<(String, String)>, &'a [u8], &'a str);
        let cases: Vec<Vector> = vec![
            (
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                call(),
                b"",
                "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
            ),
            (
                "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
                call(),
                b"",
                "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
            ),
            // signed with :443, requested without a port
            (
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                call(),
                b"",
                "kvajT1Ptam85bY51eRf/AJRuM3w=",
            ),
            (
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                p(&[
                    ("Sid", "CA123"),
                    ("SidAccount", "AC123"),
                    ("Digits", "5678"),
                    ("Digits", "1234"),
                    ("Digits", "1234"),
                ]),
                b"",
                "IK+Dwps556ElfBT0I3Rgjkr1wJU=",
            ),
            (json_url, vec![], json_body, "a9nBmqA0ju/hNViExpshrM61xv4="),
        ];
        for (url, params, body, sig) in cases {
            assert!(verify("12345", url, &params, body, sig), "{url} {sig}");
            assert!(!verify("12346", url, &params, body, sig), "wrong token: {url}");
        }
        assert_eq!(
            sign("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &call()),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    /// Vectors from twilio-node 6.3.1 (`getExpectedTwilioSignature`), which the host accepts
    /// as twilio-node's `validateRequest` does.
    #[test]
    fn what_twilio_node_accepts() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        // Repeated values sorted by UTF-16 code units: U+1F600 before U+FF5E.
        let repeated = p(&[("X", "～"), ("X", "😀")]);
        assert!(verify("12345", url, &repeated, b"", "TiWkgR2C7NjsQ/6lTNaImLsMeJ8="));
        assert_ne!(
            sign("12345", url, &repeated),
            "TiWkgR2C7NjsQ/6lTNaImLsMeJ8=",
            "code points sort the other way"
        );
        assert!(verify("12345", url, &repeated, b"", &sign("12345", url, &repeated)));
        // Signed with the query escaped (`a%20b`), received as `a+b`.
        let digits = p(&[("Digits", "1")]);
        let received = "https://mycompany.com/myapp.php?note=a+b";
        assert!(verify("12345", received, &digits, b"", "COvSlpOtkmAZukWa6cx0KD2aiWA="));
        assert!(!verify(
            "12345",
            "https://mycompany.com/myapp.php?note=a+c",
            &digits,
            b"",
            "COvSlpOtkmAZukWa6cx0KD2aiWA="
        ));
    }

    #[test]
    fn legacy_querystrings() {
        let cases = [
            ("https://h/p", "https://h/p"),
            ("https://h/p?", "https://h/p?"),
            ("https://h/p?note=a+b", "https://h/p?note=a%20b"),
            ("https://h/p?a=1&b=2&a=3", "https://h/p?a=1&a=3&b=2"),
            ("https://h/p?q=%27x%27&e=", "https://h/p?q='x'&e="),
            ("https://h/p?z=%E2%9C%93*~", "https://h/p?z=%E2%9C%93*~"),
            ("https://h/p?k", "https://h/p?k="),
        ];
        for (url, want) in cases {
            assert_eq!(legacy_querystring(url), want, "{url}");
        }
    }

    #[test]
    fn a_body_hash_covers_any_body() {
        // The empty body's hash in the URL, a form body sent: refused.
        let empty = "https://h/p?bodySHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let sig = sign("12345", empty, &[]);
        assert_eq!(check("12345", empty, &[], b"", &sig), Ok(()));
        let form = p(&[("MessageSid", "SM1")]);
        assert_eq!(check("12345", empty, &form, b"MessageSid=SM1", &sig), Err(Refusal::BodyHash));
        assert_eq!(check("12345", empty, &[], b"", "%%"), Err(Refusal::NotBase64));
        assert_eq!(check("12346", empty, &[], b"", &sig), Err(Refusal::Mismatch));
    }

    #[test]
    fn anything_changed_is_refused() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let sig = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        let mut tampered = call();
        tampered[2].1 = "1235".into();
        assert!(!verify("12345", url, &tampered, b"", sig));
        assert!(!verify("12345", "https://mycompany.com/myapp.php?foo=1&bar=3", &call(), b"", sig));
        assert!(!verify("12345", url, &call()[1..], b"", sig), "a parameter dropped");
        assert!(!verify("12345", url, &call(), b"", "not base64!"));
        assert!(!verify("12345", url, &call(), b"", ""));
        let json_url =
            "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        assert!(!verify(
            "12345",
            json_url,
            &[],
            br#"{"property": "value", "boolean": false}"#,
            "a9nBmqA0ju/hNViExpshrM61xv4="
        ));
    }
}
