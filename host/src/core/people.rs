//! Who can be reached about a record: people named by QAD (the PO's buyer, the supplier's
//! contacts) and by the tenant's profile (AP clerk, plant manager), each with an E.164
//! number or a recorded reason why not.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::phone;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Buyer,
    ApClerk,
    PlantManager,
    SupplierContact,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Buyer => "buyer",
            Role::ApClerk => "ap_clerk",
            Role::PlantManager => "plant_manager",
            Role::SupplierContact => "supplier_contact",
        }
    }
}

/// A person as QAD or the profile describes them, number still in national form.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    pub role: Role,
    pub name: String,
    /// Who this is in QAD terms, for messages: "supplier S-1001", "employee B-07".
    pub source: String,
    pub phone: String,
    pub country: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub role: Role,
    pub name: String,
    pub source: String,
    /// E.164.
    pub phone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreachable {
    pub role: Role,
    pub name: String,
    pub source: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct People {
    pub recipients: Vec<Recipient>,
    pub unreachable: Vec<Unreachable>,
}

/// Normalise every number; keep each role/number once; never guess a number.
pub fn resolve(people: Vec<Person>, default_country: &str, aliases: &BTreeMap<String, String>) -> People {
    let mut out = People::default();
    for p in people {
        let country = if p.country.trim().is_empty() {
            default_country
        } else {
            p.country.as_str()
        };
        match phone::normalise(&p.phone, country, aliases) {
            Ok(e164) => {
                let dup = out.recipients.iter().any(|r| r.role == p.role && r.phone == e164.number);
                if !dup {
                    out.recipients.push(Recipient {
                        role: p.role,
                        name: p.name,
                        source: p.source,
                        phone: e164.number,
                    });
                }
            }
            Err(e) => out.unreachable.push(Unreachable {
                role: p.role,
                error: e.for_whom(&p.source),
                name: p.name,
                source: p.source,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(role: Role, phone: &str, country: &str) -> Person {
        Person {
            role,
            name: "N".into(),
            source: "supplier S-1001".into(),
            phone: phone.into(),
            country: country.into(),
        }
    }

    #[test]
    fn resolves_numbers_and_records_the_ones_it_cannot() {
        let got = resolve(
            vec![
                person(Role::Buyer, "(312) 555-0142", ""),
                person(Role::Buyer, "+1 312 555 0142", "US"),
                person(Role::SupplierContact, "(312) 55-01", "US"),
                person(Role::SupplierContact, "0711 12345", "DEU"),
            ],
            "US",
            &[("DEU".to_string(), "DE".to_string())].into_iter().collect(),
        );
        let phones: Vec<_> = got.recipients.iter().map(|r| (r.role, r.phone.as_str())).collect();
        assert_eq!(phones, vec![(Role::Buyer, "+13125550142"), (Role::SupplierContact, "+4971112345")]);
        assert_eq!(got.unreachable.len(), 1);
        assert_eq!(
            got.unreachable[0].error,
            "phone \"(312) 55-01\" for supplier S-1001 is not a valid number for US"
        );
    }
}
