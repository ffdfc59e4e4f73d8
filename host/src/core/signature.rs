//! X-Twilio-Signature: HMAC-SHA1 over the full URL Twilio requested and the sorted POST
//! parameters, keyed with the account's Auth Token, base64. Pure; checked against the
//! public test vectors of the spec, and in the integration suite against the official
//! `twilio` library as an independent signer.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use url::Url;

type HmacSha1 = Hmac<Sha1>;

/// The string Twilio signs: the URL, then each parameter name followed by its value, names in
/// byte order; a repeated name contributes each distinct value, values in byte order.
pub fn signed_payload(url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    sorted.sort_unstable();
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
fn url_variants(url: &str) -> Vec<String> {
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
    out.dedup();
    out
}

/// Whether `header` is a valid X-Twilio-Signature for this request. For a JSON body Twilio
/// puts `bodySHA256` in the query and signs the URL alone; the body's hash is checked too.
/// Comparison is constant-time.
pub fn verify(token: &str, url: &str, params: &[(String, String)], raw_body: Option<&[u8]>, header: &str) -> bool {
    let Ok(given) = STANDARD.decode(header.trim()) else { return false };
    let body_hash = Url::parse(url)
        .ok()
        .and_then(|u| u.query_pairs().find(|(k, _)| k == "bodySHA256").map(|(_, v)| v.into_owned()));
    let params: &[(String, String)] = match &body_hash {
        Some(expected) => {
            let actual = hex::encode(Sha256::digest(raw_body.unwrap_or_default()));
            if !constant_eq(actual.as_bytes(), expected.to_ascii_lowercase().as_bytes()) {
                return false;
            }
            &[]
        }
        None => params,
    };
    url_variants(url)
        .iter()
        .any(|u| mac(token, &signed_payload(u, params)).verify_slice(&given).is_ok())
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
        type Vector<'a> = (&'a str, Vec<(String, String)>, Option<&'a [u8]>, &'a str);
        let cases: Vec<Vector> = vec![
            (
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                call(),
                None,
                "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
            ),
            (
                "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
                call(),
                None,
                "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
            ),
            // signed with :443, requested without a port
            (
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                call(),
                None,
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
                None,
                "IK+Dwps556ElfBT0I3Rgjkr1wJU=",
            ),
            (json_url, vec![], Some(json_body), "a9nBmqA0ju/hNViExpshrM61xv4="),
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

    #[test]
    fn anything_changed_is_refused() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let sig = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        let mut tampered = call();
        tampered[2].1 = "1235".into();
        assert!(!verify("12345", url, &tampered, None, sig));
        assert!(!verify("12345", "https://mycompany.com/myapp.php?foo=1&bar=3", &call(), None, sig));
        assert!(!verify("12345", url, &call()[1..], None, sig), "a parameter dropped");
        assert!(!verify("12345", url, &call(), None, "not base64!"));
        assert!(!verify("12345", url, &call(), None, ""));
        let json_url =
            "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        assert!(!verify(
            "12345",
            json_url,
            &[],
            Some(br#"{"property": "value", "boolean": false}"#),
            "a9nBmqA0ju/hNViExpshrM61xv4="
        ));
    }
}
