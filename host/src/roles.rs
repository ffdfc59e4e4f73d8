//! The role report read from QAD: each employee the mapping profile names for a role
//! looked up once, then `core::people::role_report`. `TestConnection` runs it; a role that
//! maps to nobody fails that check.

use std::collections::BTreeMap;

use crate::core::people::{self, RoleReport};
use crate::core::profile::{MappingProfile, PersonRef};
use crate::core::rows;
use crate::qad::{Filter, QadClient, QadError};

/// What the profile's roles reach in this QAD.
pub async fn role_report(client: &QadClient, profile: &MappingProfile) -> Result<RoleReport, QadError> {
    let mut employees = BTreeMap::new();
    let named = profile.roles.ap_clerk.iter().chain(&profile.roles.plant_manager);
    for code in named.filter_map(|r| match r {
        PersonRef::Employee { employee } => Some(employee),
        PersonRef::Direct { .. } => None,
    }) {
        if employees.contains_key(code) {
            continue;
        }
        let filter = Filter::Eq(profile.fields.employee_code.clone(), code.clone());
        let found = client.browse(&profile.browses.employees, &[filter]).await?;
        let employee = found.iter().find_map(|r| rows::employee(r, profile, "employees").ok());
        employees.insert(code.clone(), employee);
    }
    Ok(people::role_report(
        &profile.roles,
        &employees,
        &profile.default_country,
        &profile.country_aliases,
    ))
}
