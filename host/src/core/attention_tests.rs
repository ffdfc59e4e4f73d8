//! Tables of cases for the attention rules: the facts, today, and the decision.

use chrono::NaiveDate;
use rust_decimal::Decimal;

use super::attention::*;
use super::model::*;

fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}
fn n(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn invoice(amount: &str, due: &str) -> Invoice {
    Invoice {
        voucher: "SI-1".into(),
        reference: "INV-1".into(),
        supplier: "S-1".into(),
        invoice_date: d("2026-11-01"),
        due_date: d(due),
        po_number: "PO1".into(),
        reason_code: "AP-NOALLOC".into(),
        approved: false,
        payment_locked: false,
        logistic_matching: true,
        hold_amount: Decimal::ZERO,
        amount: n(amount),
        currency: "USD".into(),
        modified: d("2026-11-20"),
    }
}
fn po_line(line: u32, qty: &str, cost: &str) -> PoLine {
    PoLine {
        po_number: "PO1".into(),
        line,
        part: "P".into(),
        ordered: n(qty),
        unit_cost: n(cost),
        unit: "EA".into(),
    }
}
fn receipt(receiver: &str, line: u32, qty: &str, date: &str) -> Receipt {
    Receipt {
        receiver: receiver.into(),
        po_number: "PO1".into(),
        line,
        receipt_date: d(date),
        supplier: "S-1".into(),
        part: "P".into(),
        received: n(qty),
        unit_cost: n("10"),
        unit: "EA".into(),
        currency: "USD".into(),
        domain: "10USA".into(),
        ordered: None,
    }
}
fn matching(receiver: &str, line: u32, qty: &str, price: &str) -> MatchingLine {
    MatchingLine {
        voucher: "SI-1".into(),
        receiver: receiver.into(),
        line,
        quantity: n(qty),
        unit_price: n(price),
    }
}
fn tol(pct: &str, amount: &str) -> Tolerance {
    Tolerance {
        percent: n(pct),
        amount: n(amount),
        approval_required: true,
    }
}

#[test]
fn invoice_three_way_match_table() {
    let today = d("2026-11-27");
    let lines = vec![po_line(1, "100", "10"), po_line(2, "50", "4")];
    let both_received = vec![receipt("R1", 1, "100", "2026-11-20"), receipt("R1", 2, "50", "2026-11-20")];
    let t = tol("5", "50");
    type Case = (
        &'static str,
        Invoice,
        Vec<Receipt>,
        Vec<MatchingLine>,
        Option<(&'static str, Urgency)>,
    );
    let approved = Invoice {
        approved: true,
        ..invoice("1200", "2026-12-30")
    };
    let rmalloc = Invoice {
        reason_code: "AP-RMALLOC".into(),
        ..invoice("1200", "2026-12-30")
    };
    let no_matching = Invoice {
        logistic_matching: false,
        ..invoice("1200", "2026-12-30")
    };
    let cases: Vec<Case> = vec![
        (
            "no receipt at all, due in 3 days",
            invoice("1200", "2026-11-30"),
            vec![],
            vec![],
            Some(("missing_receipt", Urgency::Normal)),
        ),
        (
            "no receipt, overdue",
            invoice("1200", "2026-11-20"),
            vec![],
            vec![],
            Some(("missing_receipt", Urgency::Critical)),
        ),
        (
            "no receipt, due tomorrow",
            invoice("1200", "2026-11-28"),
            vec![],
            vec![],
            Some(("missing_receipt", Urgency::High)),
        ),
        (
            "no receipt, due in a month",
            invoice("1200", "2026-12-30"),
            vec![],
            vec![],
            Some(("missing_receipt", Urgency::Low)),
        ),
        ("approved invoices are cleared", approved, vec![], vec![], None),
        ("AP-RMALLOC is cleared", rmalloc, vec![], vec![], None),
        ("receiver matching off: no three-way match", no_matching, vec![], vec![], None),
        (
            "received, not matched yet, amounts agree",
            invoice("1200", "2026-12-30"),
            both_received.clone(),
            vec![],
            None,
        ),
        (
            "partly received, invoice for all",
            invoice("1200", "2026-12-30"),
            vec![receipt("R1", 1, "60", "2026-11-20")],
            vec![],
            Some(("missing_receipt", Urgency::Low)),
        ),
        (
            "received, within amount tolerance",
            invoice("1240", "2026-12-30"),
            both_received.clone(),
            vec![],
            None,
        ),
        (
            "matched exactly",
            invoice("1200", "2026-12-30"),
            both_received.clone(),
            vec![matching("R1", 1, "100", "10"), matching("R1", 2, "50", "4")],
            None,
        ),
        (
            "quantity invoiced beyond receipt",
            invoice("1300", "2026-12-30"),
            both_received.clone(),
            vec![matching("R1", 1, "110", "10")],
            Some(("quantity_variance", Urgency::Low)),
        ),
        (
            "quantity off by 1 % and 10 USD: within both tolerances",
            invoice("1210", "2026-12-30"),
            both_received.clone(),
            vec![matching("R1", 1, "101", "10")],
            None,
        ),
        (
            "price off by 3 % but 30 USD: within",
            invoice("1230", "2026-12-30"),
            both_received.clone(),
            vec![matching("R1", 1, "100", "10.30")],
            None,
        ),
        (
            "price off by 3 % but 60 USD: beyond the amount tolerance",
            invoice("1260", "2026-12-30"),
            vec![receipt("R1", 1, "200", "2026-11-20")],
            vec![matching("R1", 1, "200", "10.30")],
            Some(("price_variance", Urgency::Low)),
        ),
        (
            "price off by 20 %",
            invoice("1400", "2026-12-30"),
            both_received.clone(),
            vec![matching("R1", 2, "50", "4.80")],
            Some(("price_variance", Urgency::Low)),
        ),
        (
            "matched against a receiver QAD does not show yet",
            invoice("1200", "2026-12-30"),
            both_received.clone(),
            vec![matching("R9", 1, "100", "10")],
            Some(("missing_receipt", Urgency::Low)),
        ),
    ];
    for (name, inv, receipts, matchings, want) in cases {
        let facts = InvoiceFacts {
            invoice: &inv,
            po_lines: &lines,
            receipts: &receipts,
            matchings: &matchings,
            tolerance: &t,
        };
        let got = invoice_attention(facts, today).map(|a| (a.reason.code(), a.urgency));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn reasons_read_as_sentences() {
    let lines = vec![po_line(1, "100", "10")];
    let inv = invoice("1000", "2026-12-30");
    let t = tol("5", "50");
    let facts = InvoiceFacts {
        invoice: &inv,
        po_lines: &lines,
        receipts: &[],
        matchings: &[],
        tolerance: &t,
    };
    let a = invoice_attention(facts, d("2026-11-27")).unwrap();
    assert_eq!(a.reason.describe(), "no goods receipt posted for PO1 (invoiced 1000)");
    let r = vec![receipt("R1", 1, "100", "2026-11-20")];
    let m = vec![matching("R1", 1, "100", "12.50")];
    let facts = InvoiceFacts {
        receipts: &r,
        matchings: &m,
        ..facts
    };
    let a = invoice_attention(facts, d("2026-11-27")).unwrap();
    assert_eq!(
        a.reason.describe(),
        "price variance on receipt R1 line 1: invoiced 12.50, PO price 10 (25.00%)"
    );
}

#[test]
fn resolution_names_the_receipt_that_unblocked_the_invoice() {
    let lines = vec![po_line(1, "100", "10")];
    let inv = invoice("1000", "2026-12-30");
    let t = tol("5", "50");
    let r = vec![receipt("R7", 1, "100", "2026-11-27")];
    let facts = InvoiceFacts {
        invoice: &inv,
        po_lines: &lines,
        receipts: &r,
        matchings: &[],
        tolerance: &t,
    };
    assert_eq!(invoice_attention(facts, d("2026-11-27")), None);
    assert_eq!(invoice_resolution("missing_receipt", facts), "goods receipt R7 posted for PO1");
    let approved = Invoice {
        approved: true,
        reason_code: "AP-RMALLOC".into(),
        ..inv.clone()
    };
    let facts = InvoiceFacts {
        invoice: &approved,
        ..facts
    };
    assert_eq!(
        invoice_resolution("price_variance", facts),
        "invoice approved in QAD (reason code AP-RMALLOC)"
    );
}

#[test]
fn summary_reads_as_a_line() {
    let inv = invoice("1000", "2026-11-30");
    let t = tol("5", "50");
    let facts = InvoiceFacts {
        invoice: &inv,
        po_lines: &[],
        receipts: &[],
        matchings: &[],
        tolerance: &t,
    };
    let a = invoice_attention(facts, d("2026-11-27")).unwrap();
    assert_eq!(
        summary(
            RecordKind::SupplierInvoice,
            "SI-1",
            "Midwest Castings Inc",
            Some((inv.amount, "USD")),
            &a
        ),
        "invoice SI-1 from Midwest Castings Inc, 1000 USD: no goods receipt posted for PO1 (invoiced 1000); due 2026-11-30"
    );
}

#[test]
fn purchase_order_table() {
    let today = d("2026-11-27");
    let po = |approval, total: &str, due: &str| PurchaseOrder {
        number: "PO1".into(),
        supplier: "S-1".into(),
        order_date: d("2026-11-20"),
        due_date: d(due),
        status: "".into(),
        buyer: "B1".into(),
        contact: "".into(),
        currency: "USD".into(),
        remarks: "".into(),
        site: "10-100".into(),
        domain: "10USA".into(),
        total: n(total),
        approval,
        modified: d("2026-11-20"),
    };
    let high = n("50000");
    let cases = [
        (po(ApprovalStatus::Pending, "1000", "2026-12-30"), Some(Urgency::Low)),
        (po(ApprovalStatus::Pending, "1000", "2026-11-28"), Some(Urgency::High)),
        (po(ApprovalStatus::Pending, "75000", "2026-12-30"), Some(Urgency::High)),
        (po(ApprovalStatus::Pending, "75000", "2026-11-01"), Some(Urgency::Critical)),
        (po(ApprovalStatus::Approved, "75000", "2026-12-30"), None),
        (po(ApprovalStatus::Denied, "75000", "2026-12-30"), None),
        (po(ApprovalStatus::NotRequired, "75000", "2026-12-30"), None),
    ];
    for (p, want) in cases {
        assert_eq!(
            po_attention(&p, high, today).map(|a| a.urgency),
            want,
            "{:?} {} {}",
            p.approval,
            p.total,
            p.due_date
        );
    }
}

#[test]
fn receipt_table() {
    let line = po_line(1, "100", "10");
    let t = tol("2", "20");
    let cases: Vec<(&str, Receipt, Vec<Receipt>, Option<&str>)> = vec![
        ("complete in one receipt", receipt("R1", 1, "100", "2026-11-20"), vec![], None),
        ("short", receipt("R1", 1, "60", "2026-11-20"), vec![], Some("short_receipt")),
        (
            "over beyond tolerance",
            receipt("R1", 1, "110", "2026-11-20"),
            vec![],
            Some("over_receipt"),
        ),
        ("over within tolerance", receipt("R1", 1, "101", "2026-11-20"), vec![], None),
        (
            "second receipt completes the line",
            receipt("R2", 1, "40", "2026-11-22"),
            vec![receipt("R1", 1, "60", "2026-11-20")],
            None,
        ),
        (
            "the earlier short receipt no longer carries it",
            receipt("R1", 1, "60", "2026-11-20"),
            vec![receipt("R2", 1, "20", "2026-11-22")],
            None,
        ),
        (
            "latest of two still short",
            receipt("R2", 1, "20", "2026-11-22"),
            vec![receipt("R1", 1, "60", "2026-11-20"), receipt("R2", 1, "20", "2026-11-22")],
            Some("short_receipt"),
        ),
        (
            "other lines do not count",
            receipt("R1", 1, "60", "2026-11-20"),
            vec![receipt("R1", 2, "40", "2026-11-20")],
            Some("short_receipt"),
        ),
    ];
    for (name, r, others, want) in cases {
        let got = receipt_attention(&r, &others, Some(&line), &t).map(|a| a.reason.code());
        assert_eq!(got, want, "{name}");
    }
    // Without the PO line or an ordered quantity on the receipt, nothing can be judged.
    assert_eq!(receipt_attention(&receipt("R1", 1, "60", "2026-11-20"), &[], None, &t), None);
}
