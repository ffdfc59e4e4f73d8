//! The per-tenant mapping profile: every [GUESS] of `qad-api.md` lives here, with the spec's
//! values as defaults, so a customer whose QAD differs changes configuration, not code.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::core::limits::{PAGE_SIZE_MAX, PAGE_SIZE_MIN, PROFILE_ENTRIES_MAX, PROFILE_TEXT_MAX_CHARS};
use crate::core::phone;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MappingProfile {
    pub browses: Browses,
    pub fields: GuessedFields,
    pub approval_values: ApprovalValues,
    pub write_paths: WritePaths,
    /// Rows per browse page.
    pub page_size: u32,
    /// Region for numbers whose row carries no country.
    pub default_country: String,
    /// What a tenant's QAD writes in `ad_ctry`/`emp_ctry` mapped to ISO 3166 alpha-2.
    pub country_aliases: BTreeMap<String, String>,
    /// People behind roles QAD does not hold.
    pub roles: Roles,
    /// A pending PO at or above this total is at least high urgency.
    pub high_value_threshold: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Browses {
    pub purchase_orders: String,
    pub receipts: String,
    pub po_lines: String,
    pub po_control: String,
    pub invoice_matchings: String,
    pub invoices: String,
    pub addresses: String,
    pub contacts: String,
    pub employees: String,
}

/// Field names the spec marks [GUESS]. Fields it documents are constants in `core::rows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuessedFields {
    pub po_total: String,
    pub po_approval_status: String,
    pub po_mod_date: String,
    pub receipt_qty_ordered: String,
    pub invoice_amount: String,
    pub invoice_currency: String,
    pub address_country: String,
    pub contact_supplier: String,
    pub contact_function: String,
    pub employee_code: String,
    pub employee_first_name: String,
    pub employee_last_name: String,
    pub employee_phone: String,
    pub employee_title: String,
    pub employee_country: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalValues {
    pub not_required: String,
    pub pending: String,
    pub approved: String,
    pub denied: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WritePaths {
    pub transaction_comments: String,
    pub purchase_order_approvals: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Roles {
    pub ap_clerk: Vec<PersonRef>,
    pub plant_manager: Vec<PersonRef>,
}

/// Someone named by the tenant: a QAD employee code, or a name and number given directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PersonRef {
    Employee { employee: String },
    Direct { name: String, phone: String, country: String },
}

/// Why a mapping profile is refused; `field` is its path inside the profile.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProfileError {
    #[error("page_size {0} is not between {PAGE_SIZE_MIN} and {PAGE_SIZE_MAX}")]
    PageSize(u32),
    #[error("{field} {value:?} is not an ISO 3166 alpha-2 country this connector knows")]
    Country { field: String, value: String },
    #[error("{field} is {chars} characters long, more than {PROFILE_TEXT_MAX_CHARS}")]
    TooLong { field: String, chars: usize },
    #[error("{field} holds a control character")]
    Control { field: String },
    #[error("{field} is empty")]
    Empty { field: String },
    #[error("{field} has {count} entries, more than {PROFILE_ENTRIES_MAX}")]
    TooMany { field: String, count: usize },
    #[error("{field} {value:?} must be a path starting with `/`, without `?`, `#`, `\\` or spaces")]
    Path { field: String, value: String },
    #[error("high_value_threshold must not be negative")]
    Threshold,
}

impl ProfileError {
    /// The profile's field at fault (`page_size`, `roles.ap_clerk[0].phone`…).
    pub fn field(&self) -> &str {
        match self {
            ProfileError::PageSize(_) => "page_size",
            ProfileError::Threshold => "high_value_threshold",
            ProfileError::Country { field, .. }
            | ProfileError::TooLong { field, .. }
            | ProfileError::Control { field }
            | ProfileError::Empty { field }
            | ProfileError::TooMany { field, .. }
            | ProfileError::Path { field, .. } => field,
        }
    }
}

impl MappingProfile {
    /// Every field in its range (`core::limits`): the page size, the countries, each text's
    /// length and characters, the write paths' shape. A page size of 0 once paged for ever.
    pub fn check(&self) -> Result<(), ProfileError> {
        if !(PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(&self.page_size) {
            return Err(ProfileError::PageSize(self.page_size));
        }
        if self.high_value_threshold.is_sign_negative() {
            return Err(ProfileError::Threshold);
        }
        let countries = std::iter::once(("default_country".to_string(), &self.default_country))
            .chain(self.country_aliases.iter().map(|(k, v)| (format!("country_aliases.{k}"), v)));
        for (field, value) in countries {
            if !phone::is_region(value) {
                return Err(ProfileError::Country {
                    field,
                    value: value.clone(),
                });
            }
        }
        for (field, value) in [
            ("write_paths.transaction_comments", &self.write_paths.transaction_comments),
            ("write_paths.purchase_order_approvals", &self.write_paths.purchase_order_approvals),
        ] {
            if !value.starts_with('/') || value.contains(['?', '#', '\\', ' ']) {
                return Err(ProfileError::Path {
                    field: field.into(),
                    value: value.clone(),
                });
            }
        }
        check_texts("", &serde_json::to_value(self).expect("plain data serialises"))
    }
}

/// Every string in the profile (keys included) within its length, with no control
/// characters; every list and map within its count; browses and field names not empty.
fn check_texts(path: &str, v: &Value) -> Result<(), ProfileError> {
    let text = |field: &str, s: &str| {
        let chars = s.chars().count();
        if chars > PROFILE_TEXT_MAX_CHARS {
            Err(ProfileError::TooLong {
                field: field.into(),
                chars,
            })
        } else if s.chars().any(char::is_control) {
            Err(ProfileError::Control { field: field.into() })
        } else if s.is_empty() && (field.starts_with("browses.") || field.starts_with("fields.")) {
            Err(ProfileError::Empty { field: field.into() })
        } else {
            Ok(())
        }
    };
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match v {
        Value::String(s) => text(path, s),
        Value::Array(items) if items.len() > PROFILE_ENTRIES_MAX => Err(ProfileError::TooMany {
            field: path.into(),
            count: items.len(),
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| check_texts(&format!("{path}[{i}]"), x)),
        Value::Object(m) if m.len() > PROFILE_ENTRIES_MAX => Err(ProfileError::TooMany {
            field: path.into(),
            count: m.len(),
        }),
        Value::Object(m) => m.iter().try_for_each(|(k, x)| {
            let field = join(k);
            text(&field, k)?;
            check_texts(&field, x)
        }),
        _ => Ok(()),
    }
}

impl Default for MappingProfile {
    fn default() -> Self {
        MappingProfile {
            browses: Browses::default(),
            fields: GuessedFields::default(),
            approval_values: ApprovalValues::default(),
            write_paths: WritePaths::default(),
            page_size: 200,
            default_country: "US".into(),
            country_aliases: [
                ("USA", "US"),
                ("DEU", "DE"),
                ("GER", "DE"),
                ("GBR", "GB"),
                ("UK", "GB"),
                ("MEX", "MX"),
                ("CAN", "CA"),
                ("FRA", "FR"),
                ("CHN", "CN"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
            roles: Roles::default(),
            high_value_threshold: Decimal::from(50_000),
        }
    }
}

impl Default for Browses {
    fn default() -> Self {
        Browses {
            purchase_orders: "urn:browse:bebrowse:com.qad.erp.purchasing.purchaseOrders".into(),
            receipts: "urn:browse:mfg:prh001".into(),
            po_lines: "urn:browse:mfg:pod001".into(),
            po_control: "urn:browse:mfg:poc001".into(),
            invoice_matchings: "urn:browse:bebrowse:com.qad.erp.financials.supplierInvoiceMatchings".into(),
            invoices: "urn:browse:bebrowse:com.qad.erp.financials.supplierInvoices".into(),
            addresses: "urn:browse:mfg:ad001".into(),
            contacts: "urn:browse:bebrowse:com.qad.erp.base.contacts".into(),
            employees: "urn:browse:mfg:emp001".into(),
        }
    }
}

impl Default for GuessedFields {
    fn default() -> Self {
        GuessedFields {
            po_total: "po_mstr.po_total".into(),
            po_approval_status: "po_mstr.po_approval_status".into(),
            po_mod_date: "po_mstr.po_mod_date".into(),
            receipt_qty_ordered: "prh_hist.prh_qty_ord".into(),
            invoice_amount: "CInvoice.CInvoiceOriginalCreditTC".into(),
            invoice_currency: "CInvoice.CurrencyCode".into(),
            address_country: "ad_mstr.ad_ctry".into(),
            contact_supplier: "Contact.BusinessRelationCode".into(),
            contact_function: "Contact.ContactFunction".into(),
            employee_code: "emp_mstr.emp_addr".into(),
            employee_first_name: "emp_mstr.emp_fname".into(),
            employee_last_name: "emp_mstr.emp_lname".into(),
            employee_phone: "emp_mstr.emp_phone".into(),
            employee_title: "emp_mstr.emp_title".into(),
            employee_country: "emp_mstr.emp_ctry".into(),
        }
    }
}

impl Default for ApprovalValues {
    fn default() -> Self {
        ApprovalValues {
            not_required: "NotRequired".into(),
            pending: "Pending".into(),
            approved: "Approved".into(),
            denied: "Denied".into(),
        }
    }
}

impl Default for WritePaths {
    fn default() -> Self {
        WritePaths {
            transaction_comments: "/api/erp/transactionComments".into(),
            purchase_order_approvals: "/api/erp/purchaseOrderApprovals".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_profile_keeps_the_spec_defaults_for_the_rest() {
        let p: MappingProfile = serde_json::from_str(r#"{"fields":{"po_total":"po_mstr.po_amt"},"page_size":50}"#).unwrap();
        assert_eq!(p.fields.po_total, "po_mstr.po_amt");
        assert_eq!(p.fields.po_mod_date, "po_mstr.po_mod_date");
        assert_eq!(p.page_size, 50);
        assert_eq!(p.browses.receipts, "urn:browse:mfg:prh001");
    }

    /// Issue 22: page_size 0 paged for ever, "ZZ" was taken as a country, and any text of
    /// any length was stored. Each is refused naming its field; the default passes.
    #[test]
    fn a_profile_out_of_range_is_refused_naming_the_field() {
        assert_eq!(MappingProfile::default().check(), Ok(()));
        let long = "x".repeat(PROFILE_TEXT_MAX_CHARS + 1);
        let cases: Vec<(String, &str)> = vec![
            (r#"{"page_size":0}"#.into(), "page_size"),
            (r#"{"page_size":1001}"#.into(), "page_size"),
            (r#"{"default_country":"ZZ"}"#.into(), "default_country"),
            (r#"{"default_country":"us"}"#.into(), "default_country"),
            (r#"{"country_aliases":{"USA":"XX"}}"#.into(), "country_aliases.USA"),
            (format!(r#"{{"browses":{{"invoices":"{long}"}}}}"#), "browses.invoices"),
            (r#"{"browses":{"invoices":""}}"#.into(), "browses.invoices"),
            (r#"{"approval_values":{"pending":"a\r\nb"}}"#.into(), "approval_values.pending"),
            (
                r#"{"write_paths":{"transaction_comments":"@evil.example/x"}}"#.into(),
                "write_paths.transaction_comments",
            ),
            (r#"{"high_value_threshold":"-1"}"#.into(), "high_value_threshold"),
            (
                format!(
                    r#"{{"roles":{{"ap_clerk":[{}]}}}}"#,
                    vec![r#"{"employee":"e"}"#; PROFILE_ENTRIES_MAX + 1].join(",")
                ),
                "roles.ap_clerk",
            ),
            (
                r#"{"roles":{"ap_clerk":[{"name":"A","phone":"+1","country":"a\u0007"}]}}"#.into(),
                "roles.ap_clerk[0].country",
            ),
        ];
        for (json, field) in cases {
            let p: MappingProfile = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
            let err = p.check().expect_err(&json);
            assert_eq!(err.field(), field, "{json}: {err}");
        }
    }

    #[test]
    fn an_unknown_key_is_refused_rather_than_ignored() {
        let err = serde_json::from_str::<MappingProfile>(r#"{"fields":{"po_totl":"x"}}"#).unwrap_err();
        assert!(err.to_string().contains("po_totl"), "{err}");
    }
}
