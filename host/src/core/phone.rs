//! Phone numbers: QAD keeps free text in national form with the country apart; Twilio
//! wants E.164. A number that cannot be normalised is an error, never a guess.

use std::collections::BTreeMap;

use phonenumber::{Mode, country};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("phone {raw:?} {problem}")]
pub struct PhoneError {
    pub raw: String,
    pub problem: PhoneProblem,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PhoneProblem {
    #[error("is empty")]
    Empty,
    #[error("has country {0:?}, which is not an ISO 3166 code this connector knows (add it to the mapping profile's country_aliases)")]
    UnknownCountry(String),
    #[error("is not a valid number for {0}")]
    Invalid(String),
}

impl PhoneError {
    /// The message with the number's owner named: `phone "(312) 55-01" for supplier S-1001 is not…`.
    pub fn for_whom(&self, whom: &str) -> String {
        format!("phone {:?} for {whom} {}", self.raw, self.problem)
    }
}

/// A number ready for Twilio, with the extension QAD kept beside it (an extension cannot
/// be dialled by SMS; it is kept so a person reading the audit trail sees it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E164 {
    pub number: String,
    pub extension: Option<String>,
}

/// Whether `code` is an ISO 3166 alpha-2 region whose numbers this connector can read
/// (upper case, known to the numbering metadata: `ZZ` is not).
pub fn is_region(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) && phonenumber::metadata::DATABASE.by_id(code).is_some()
}

/// Normalise `raw` with `country` (alpha-2, or an alias from the mapping profile) as the
/// region for national-format numbers.
pub fn normalise(raw: &str, country: &str, aliases: &BTreeMap<String, String>) -> Result<E164, PhoneError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(PhoneError {
            raw: raw.to_string(),
            problem: PhoneProblem::Empty,
        });
    }
    let code = country.trim().to_ascii_uppercase();
    let code = aliases.get(&code).cloned().unwrap_or(code);
    let region: country::Id = code.parse().map_err(|_| PhoneError {
        raw: raw.to_string(),
        problem: PhoneProblem::UnknownCountry(country.to_string()),
    })?;
    // International prefix "00" is how Europe writes "+": libphonenumber handles it only
    // from a region whose exit code is 00, so rewrite it explicitly.
    let text = match trimmed.strip_prefix("00") {
        Some(rest) if !trimmed.starts_with("000") => format!("+{rest}"),
        _ => trimmed.to_string(),
    };
    let invalid = || PhoneError {
        raw: raw.to_string(),
        problem: PhoneProblem::Invalid(code.clone()),
    };
    let parsed = phonenumber::parse(Some(region), &text).map_err(|_| invalid())?;
    if !phonenumber::is_valid(&parsed) {
        return Err(invalid());
    }
    let extension = parsed.extension().map(|e| e.to_string());
    Ok(E164 {
        number: parsed.format().mode(Mode::E164).to_string(),
        extension,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aliases() -> BTreeMap<String, String> {
        [("USA", "US"), ("DEU", "DE"), ("GBR", "GB"), ("MEX", "MX")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn normalises_national_formats_from_several_countries() {
        let cases: &[(&str, &str, Result<&str, &str>)] = &[
            ("(312) 555-0142", "US", Ok("+13125550142")),
            ("312.555.0142", "USA", Ok("+13125550142")),
            ("+1 312 555 0142", "DE", Ok("+13125550142")),
            ("0049 711 12345", "DE", Ok("+4971112345")),
            ("0711 12345", "DE", Ok("+4971112345")),
            ("+44 20 7946 0018", "GB", Ok("+442079460018")),
            ("020 7946 0018", "GBR", Ok("+442079460018")),
            ("55 1234 5678", "MX", Ok("+525512345678")),
            ("(312) 555-0142 ext. 42", "US", Ok("+13125550142")),
            ("(312) 55-01", "US", Err("phone \"(312) 55-01\" is not a valid number for US")),
            ("call me maybe", "US", Err("phone \"call me maybe\" is not a valid number for US")),
            ("   ", "US", Err("phone \"   \" is empty")),
            (
                "(312) 555-0142",
                "XX",
                Err("phone \"(312) 555-0142\" has country \"XX\", which is not"),
            ),
        ];
        for (raw, country, want) in cases {
            let got = normalise(raw, country, &aliases());
            match (want, &got) {
                (Ok(n), Ok(e)) => assert_eq!(&e.number, n, "{raw} / {country}"),
                (Err(msg), Err(e)) => assert!(e.to_string().starts_with(msg), "{raw}: {e}"),
                _ => panic!("{raw} / {country}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn names_the_owner_in_the_message() {
        let e = normalise("(312) 55-01", "US", &aliases()).unwrap_err();
        assert_eq!(
            e.for_whom("supplier S-1001"),
            "phone \"(312) 55-01\" for supplier S-1001 is not a valid number for US"
        );
    }

    #[test]
    fn keeps_the_extension_apart() {
        let e = normalise("(312) 555-0142 ext. 42", "US", &aliases()).unwrap();
        assert_eq!(e.extension.as_deref(), Some("42"));
    }
}
