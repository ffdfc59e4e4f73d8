//! The per-tenant mapping profile: every [GUESS] of `qad-api.md` lives here, with the spec's
//! values as defaults, so a customer whose QAD differs changes configuration, not code.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

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

    #[test]
    fn an_unknown_key_is_refused_rather_than_ignored() {
        let err = serde_json::from_str::<MappingProfile>(r#"{"fields":{"po_totl":"x"}}"#).unwrap_err();
        assert!(err.to_string().contains("po_totl"), "{err}");
    }
}
