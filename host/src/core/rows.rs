//! QAD browse rows → plain records. Nothing from QAD is trusted: every field is checked,
//! and a bad row becomes a `RowError` naming the record (when its key is readable) and the
//! field, so the rest of the page goes on.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::model::*;
use super::profile::MappingProfile;

pub type Row = Map<String, Value>;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind} {record}: {field} {problem}")]
pub struct RowError {
    pub kind: &'static str,
    /// The record's key when it could be read, else where the row stood.
    pub record: String,
    pub field: String,
    pub problem: String,
}

/// A content version of a row: a hash of its fields in a canonical order. Two reads of an
/// unchanged row give the same version, whatever order QAD listed the keys in.
pub fn content_version(row: &Row) -> String {
    let canonical: BTreeMap<&String, &Value> = row.iter().collect();
    let bytes = serde_json::to_vec(&canonical).expect("a JSON map always serialises");
    hex::encode(&Sha256::digest(&bytes)[..12])
}

struct Fields<'a> {
    row: &'a Row,
    kind: &'static str,
    record: String,
}

impl<'a> Fields<'a> {
    fn new(row: &'a Row, kind: &'static str, key_fields: &[&str], position: &str) -> Self {
        let parts: Vec<String> = key_fields
            .iter()
            .filter_map(|f| row.get(*f).and_then(scalar_text))
            .filter(|s| !s.is_empty())
            .collect();
        let record = if parts.len() == key_fields.len() {
            parts.join("/")
        } else {
            position.to_string()
        };
        Fields { row, kind, record }
    }

    fn err(&self, field: &str, problem: impl Into<String>) -> RowError {
        RowError {
            kind: self.kind,
            record: self.record.clone(),
            field: field.to_string(),
            problem: problem.into(),
        }
    }

    fn text(&self, field: &str) -> Result<String, RowError> {
        match self.row.get(field) {
            None | Some(Value::Null) => Err(self.err(field, "is missing")),
            Some(v) => scalar_text(v).ok_or_else(|| self.err(field, format!("is not text: {v}"))),
        }
    }

    fn required(&self, field: &str) -> Result<String, RowError> {
        let t = self.text(field)?;
        if t.trim().is_empty() {
            Err(self.err(field, "is empty"))
        } else {
            Ok(t.trim().to_string())
        }
    }

    fn optional(&self, field: &str) -> String {
        self.row
            .get(field)
            .and_then(scalar_text)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    fn date(&self, field: &str) -> Result<NaiveDate, RowError> {
        let t = self.required(field)?;
        NaiveDate::parse_from_str(&t, "%Y-%m-%d").map_err(|_| self.err(field, format!("{t:?} is not a date (YYYY-MM-DD)")))
    }

    fn decimal(&self, field: &str) -> Result<Decimal, RowError> {
        let t = self.required(field)?;
        Decimal::from_str(&t).map_err(|_| self.err(field, format!("{t:?} is not a decimal amount")))
    }

    fn optional_decimal(&self, field: &str) -> Result<Option<Decimal>, RowError> {
        match self.optional(field) {
            s if s.is_empty() => Ok(None),
            _ => self.decimal(field).map(Some),
        }
    }

    fn line(&self, field: &str) -> Result<u32, RowError> {
        let t = self.required(field)?;
        t.parse().map_err(|_| self.err(field, format!("{t:?} is not a line number")))
    }

    fn flag(&self, field: &str) -> Result<bool, RowError> {
        match self.row.get(field) {
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => match scalar_text(v).unwrap_or_default().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => Ok(true),
                "false" | "no" | "0" => Ok(false),
                _ => Err(self.err(field, format!("{v} is not true or false"))),
            },
            None => Err(self.err(field, "is missing")),
        }
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub fn invoice(row: &Row, p: &MappingProfile, position: &str) -> Result<Invoice, RowError> {
    let f = Fields::new(row, "supplier invoice", &["CInvoice.CInvoiceVoucher"], position);
    Ok(Invoice {
        voucher: f.required("CInvoice.CInvoiceVoucher")?,
        reference: f.optional("CInvoice.CInvoiceReference"),
        supplier: f.required("CInvoice.CreditorCode")?,
        invoice_date: f.date("CInvoice.CInvoiceDate")?,
        due_date: f.date("CInvoice.CInvoiceDueDate")?,
        po_number: f.optional("CInvoice.CInvoicePoNbr"),
        reason_code: f.optional("CInvoice.ReasonCode"),
        approved: f.flag("CInvoice.CInvoiceIsInvoiceApproved")?,
        payment_locked: f.flag("CInvoice.CInvoiceIsLockPayment")?,
        logistic_matching: f.flag("CInvoice.CInvoiceIsLogisticMatching")?,
        hold_amount: f.optional_decimal("CInvoice.CInvoiceHoldAmountTC")?.unwrap_or_default(),
        amount: f.decimal(&p.fields.invoice_amount)?,
        currency: f.required(&p.fields.invoice_currency)?,
        modified: f.date("CInvoice.LastModifiedDate")?,
    })
}

pub fn purchase_order(row: &Row, p: &MappingProfile, position: &str) -> Result<PurchaseOrder, RowError> {
    let f = Fields::new(row, "purchase order", &["po_mstr.po_nbr"], position);
    let approval_text = f.required(&p.fields.po_approval_status)?;
    let v = &p.approval_values;
    let approval = match approval_text.as_str() {
        s if s == v.pending => ApprovalStatus::Pending,
        s if s == v.approved => ApprovalStatus::Approved,
        s if s == v.denied => ApprovalStatus::Denied,
        s if s == v.not_required => ApprovalStatus::NotRequired,
        other => {
            return Err(f.err(&p.fields.po_approval_status, format!("{other:?} is not a known approval status")));
        }
    };
    Ok(PurchaseOrder {
        number: f.required("po_mstr.po_nbr")?,
        supplier: f.required("po_mstr.po_vend")?,
        order_date: f.date("po_mstr.po_ord_date")?,
        due_date: f.date("po_mstr.po_due_date")?,
        status: f.optional("po_mstr.po_stat"),
        buyer: f.optional("po_mstr.po_buyer"),
        contact: f.optional("po_mstr.po_contact"),
        currency: f.required("po_mstr.po_curr")?,
        remarks: f.optional("po_mstr.po_rmks"),
        site: f.optional("po_mstr.po_site"),
        domain: f.optional("po_mstr.po_domain"),
        total: f.decimal(&p.fields.po_total)?,
        approval,
        modified: f.date(&p.fields.po_mod_date)?,
    })
}

pub fn receipt(row: &Row, p: &MappingProfile, position: &str) -> Result<Receipt, RowError> {
    let f = Fields::new(row, "goods receipt", &["prh_hist.prh_receiver", "prh_hist.prh_line"], position);
    Ok(Receipt {
        receiver: f.required("prh_hist.prh_receiver")?,
        po_number: f.required("prh_hist.prh_nbr")?,
        line: f.line("prh_hist.prh_line")?,
        receipt_date: f.date("prh_hist.prh_rcp_date")?,
        supplier: f.required("prh_hist.prh_vend")?,
        part: f.optional("prh_hist.prh_part"),
        received: f.decimal("prh_hist.prh_rcvd")?,
        unit_cost: f.decimal("prh_hist.prh_pur_cost")?,
        unit: f.optional("prh_hist.prh_um"),
        currency: f.optional("prh_hist.prh_curr"),
        domain: f.optional("prh_hist.prh_domain"),
        ordered: f.optional_decimal(&p.fields.receipt_qty_ordered)?,
    })
}

pub fn po_line(row: &Row, position: &str) -> Result<PoLine, RowError> {
    let f = Fields::new(row, "PO line", &["pod_det.pod_nbr", "pod_det.pod_line"], position);
    Ok(PoLine {
        po_number: f.required("pod_det.pod_nbr")?,
        line: f.line("pod_det.pod_line")?,
        part: f.optional("pod_det.pod_part"),
        ordered: f.decimal("pod_det.pod_qty_ord")?,
        unit_cost: f.decimal("pod_det.pod_pur_cost")?,
        unit: f.optional("pod_det.pod_um"),
    })
}

pub fn matching_line(row: &Row, position: &str) -> Result<MatchingLine, RowError> {
    let f = Fields::new(
        row,
        "invoice matching line",
        &["APMatching.CInvoiceVoucher", "APMatching.prh_receiver"],
        position,
    );
    Ok(MatchingLine {
        voucher: f.required("APMatching.CInvoiceVoucher")?,
        receiver: f.required("APMatching.prh_receiver")?,
        line: f.line("APMatching.prh_line")?,
        quantity: f.decimal("APMatching.APMatchingLnMatchQty")?,
        unit_price: f.decimal("APMatching.APMatchingLnMatchUnitPrice")?,
    })
}

pub fn tolerance(row: &Row, position: &str) -> Result<Tolerance, RowError> {
    let f = Fields::new(row, "PO control", &[], position);
    Ok(Tolerance {
        percent: f.decimal("poc_ctrl.poc_tol_pct")?,
        amount: f.decimal("poc_ctrl.poc_tol_cst")?,
        approval_required: f.flag("poc_ctrl.poc_apv_req")?,
    })
}

pub fn address(row: &Row, p: &MappingProfile, position: &str) -> Result<Address, RowError> {
    let f = Fields::new(row, "supplier address", &["ad_mstr.ad_addr"], position);
    Ok(Address {
        code: f.required("ad_mstr.ad_addr")?,
        name: f.optional("ad_mstr.ad_name"),
        attention: f.optional("ad_mstr.ad_attn"),
        phone: f.optional("ad_mstr.ad_phone"),
        extension: f.optional("ad_mstr.ad_ext"),
        attention2: f.optional("ad_mstr.ad_attn2"),
        phone2: f.optional("ad_mstr.ad_phone2"),
        country: f.optional(&p.fields.address_country),
    })
}

pub fn contact(row: &Row, p: &MappingProfile, position: &str) -> Result<Contact, RowError> {
    let f = Fields::new(row, "supplier contact", &["Contact.ContactName"], position);
    Ok(Contact {
        name: f.required("Contact.ContactName")?,
        telephone: f.optional("Contact.ContactTelephone"),
        mobile: f.optional("Contact.ContactMobilePhone"),
        email: f.optional("Contact.ContactEmail"),
        primary: f.flag("Contact.ContactIsPrimary").unwrap_or(false),
        supplier: f.optional(&p.fields.contact_supplier),
        function: f.optional(&p.fields.contact_function),
    })
}

pub fn employee(row: &Row, p: &MappingProfile, position: &str) -> Result<Employee, RowError> {
    let g = &p.fields;
    let f = Fields::new(row, "employee", &[g.employee_code.as_str()], position);
    Ok(Employee {
        code: f.required(&g.employee_code)?,
        first_name: f.optional(&g.employee_first_name),
        last_name: f.optional(&g.employee_last_name),
        phone: f.optional(&g.employee_phone),
        title: f.optional(&g.employee_title),
        country: f.optional(&g.employee_country),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Row {
        v.as_object().unwrap().clone()
    }

    fn good_invoice() -> Value {
        json!({
            "CInvoice.CInvoiceVoucher": "SI-1001", "CInvoice.CInvoiceReference": "INV-77",
            "CInvoice.CreditorCode": "S-1001", "CInvoice.CInvoiceDate": "2026-11-01",
            "CInvoice.CInvoiceDueDate": "2026-12-01", "CInvoice.CInvoicePoNbr": "PO10042",
            "CInvoice.ReasonCode": "AP-NOALLOC", "CInvoice.CInvoiceIsInvoiceApproved": false,
            "CInvoice.CInvoiceIsLockPayment": false, "CInvoice.CInvoiceIsLogisticMatching": true,
            "CInvoice.CInvoiceHoldAmountTC": "0.00", "CInvoice.CInvoiceOriginalCreditTC": "12500.40",
            "CInvoice.CurrencyCode": "USD", "CInvoice.LastModifiedDate": "2026-11-20",
            "CInvoice.LastModifiedTime": 36000
        })
    }

    #[test]
    fn parses_a_well_formed_invoice() {
        let inv = invoice(&row(good_invoice()), &MappingProfile::default(), "row 1").unwrap();
        assert_eq!(inv.amount.to_string(), "12500.40");
        assert_eq!(inv.po_number, "PO10042");
    }

    #[test]
    fn malformed_rows_name_the_record_and_the_field() {
        let cases: &[(&str, Value, &str)] = &[
            (
                "CInvoice.CInvoiceDueDate",
                json!("2026-13-45"),
                "supplier invoice SI-1001: CInvoice.CInvoiceDueDate \"2026-13-45\" is not a date (YYYY-MM-DD)",
            ),
            (
                "CInvoice.CInvoiceOriginalCreditTC",
                json!("12,50.x"),
                "supplier invoice SI-1001: CInvoice.CInvoiceOriginalCreditTC \"12,50.x\" is not a decimal amount",
            ),
            (
                "CInvoice.CInvoiceIsInvoiceApproved",
                json!("maybe"),
                "supplier invoice SI-1001: CInvoice.CInvoiceIsInvoiceApproved \"maybe\" is not true or false",
            ),
            (
                "CInvoice.CreditorCode",
                Value::Null,
                "supplier invoice SI-1001: CInvoice.CreditorCode is missing",
            ),
            (
                "CInvoice.CInvoiceVoucher",
                json!(""),
                "supplier invoice page 2 row 7: CInvoice.CInvoiceVoucher is empty",
            ),
            (
                "CInvoice.CurrencyCode",
                json!({"nested": 1}),
                "supplier invoice SI-1001: CInvoice.CurrencyCode is not text: {\"nested\":1}",
            ),
        ];
        for (field, value, want) in cases {
            let mut r = row(good_invoice());
            r.insert(field.to_string(), value.clone());
            let err = invoice(&r, &MappingProfile::default(), "page 2 row 7").unwrap_err();
            assert_eq!(err.to_string(), *want);
        }
    }

    #[test]
    fn content_version_ignores_key_order_but_not_values() {
        let a = row(json!({"a": "1", "b": "2"}));
        let b = row(json!({"b": "2", "a": "1"}));
        let c = row(json!({"a": "1", "b": "3"}));
        assert_eq!(content_version(&a), content_version(&b));
        assert_ne!(content_version(&a), content_version(&c));
    }

    #[test]
    fn an_unknown_approval_status_is_a_row_error() {
        let r = row(json!({
            "po_mstr.po_nbr": "PO1", "po_mstr.po_vend": "S-1", "po_mstr.po_ord_date": "2026-11-01",
            "po_mstr.po_due_date": "2026-11-30", "po_mstr.po_curr": "USD", "po_mstr.po_total": "10",
            "po_mstr.po_approval_status": "Waiting", "po_mstr.po_mod_date": "2026-11-01"
        }));
        let err = purchase_order(&r, &MappingProfile::default(), "row 1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "purchase order PO1: po_mstr.po_approval_status \"Waiting\" is not a known approval status"
        );
    }
}
