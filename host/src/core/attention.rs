//! What needs a person, and how urgently. Pure: every function takes the facts and
//! `today` (the tenant's date) and returns a decision; nothing here reads a clock or does I/O.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::model::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Urgency {
    Low,
    Normal,
    High,
    Critical,
}

impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
            Urgency::Critical => "critical",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Low, Self::Normal, Self::High, Self::Critical]
            .into_iter()
            .find(|u| u.as_str() == s)
    }
}

/// Why a record needs a person. The variant is the episode's identity: a change of variant
/// is a new problem (a new episode), a change of figures within one is not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Reason {
    /// The invoice's PO has no (or not enough) goods received to match against.
    MissingReceipt {
        po: String,
        invoiced: Decimal,
        received_value: Decimal,
    },
    QuantityVariance {
        po: String,
        receiver: String,
        line: u32,
        invoiced: Decimal,
        received: Decimal,
        variance_pct: Decimal,
    },
    PriceVariance {
        po: String,
        receiver: String,
        line: u32,
        invoiced: Decimal,
        ordered: Decimal,
        variance_pct: Decimal,
    },
    PendingApproval {
        total: Decimal,
        currency: String,
    },
    ShortReceipt {
        po: String,
        line: u32,
        ordered: Decimal,
        received: Decimal,
    },
    OverReceipt {
        po: String,
        line: u32,
        ordered: Decimal,
        received: Decimal,
    },
}

impl Reason {
    pub fn code(&self) -> &'static str {
        match self {
            Reason::MissingReceipt { .. } => "missing_receipt",
            Reason::QuantityVariance { .. } => "quantity_variance",
            Reason::PriceVariance { .. } => "price_variance",
            Reason::PendingApproval { .. } => "pending_approval",
            Reason::ShortReceipt { .. } => "short_receipt",
            Reason::OverReceipt { .. } => "over_receipt",
        }
    }

    /// One line a person understands.
    pub fn describe(&self) -> String {
        match self {
            Reason::MissingReceipt {
                po,
                invoiced,
                received_value,
            } if received_value.is_zero() => {
                format!("no goods receipt posted for {po} (invoiced {invoiced})")
            }
            Reason::MissingReceipt {
                po,
                invoiced,
                received_value,
            } => {
                format!("goods received for {po} worth {received_value} do not cover the {invoiced} invoiced")
            }
            Reason::QuantityVariance {
                receiver,
                line,
                invoiced,
                received,
                variance_pct,
                ..
            } => {
                format!("quantity variance on receipt {receiver} line {line}: invoiced {invoiced}, received {received} ({variance_pct}%)")
            }
            Reason::PriceVariance {
                receiver,
                line,
                invoiced,
                ordered,
                variance_pct,
                ..
            } => {
                format!("price variance on receipt {receiver} line {line}: invoiced {invoiced}, PO price {ordered} ({variance_pct}%)")
            }
            Reason::PendingApproval { .. } => "waiting for approval".to_string(),
            Reason::ShortReceipt {
                po,
                line,
                ordered,
                received,
            } => format!("short receipt on {po} line {line}: {received} of {ordered} received"),
            Reason::OverReceipt {
                po,
                line,
                ordered,
                received,
            } => {
                format!("over receipt on {po} line {line}: {received} received, {ordered} ordered")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    pub reason: Reason,
    pub urgency: Urgency,
    pub due_date: Option<NaiveDate>,
}

/// Overdue is critical; due within two days is high; within a week normal; later low.
pub fn urgency_from_due(due: NaiveDate, today: NaiveDate) -> Urgency {
    match (due - today).num_days() {
        d if d < 0 => Urgency::Critical,
        0..=2 => Urgency::High,
        3..=7 => Urgency::Normal,
        _ => Urgency::Low,
    }
}

/// A variance is beyond tolerance when it exceeds the percent *or* the amount tolerance:
/// within tolerance means within both.
fn beyond_tolerance(actual: Decimal, expected: Decimal, value_at_stake: Decimal, tol: &Tolerance) -> Option<Decimal> {
    let diff = (actual - expected).abs();
    if diff.is_zero() {
        return None;
    }
    let pct = if expected.is_zero() {
        Decimal::from(100)
    } else {
        (diff / expected.abs() * Decimal::from(100)).round_dp(2)
    };
    (pct > tol.percent || value_at_stake > tol.amount).then_some(pct)
}

/// Everything the three-way match of one invoice depends on, read fresh from QAD.
#[derive(Debug, Clone, Copy)]
pub struct InvoiceFacts<'a> {
    pub invoice: &'a Invoice,
    pub po_lines: &'a [PoLine],
    pub receipts: &'a [Receipt],
    pub matchings: &'a [MatchingLine],
    pub tolerance: &'a Tolerance,
}

/// An invoice needs a person when it is held by the three-way match: not approved, receiver
/// matching on, and its receipts missing or off beyond tolerance. Works from receipts, PO
/// lines and matching lines alone (no derived match status is needed).
pub fn invoice_attention(f: InvoiceFacts<'_>, today: NaiveDate) -> Option<Attention> {
    let inv = f.invoice;
    if invoice_cleared(inv) {
        return None;
    }
    let reason = match_reason(f)?;
    Some(Attention {
        reason,
        urgency: urgency_from_due(inv.due_date, today),
        due_date: Some(inv.due_date),
    })
}

fn match_reason(f: InvoiceFacts<'_>) -> Option<Reason> {
    let inv = f.invoice;
    let po = inv.po_number.clone();
    let po_price = |line: u32| f.po_lines.iter().find(|l| l.line == line).map(|l| l.unit_cost);
    let received_value: Decimal = f
        .receipts
        .iter()
        .map(|r| r.received * po_price(r.line).unwrap_or(r.unit_cost))
        .sum();
    let missing = || Reason::MissingReceipt {
        po: po.clone(),
        invoiced: inv.amount,
        received_value,
    };
    if f.receipts.is_empty() {
        return Some(missing());
    }
    if f.matchings.is_empty() {
        // Not matched line by line yet: compare what was invoiced with what was received.
        return beyond_tolerance(inv.amount, received_value, (inv.amount - received_value).abs(), f.tolerance)
            .filter(|_| inv.amount > received_value)
            .map(|_| missing());
    }
    for m in f.matchings {
        let Some(receipt) = f.receipts.iter().find(|r| r.receiver == m.receiver && r.line == m.line) else {
            return Some(missing());
        };
        let ordered_price = po_price(m.line).unwrap_or(receipt.unit_cost);
        if let Some(pct) = beyond_tolerance(
            m.quantity,
            receipt.received,
            (m.quantity - receipt.received).abs() * ordered_price,
            f.tolerance,
        ) {
            return Some(Reason::QuantityVariance {
                po,
                receiver: m.receiver.clone(),
                line: m.line,
                invoiced: m.quantity,
                received: receipt.received,
                variance_pct: pct,
            });
        }
        if let Some(pct) = beyond_tolerance(
            m.unit_price,
            ordered_price,
            (m.unit_price - ordered_price).abs() * m.quantity,
            f.tolerance,
        ) {
            return Some(Reason::PriceVariance {
                po,
                receiver: m.receiver.clone(),
                line: m.line,
                invoiced: m.unit_price,
                ordered: ordered_price,
                variance_pct: pct,
            });
        }
    }
    None
}

/// A PO needs a person while its approval is pending. High-value POs are at least high urgency.
pub fn po_attention(po: &PurchaseOrder, high_value: Decimal, today: NaiveDate) -> Option<Attention> {
    if po.approval != ApprovalStatus::Pending {
        return None;
    }
    let mut urgency = urgency_from_due(po.due_date, today);
    if po.total >= high_value {
        urgency = urgency.max(Urgency::High);
    }
    Some(Attention {
        reason: Reason::PendingApproval {
            total: po.total,
            currency: po.currency.clone(),
        },
        urgency,
        due_date: Some(po.due_date),
    })
}

/// A receipt needs a person when its PO line, counting every receipt of that line, was
/// received short or over beyond tolerance. Only the latest receipt of the line carries
/// it, so a later receipt that completes the line resolves the earlier one.
pub fn receipt_attention(receipt: &Receipt, line_receipts: &[Receipt], po_line: Option<&PoLine>, tol: &Tolerance) -> Option<Attention> {
    let ordered = po_line.map(|l| l.ordered).or(receipt.ordered)?;
    let same_line = |r: &&Receipt| r.po_number == receipt.po_number && r.line == receipt.line;
    let latest = line_receipts
        .iter()
        .filter(same_line)
        .chain(std::iter::once(receipt))
        .max_by(|a, b| (a.receipt_date, &a.receiver).cmp(&(b.receipt_date, &b.receiver)))?;
    if latest.receiver != receipt.receiver {
        return None;
    }
    let mut seen = std::collections::BTreeSet::new();
    let received: Decimal = line_receipts
        .iter()
        .filter(same_line)
        .chain(std::iter::once(receipt))
        .filter(|r| seen.insert(r.receiver.clone()))
        .map(|r| r.received)
        .sum();
    let price = po_line.map(|l| l.unit_cost).unwrap_or(receipt.unit_cost);
    beyond_tolerance(received, ordered, (received - ordered).abs() * price, tol)?;
    let (po, line) = (receipt.po_number.clone(), receipt.line);
    let reason = if received < ordered {
        Reason::ShortReceipt {
            po,
            line,
            ordered,
            received,
        }
    } else {
        Reason::OverReceipt {
            po,
            line,
            ordered,
            received,
        }
    };
    Some(Attention {
        reason,
        urgency: Urgency::Normal,
        due_date: None,
    })
}

/// Cleared by its own fields: no receipt or PO lookup is needed to know it is fine.
pub fn invoice_cleared(inv: &Invoice) -> bool {
    inv.approved || inv.reason_code == "AP-RMALLOC" || !inv.logistic_matching || inv.po_number.is_empty()
}

/// Why an open invoice episode ended, for the audit trail.
pub fn invoice_resolution(previous_code: &str, f: InvoiceFacts<'_>) -> String {
    let inv = f.invoice;
    if inv.approved || inv.reason_code == "AP-RMALLOC" {
        return format!("invoice approved in QAD (reason code {})", inv.reason_code);
    }
    if !inv.logistic_matching {
        return "receiver matching switched off for the invoice".to_string();
    }
    match previous_code {
        "missing_receipt" if !f.receipts.is_empty() => {
            let mut receivers: Vec<&str> = f.receipts.iter().map(|r| r.receiver.as_str()).collect();
            receivers.dedup();
            format!("goods receipt {} posted for {}", receivers.join(", "), inv.po_number)
        }
        _ => "three-way match now within tolerance".to_string(),
    }
}

/// The one line a person reads about a record needing attention.
pub fn summary(kind: RecordKind, key: &str, supplier: &str, amount: Option<(Decimal, &str)>, a: &Attention) -> String {
    let mut s = format!("{} {key}", kind.label());
    if !supplier.is_empty() {
        s.push_str(&format!(" from {supplier}"));
    }
    if let Some((amount, currency)) = amount {
        s.push_str(&format!(", {amount} {currency}"));
    }
    s.push_str(&format!(": {}", a.reason.describe()));
    if let Some(due) = a.due_date {
        s.push_str(&format!("; due {due}"));
    }
    s
}
