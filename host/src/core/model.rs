//! Plain data for the QAD records the connector reasons about. No I/O, no clock.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The three kinds of QAD record that can need a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    GoodsReceipt,
    PurchaseOrder,
    SupplierInvoice,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::GoodsReceipt => "goods_receipt",
            RecordKind::PurchaseOrder => "purchase_order",
            RecordKind::SupplierInvoice => "supplier_invoice",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::GoodsReceipt, Self::PurchaseOrder, Self::SupplierInvoice]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
    /// How a person reads it: "invoice", "purchase order", "receipt".
    pub fn label(self) -> &'static str {
        match self {
            RecordKind::GoodsReceipt => "receipt",
            RecordKind::PurchaseOrder => "purchase order",
            RecordKind::SupplierInvoice => "invoice",
        }
    }
}

/// A supplier invoice as read from `CInvoice` rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoice {
    pub voucher: String,
    pub reference: String,
    pub supplier: String,
    pub invoice_date: NaiveDate,
    pub due_date: NaiveDate,
    pub po_number: String,
    pub reason_code: String,
    pub approved: bool,
    pub payment_locked: bool,
    pub logistic_matching: bool,
    pub hold_amount: Decimal,
    pub amount: Decimal,
    pub currency: String,
    pub modified: NaiveDate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    NotRequired,
    Pending,
    Approved,
    Denied,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PurchaseOrder {
    pub number: String,
    pub supplier: String,
    pub order_date: NaiveDate,
    pub due_date: NaiveDate,
    pub status: String,
    pub buyer: String,
    pub contact: String,
    pub currency: String,
    pub remarks: String,
    pub site: String,
    pub domain: String,
    pub total: Decimal,
    pub approval: ApprovalStatus,
    pub modified: NaiveDate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub receiver: String,
    pub po_number: String,
    pub line: u32,
    pub receipt_date: NaiveDate,
    pub supplier: String,
    pub part: String,
    pub received: Decimal,
    pub unit_cost: Decimal,
    pub unit: String,
    pub currency: String,
    pub domain: String,
    pub ordered: Option<Decimal>,
}

impl Receipt {
    /// One receipt row is one line of one receiver.
    pub fn key(&self) -> String {
        format!("{}/{}", self.receiver, self.line)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoLine {
    pub po_number: String,
    pub line: u32,
    pub part: String,
    pub ordered: Decimal,
    pub unit_cost: Decimal,
    pub unit: String,
}

/// One line of an invoice matched against a receipt line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchingLine {
    pub voucher: String,
    pub receiver: String,
    pub line: u32,
    pub quantity: Decimal,
    pub unit_price: Decimal,
}

/// PO control: the three-way-match tolerances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    /// Percent of the expected value a variance may reach.
    pub percent: Decimal,
    /// Amount (in the document currency) a variance may reach.
    pub amount: Decimal,
    pub approval_required: bool,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            percent: Decimal::ZERO,
            amount: Decimal::ZERO,
            approval_required: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Address {
    pub code: String,
    pub name: String,
    pub attention: String,
    pub phone: String,
    pub extension: String,
    pub attention2: String,
    pub phone2: String,
    pub country: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub name: String,
    pub telephone: String,
    pub mobile: String,
    pub email: String,
    pub primary: bool,
    pub supplier: String,
    pub function: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Employee {
    pub code: String,
    pub first_name: String,
    pub last_name: String,
    pub phone: String,
    pub title: String,
    pub country: String,
}

impl Employee {
    pub fn full_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name).trim().to_string()
    }
}
