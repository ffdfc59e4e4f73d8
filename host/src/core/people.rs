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

/// What the roles the mapping profile names people for (AP clerk, plant manager) reach:
/// one report, for `TestConnection`, `DryRun` and each poll's audit entry. A role that
/// reaches nobody sends its alerts nowhere.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct RoleReport {
    pub roles: Vec<RoleReach>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleReach {
    pub role: Role,
    /// People named for it with a usable number.
    pub reached: usize,
    /// Why each other person named for it is not reached.
    pub problems: Vec<String>,
}

impl RoleReport {
    /// The roles that reach nobody.
    pub fn nobody(&self) -> impl Iterator<Item = &RoleReach> {
        self.roles.iter().filter(|r| r.reached == 0)
    }

    /// One line for people: each role that reaches nobody and why.
    pub fn describe(&self) -> String {
        let gaps: Vec<String> = self
            .nobody()
            .map(|r| match r.problems.as_slice() {
                [] => format!("{} maps to nobody (no one named in the profile's roles)", r.role.as_str()),
                p => format!("{} maps to nobody ({})", r.role.as_str(), p.join("; ")),
            })
            .collect();
        if gaps.is_empty() {
            let each: Vec<String> = self.roles.iter().map(|r| format!("{} {}", r.role.as_str(), r.reached)).collect();
            format!("every role reaches someone ({})", each.join(", "))
        } else {
            gaps.join("; ")
        }
    }
}

/// The report for the profile's `roles`, given what QAD said of each employee code they
/// name (`None`: no such employee).
pub fn role_report(
    roles: &crate::core::profile::Roles,
    employees: &BTreeMap<String, Option<crate::core::model::Employee>>,
    default_country: &str,
    aliases: &BTreeMap<String, String>,
) -> RoleReport {
    use crate::core::profile::PersonRef;
    let reach = |role: Role, refs: &[PersonRef]| {
        let mut problems = Vec::new();
        let mut people = Vec::new();
        for r in refs {
            match r {
                PersonRef::Employee { employee } => match employees.get(employee).cloned().flatten() {
                    Some(e) => people.push(Person {
                        role,
                        name: e.full_name(),
                        source: format!("employee {employee}"),
                        phone: e.phone,
                        country: e.country,
                    }),
                    None => problems.push(format!("employee {employee} is not a QAD employee")),
                },
                PersonRef::Direct { name, phone, country } => people.push(Person {
                    role,
                    name: name.clone(),
                    source: format!("{} {name}", role.as_str()),
                    phone: phone.clone(),
                    country: country.clone(),
                }),
            }
        }
        let resolved = resolve(people, default_country, aliases);
        problems.extend(resolved.unreachable.into_iter().map(|u| u.error));
        RoleReach {
            role,
            reached: resolved.recipients.len(),
            problems,
        }
    };
    RoleReport {
        roles: vec![
            reach(Role::ApClerk, &roles.ap_clerk),
            reach(Role::PlantManager, &roles.plant_manager),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_report_names_roles_that_reach_nobody_and_why() {
        use crate::core::model::Employee;
        use crate::core::profile::{PersonRef, Roles};
        let employee = |code: &str, phone: &str| Employee {
            code: code.into(),
            first_name: "Pat".into(),
            last_name: "Lee".into(),
            phone: phone.into(),
            title: String::new(),
            country: "US".into(),
        };
        let roles = Roles {
            ap_clerk: vec![
                PersonRef::Employee { employee: "E-1".into() },
                PersonRef::Employee { employee: "E-9".into() },
            ],
            plant_manager: vec![PersonRef::Employee { employee: "E-2".into() }],
        };
        let employees = BTreeMap::from([
            ("E-1".to_string(), Some(employee("E-1", "(312) 555-0142"))),
            ("E-2".to_string(), Some(employee("E-2", "12"))),
            ("E-9".to_string(), None),
        ]);
        let report = role_report(&roles, &employees, "US", &BTreeMap::new());
        assert_eq!(report.roles[0].reached, 1);
        assert_eq!(report.roles[0].problems, ["employee E-9 is not a QAD employee"]);
        let nobody: Vec<Role> = report.nobody().map(|r| r.role).collect();
        assert_eq!(nobody, [Role::PlantManager]);
        assert!(
            report.describe().starts_with("plant_manager maps to nobody ("),
            "{}",
            report.describe()
        );
        let empty = role_report(&Roles::default(), &BTreeMap::new(), "US", &BTreeMap::new());
        assert_eq!(empty.nobody().count(), 2);
        assert!(
            empty.describe().contains("ap_clerk maps to nobody (no one named"),
            "{}",
            empty.describe()
        );
    }

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
