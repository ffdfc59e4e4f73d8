//! The example manufacturer of the product page, as QAD rows: a contract manufacturer with
//! one plant and about three hundred staff, tens of suppliers in several countries (phone
//! numbers in national form, a few of them broken), a few hundred POs, receipts and
//! invoices. Deterministic for a given seed and "today"; every date is relative to today.

use chrono::{Duration, NaiveDate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::table::{Row, Table};

pub const DOMAIN: &str = "10USA";
pub const ENTITY: &str = "10USACO";
pub const SITE: &str = "10-100";

pub const BROWSE_PO: &str = "urn:browse:bebrowse:com.qad.erp.purchasing.purchaseOrders";
pub const BROWSE_RECEIPTS: &str = "urn:browse:mfg:prh001";
pub const BROWSE_PO_LINES: &str = "urn:browse:mfg:pod001";
pub const BROWSE_PO_CONTROL: &str = "urn:browse:mfg:poc001";
pub const BROWSE_MATCHINGS: &str = "urn:browse:bebrowse:com.qad.erp.financials.supplierInvoiceMatchings";
pub const BROWSE_INVOICES: &str = "urn:browse:bebrowse:com.qad.erp.financials.supplierInvoices";
pub const BROWSE_ADDRESSES: &str = "urn:browse:mfg:ad001";
pub const BROWSE_CONTACTS: &str = "urn:browse:bebrowse:com.qad.erp.base.contacts";
pub const BROWSE_EMPLOYEES: &str = "urn:browse:mfg:emp001";

/// Approval is required at or above this PO total (poc_apv_req on).
pub const APPROVAL_THRESHOLD: i64 = 25_000;

/// All browses of one QAD tenant.
pub struct Dataset {
    pub tables: Vec<(&'static str, Table)>,
}

impl Dataset {
    pub fn table(&self, browse: &str) -> Option<&Table> {
        self.tables.iter().find(|(b, _)| *b == browse).map(|(_, t)| t)
    }
    pub fn table_mut(&mut self, browse: &str) -> Option<&mut Table> {
        self.tables.iter_mut().find(|(b, _)| *b == browse).map(|(_, t)| t)
    }
}

pub fn empty() -> Dataset {
    Dataset {
        tables: vec![
            (
                BROWSE_PO,
                Table::new(
                    &[
                        "po_mstr.po_nbr",
                        "po_mstr.po_vend",
                        "po_mstr.po_ord_date",
                        "po_mstr.po_due_date",
                        "po_mstr.po_stat",
                        "po_mstr.po_buyer",
                        "po_mstr.po_contact",
                        "po_mstr.po_curr",
                        "po_mstr.po_rmks",
                        "po_mstr.po_site",
                        "po_mstr.po_domain",
                        "po_mstr.po_total",
                        "po_mstr.po_approval_status",
                        "po_mstr.po_mod_date",
                    ],
                    &["po_mstr.po_nbr"],
                    &["po_mstr.po_nbr", "po_mstr.po_mod_date"],
                ),
            ),
            (
                BROWSE_RECEIPTS,
                Table::new(
                    &[
                        "prh_hist.prh_receiver",
                        "prh_hist.prh_nbr",
                        "prh_hist.prh_line",
                        "prh_hist.prh_rcp_date",
                        "prh_hist.prh_vend",
                        "prh_hist.prh_part",
                        "prh_hist.prh_rcvd",
                        "prh_hist.prh_pur_cost",
                        "prh_hist.prh_um",
                        "prh_hist.prh_curr",
                        "prh_hist.prh_domain",
                        "prh_hist.prh_qty_ord",
                    ],
                    &["prh_hist.prh_receiver", "prh_hist.prh_line"],
                    &["prh_hist.prh_nbr", "prh_hist.prh_rcp_date", "prh_hist.prh_receiver"],
                ),
            ),
            (
                BROWSE_PO_LINES,
                Table::new(
                    &[
                        "pod_det.pod_nbr",
                        "pod_det.pod_line",
                        "pod_det.pod_part",
                        "pod_det.pod_qty_ord",
                        "pod_det.pod_pur_cost",
                        "pod_det.pod_um",
                    ],
                    &["pod_det.pod_nbr", "pod_det.pod_line"],
                    &["pod_det.pod_nbr"],
                ),
            ),
            (
                BROWSE_PO_CONTROL,
                Table::new(&["poc_ctrl.poc_tol_pct", "poc_ctrl.poc_tol_cst", "poc_ctrl.poc_apv_req"], &[], &[]),
            ),
            (
                BROWSE_MATCHINGS,
                Table::new(
                    &[
                        "APMatching.CInvoiceVoucher",
                        "APMatching.prh_receiver",
                        "APMatching.prh_line",
                        "APMatching.APMatchingLnMatchQty",
                        "APMatching.APMatchingLnMatchUnitPrice",
                    ],
                    &["APMatching.CInvoiceVoucher", "APMatching.prh_receiver", "APMatching.prh_line"],
                    &["APMatching.CInvoiceVoucher"],
                ),
            ),
            (
                BROWSE_INVOICES,
                Table::new(
                    &[
                        "CInvoice.CInvoiceVoucher",
                        "CInvoice.CInvoiceReference",
                        "CInvoice.CreditorCode",
                        "CInvoice.CInvoiceDate",
                        "CInvoice.CInvoiceDueDate",
                        "CInvoice.CInvoicePoNbr",
                        "CInvoice.ReasonCode",
                        "CInvoice.CInvoiceIsInvoiceApproved",
                        "CInvoice.CInvoiceIsLockPayment",
                        "CInvoice.CInvoiceIsLogisticMatching",
                        "CInvoice.CInvoiceHoldAmountTC",
                        "CInvoice.LastModifiedDate",
                        "CInvoice.LastModifiedTime",
                        "CInvoice.CInvoiceOriginalCreditTC",
                        "CInvoice.CurrencyCode",
                        "CInvoice.matchStatus",
                    ],
                    &["CInvoice.CInvoiceVoucher"],
                    &["CInvoice.CInvoiceVoucher", "CInvoice.LastModifiedDate", "CInvoice.CInvoicePoNbr"],
                ),
            ),
            (
                BROWSE_ADDRESSES,
                Table::new(
                    &[
                        "ad_mstr.ad_addr",
                        "ad_mstr.ad_name",
                        "ad_mstr.ad_attn",
                        "ad_mstr.ad_phone",
                        "ad_mstr.ad_ext",
                        "ad_mstr.ad_attn2",
                        "ad_mstr.ad_phone2",
                        "ad_mstr.ad_fax",
                        "ad_mstr.ad_ctry",
                    ],
                    &["ad_mstr.ad_addr"],
                    &["ad_mstr.ad_addr"],
                ),
            ),
            (
                BROWSE_CONTACTS,
                Table::new(
                    &[
                        "Contact.ContactName",
                        "Contact.ContactTelephone",
                        "Contact.ContactMobilePhone",
                        "Contact.ContactEmail",
                        "Contact.ContactIsPrimary",
                        "Contact.BusinessRelationCode",
                        "Contact.ContactFunction",
                    ],
                    &["Contact.BusinessRelationCode", "Contact.ContactName"],
                    &["Contact.BusinessRelationCode"],
                ),
            ),
            (
                BROWSE_EMPLOYEES,
                Table::new(
                    &[
                        "emp_mstr.emp_addr",
                        "emp_mstr.emp_fname",
                        "emp_mstr.emp_lname",
                        "emp_mstr.emp_phone",
                        "emp_mstr.emp_title",
                        "emp_mstr.emp_ctry",
                    ],
                    &["emp_mstr.emp_addr"],
                    &["emp_mstr.emp_addr"],
                ),
            ),
        ],
    }
}

fn row(v: Value) -> Row {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("rows are objects"),
    }
}

fn money(d: Decimal) -> String {
    format!("{:.2}", d.round_dp(2))
}

struct Supplier {
    code: String,
    name: &'static str,
    country: &'static str,
    phone: String,
    contact: &'static str,
    mobile: String,
    currency: &'static str,
}

/// Suppliers in the US, Germany, Mexico, the UK and Canada, numbers written the way each
/// country writes them. Two carry a number that cannot be normalised, as real data does.
fn suppliers() -> Vec<Supplier> {
    let raw: &[(&str, &str, &str, &str, &str, &str)] = &[
        (
            "Midwest Castings Inc",
            "USA",
            "(312) 555-0101",
            "Dana Whitfield",
            "(312) 555-0151",
            "USD",
        ),
        (
            "Great Lakes Fasteners",
            "USA",
            "(312) 555-0102",
            "Tom Okafor",
            "312.555.0152",
            "USD",
        ),
        ("Prairie Steel Supply", "USA", "(630) 555-0103", "Rita Gomez", "630-555-0153", "USD"),
        (
            "Badger Plastics LLC",
            "USA",
            "(414) 555-0104",
            "Sam Lindqvist",
            "(414) 555-0154",
            "USD",
        ),
        ("Hoosier Bearings", "USA", "(317) 555-0105", "Kim Patel", "(317) 555-0155", "USD"),
        (
            "Lakeside Packaging",
            "USA",
            "(773) 555-0106",
            "Joe Brennan",
            "(773) 555-0156",
            "USD",
        ),
        (
            "Ohio Valley Springs",
            "USA",
            "(614) 555-0107",
            "Ana Kowalski",
            "(614) 555-0157",
            "USD",
        ),
        (
            "Twin Cities Electronics",
            "USA",
            "(612) 555-0108",
            "Lee Nguyen",
            "(612) 555-0158",
            "USD",
        ),
        ("Cornbelt Coatings", "USA", "(515) 555-0109", "Pat Mueller", "(515) 55-01", "USD"),
        (
            "Gateway Hydraulics",
            "USA",
            "(314) 555-0110",
            "Chris Adeyemi",
            "(314) 555-0160",
            "USD",
        ),
        ("Motor City Gaskets", "USA", "(313) 555-0111", "Val Romero", "(313) 555-0161", "USD"),
        (
            "Keystone Wire & Cable",
            "USA",
            "(412) 555-0112",
            "Max Schultz",
            "(412) 555-0162",
            "USD",
        ),
        (
            "Schwaben Präzision GmbH",
            "DEU",
            "0711 1234501",
            "Jürgen Bauer",
            "0151 23456701",
            "EUR",
        ),
        (
            "Rheinland Antriebe AG",
            "DEU",
            "0221 9876502",
            "Petra Vogel",
            "0160 98765402",
            "EUR",
        ),
        ("Bayern Werkzeug GmbH", "DEU", "089 1234503", "Stefan Huber", "0171 2345603", "EUR"),
        (
            "Hanse Dichtungen KG",
            "DEU",
            "040 1234504",
            "Anke Jensen",
            "0049 152 34567804",
            "EUR",
        ),
        ("Monterrey Fundición SA", "MEX", "81 1234 5601", "Luis Garza", "81 1234 5651", "USD"),
        ("Bajío Componentes", "MEX", "442 123 4502", "María Torres", "442 123 4552", "USD"),
        (
            "Ciudad Plásticos SA de CV",
            "MEX",
            "55 1234 5603",
            "Jorge Ramírez",
            "55 1234 5653",
            "USD",
        ),
        (
            "Midlands Alloys Ltd",
            "GBR",
            "0121 496 0001",
            "Oliver Hughes",
            "07911 123401",
            "GBP",
        ),
        (
            "Thames Electronics Ltd",
            "GBR",
            "020 7946 0002",
            "Priya Shah",
            "07911 123402",
            "GBP",
        ),
        ("Sheffield Tooling Ltd", "GBR", "0114 496 0003", "Harry Clarke", "n/a", "GBP"),
        (
            "Ontario Polymers Inc",
            "CAN",
            "(416) 555-0113",
            "Emma Tremblay",
            "(416) 555-0163",
            "USD",
        ),
        ("Quebec Metal Works", "CAN", "(514) 555-0114", "Luc Gagnon", "(514) 555-0164", "USD"),
        (
            "Windy City Machining",
            "USA",
            "(312) 555-0115",
            "Grace Kim",
            "(312) 555-0165",
            "USD",
        ),
        (
            "Rockford Precision",
            "USA",
            "(815) 555-0116",
            "Omar Haddad",
            "(815) 555-0166",
            "USD",
        ),
    ];
    raw.iter()
        .enumerate()
        .map(|(i, (name, country, phone, contact, mobile, currency))| Supplier {
            code: format!("S-{}", 1001 + i),
            name,
            country,
            phone: phone.to_string(),
            contact,
            mobile: mobile.to_string(),
            currency,
        })
        .collect()
}

/// Buyers, AP clerks and the plant manager, as QAD employees.
pub const EMPLOYEES: &[(&str, &str, &str, &str, &str)] = &[
    ("B-01", "Maria", "Santos", "(312) 555-0120", "Buyer"),
    ("B-02", "Kevin", "O'Neill", "(312) 555-0121", "Buyer"),
    ("B-03", "Aisha", "Rahman", "(312) 555-0122", "Senior Buyer"),
    ("B-04", "Derek", "Olsen", "(312) 555-0123", "Buyer"),
    ("B-05", "Lena", "Fischer", "(312) 555-0124", "Buyer"),
    ("AP-01", "Grace", "Liu", "(312) 555-0130", "AP Clerk"),
    ("AP-02", "Marcus", "Bell", "(312) 555-0131", "AP Clerk"),
    ("PM-01", "Robert", "Hale", "(312) 555-0140", "Plant Manager"),
];

const PARTS: &[(&str, &str, i64)] = &[
    ("10-4410", "EA", 1250),
    ("10-4420", "EA", 3875),
    ("20-1105", "KG", 462),
    ("20-1130", "KG", 918),
    ("30-7001", "EA", 15400),
    ("30-7002", "EA", 22750),
    ("40-0050", "M", 210),
    ("50-9900", "EA", 2_600_000),
];

/// How the seed's story is laid out, so tests can state what must need attention.
#[derive(Debug, Default, Clone)]
pub struct Story {
    pub missing_receipt: Vec<String>,
    pub quantity_variance: Vec<String>,
    pub price_variance: Vec<String>,
    pub pending_approval: Vec<String>,
    pub short_receipts: Vec<String>,
    pub malformed_invoices: Vec<String>,
    /// The PO of each invoice in the story.
    pub invoice_po: std::collections::BTreeMap<String, String>,
}

/// The example manufacturer's data as of `today`.
pub fn example(today: NaiveDate, seed: u64) -> (Dataset, Story) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ds = empty();
    let mut story = Story::default();
    let d = |days: i64| (today + Duration::days(days)).to_string();

    ds.table_mut(BROWSE_PO_CONTROL).unwrap().upsert(row(json!({
        "poc_ctrl.poc_tol_pct": "5.00", "poc_ctrl.poc_tol_cst": "250.00", "poc_ctrl.poc_apv_req": true
    })));
    for (code, first, last, phone, title) in EMPLOYEES {
        ds.table_mut(BROWSE_EMPLOYEES).unwrap().upsert(row(json!({
            "emp_mstr.emp_addr": code, "emp_mstr.emp_fname": first, "emp_mstr.emp_lname": last,
            "emp_mstr.emp_phone": phone, "emp_mstr.emp_title": title, "emp_mstr.emp_ctry": "USA"
        })));
    }
    let sups = suppliers();
    for s in &sups {
        ds.table_mut(BROWSE_ADDRESSES).unwrap().upsert(row(json!({
            "ad_mstr.ad_addr": s.code, "ad_mstr.ad_name": s.name, "ad_mstr.ad_attn": s.contact, "ad_mstr.ad_phone": s.phone,
            "ad_mstr.ad_ext": "", "ad_mstr.ad_attn2": "", "ad_mstr.ad_phone2": "", "ad_mstr.ad_fax": "", "ad_mstr.ad_ctry": s.country
        })));
        ds.table_mut(BROWSE_CONTACTS).unwrap().upsert(row(json!({
            "Contact.ContactName": s.contact, "Contact.ContactTelephone": s.phone, "Contact.ContactMobilePhone": s.mobile,
            "Contact.ContactEmail": format!("{}@example.com", s.contact.split(' ').next().unwrap_or("x").to_lowercase()),
            "Contact.ContactIsPrimary": true, "Contact.BusinessRelationCode": s.code, "Contact.ContactFunction": "Sales"
        })));
    }

    // 320 POs over the last 120 days. The story's stuck records are chosen by position so
    // the counts are stable: every 11th recent PO is waiting for approval, every 37th
    // has no receipt yet, every 41st is received short, every 29th invoice is invoiced
    // beyond its receipt, every 31st at a price beyond tolerance.
    let mut receiver_no = 50_000;
    let mut voucher_no = 70_000;
    for n in 0..320i64 {
        let po = format!("PO{}", 10_001 + n);
        let sup = &sups[rng.gen_range(0..sups.len())];
        let age = 120 - n * 120 / 320; // oldest first
        let order_date = today - Duration::days(age);
        let due = order_date + Duration::days(rng.gen_range(10..45));
        let buyer = EMPLOYEES[rng.gen_range(0..5)].0;
        let nlines = rng.gen_range(1..=3);
        let mut total = Decimal::ZERO;
        let mut lines = Vec::new();
        for line in 1..=nlines {
            let (part, um, cents) = PARTS[rng.gen_range(0..PARTS.len() - 1)];
            let qty = Decimal::from(rng.gen_range(1..=40) * 10);
            let cost = Decimal::new(cents, 2);
            total += qty * cost;
            lines.push((line, part, um, qty, cost));
        }
        let pending = n % 11 == 5 && age < 30;
        if pending {
            // Make it an approval-sized order; some are high-value.
            let (part, um, cents) = PARTS[PARTS.len() - 1];
            let qty = Decimal::from(if n % 2 == 0 { 1 } else { 3 });
            let cost = Decimal::new(cents, 2);
            total += qty * cost;
            lines.push((nlines + 1, part, um, qty, cost));
        }
        let approval = if total >= Decimal::from(APPROVAL_THRESHOLD) {
            if pending { "Pending" } else { "Approved" }
        } else {
            "NotRequired"
        };
        if pending {
            story.pending_approval.push(po.clone());
        }
        ds.table_mut(BROWSE_PO).unwrap().upsert(row(json!({
            "po_mstr.po_nbr": po, "po_mstr.po_vend": sup.code, "po_mstr.po_ord_date": order_date.to_string(),
            "po_mstr.po_due_date": due.to_string(), "po_mstr.po_stat": "", "po_mstr.po_buyer": buyer,
            "po_mstr.po_contact": sup.contact, "po_mstr.po_curr": sup.currency, "po_mstr.po_rmks": "",
            "po_mstr.po_site": SITE, "po_mstr.po_domain": DOMAIN, "po_mstr.po_total": money(total),
            "po_mstr.po_approval_status": approval, "po_mstr.po_mod_date": order_date.to_string()
        })));
        for (line, part, um, qty, cost) in &lines {
            ds.table_mut(BROWSE_PO_LINES).unwrap().upsert(row(json!({
                "pod_det.pod_nbr": po, "pod_det.pod_line": line, "pod_det.pod_part": part,
                "pod_det.pod_qty_ord": qty.to_string(), "pod_det.pod_pur_cost": money(*cost), "pod_det.pod_um": um
            })));
        }
        if pending || age < 4 {
            continue; // not delivered yet, not invoiced yet
        }
        let missing_receipt = n % 37 == 3;
        let short = n % 41 == 7 && !missing_receipt;
        let receipt_date = order_date + Duration::days(rng.gen_range(3..10).min(age - 1));
        let receiver = format!("RCV{receiver_no}");
        receiver_no += 1;
        let mut received: Vec<(i64, Decimal, Decimal)> = Vec::new();
        if !missing_receipt {
            for (i, (line, part, um, qty, cost)) in lines.iter().enumerate() {
                let got = if short && i == 0 {
                    (*qty * Decimal::new(6, 1)).round()
                } else {
                    *qty
                };
                ds.table_mut(BROWSE_RECEIPTS).unwrap().upsert(row(json!({
                    "prh_hist.prh_receiver": receiver, "prh_hist.prh_nbr": po, "prh_hist.prh_line": line,
                    "prh_hist.prh_rcp_date": receipt_date.to_string(), "prh_hist.prh_vend": sup.code, "prh_hist.prh_part": part,
                    "prh_hist.prh_rcvd": got.to_string(), "prh_hist.prh_pur_cost": money(*cost), "prh_hist.prh_um": um,
                    "prh_hist.prh_curr": sup.currency, "prh_hist.prh_domain": DOMAIN, "prh_hist.prh_qty_ord": qty.to_string()
                })));
                received.push((*line, got, *cost));
            }
            if short {
                story.short_receipts.push(format!("{receiver}/1"));
            }
        }
        // The supplier invoices most delivered POs; short receipts are invoiced for what arrived.
        let voucher = format!("SI-{voucher_no}");
        voucher_no += 1;
        let inv_date = receipt_date.max(order_date + Duration::days(2));
        let due_date = inv_date + Duration::days(30);
        let modified = (inv_date + Duration::days(1)).min(today);
        let qty_var = !missing_receipt && !short && n % 29 == 11;
        let price_var = !missing_receipt && !short && !qty_var && n % 31 == 13;
        let stuck = missing_receipt || qty_var || price_var;
        let mut amount = Decimal::ZERO;
        if stuck {
            story.invoice_po.insert(voucher.clone(), po.clone());
        }
        if missing_receipt {
            amount = lines.iter().map(|(_, _, _, q, c)| *q * *c).sum();
            story.missing_receipt.push(voucher.clone());
        } else {
            for (i, (line, got, cost)) in received.iter().enumerate() {
                let (q, p) = match (i, qty_var, price_var) {
                    (0, true, _) => (*got + Decimal::from(20), *cost),
                    (0, _, true) => (*got, (*cost * Decimal::new(118, 2)).round_dp(2)),
                    _ => (*got, *cost),
                };
                amount += q * p;
                ds.table_mut(BROWSE_MATCHINGS).unwrap().upsert(row(json!({
                    "APMatching.CInvoiceVoucher": voucher, "APMatching.prh_receiver": receiver, "APMatching.prh_line": line,
                    "APMatching.APMatchingLnMatchQty": q.to_string(), "APMatching.APMatchingLnMatchUnitPrice": money(p)
                })));
            }
            if qty_var {
                story.quantity_variance.push(voucher.clone());
            }
            if price_var {
                story.price_variance.push(voucher.clone());
            }
        }
        let (reason, approved, locked) = if stuck {
            ("AP-NOALLOC", false, false)
        } else {
            ("AP-RMALLOC", true, false)
        };
        let status = if missing_receipt {
            "UNMATCHED"
        } else if qty_var {
            "QTY_VAR"
        } else if price_var {
            "PRICE_VAR"
        } else {
            "MATCHED"
        };
        ds.table_mut(BROWSE_INVOICES).unwrap().upsert(row(json!({
            "CInvoice.CInvoiceVoucher": voucher, "CInvoice.CInvoiceReference": format!("INV-{}", 900 + n),
            "CInvoice.CreditorCode": sup.code, "CInvoice.CInvoiceDate": inv_date.to_string(),
            "CInvoice.CInvoiceDueDate": due_date.to_string(), "CInvoice.CInvoicePoNbr": po, "CInvoice.ReasonCode": reason,
            "CInvoice.CInvoiceIsInvoiceApproved": approved, "CInvoice.CInvoiceIsLockPayment": locked,
            "CInvoice.CInvoiceIsLogisticMatching": true, "CInvoice.CInvoiceHoldAmountTC": "0.00",
            "CInvoice.LastModifiedDate": modified.to_string(), "CInvoice.LastModifiedTime": rng.gen_range(25_000..64_000),
            "CInvoice.CInvoiceOriginalCreditTC": money(amount), "CInvoice.CurrencyCode": sup.currency,
            "CInvoice.matchStatus": status
        })));
    }
    // Real data has bad rows: one invoice with an impossible due date, one with a garbled amount.
    for (voucher, field, value) in [
        ("SI-79901", "CInvoice.CInvoiceDueDate", "2026-02-30"),
        ("SI-79902", "CInvoice.CInvoiceOriginalCreditTC", "12,50.x"),
    ] {
        let mut r = row(json!({
            "CInvoice.CInvoiceVoucher": voucher, "CInvoice.CInvoiceReference": "INV-BAD", "CInvoice.CreditorCode": "S-1001",
            "CInvoice.CInvoiceDate": d(-10), "CInvoice.CInvoiceDueDate": d(20), "CInvoice.CInvoicePoNbr": "PO10001",
            "CInvoice.ReasonCode": "AP-INITIAL", "CInvoice.CInvoiceIsInvoiceApproved": false, "CInvoice.CInvoiceIsLockPayment": true,
            "CInvoice.CInvoiceIsLogisticMatching": true, "CInvoice.CInvoiceHoldAmountTC": "0.00", "CInvoice.LastModifiedDate": d(-1),
            "CInvoice.LastModifiedTime": 40000, "CInvoice.CInvoiceOriginalCreditTC": "100.00", "CInvoice.CurrencyCode": "USD",
            "CInvoice.matchStatus": "UNMATCHED"
        }));
        r.insert(field.to_string(), Value::String(value.to_string()));
        ds.table_mut(BROWSE_INVOICES).unwrap().upsert(r);
        story.malformed_invoices.push(voucher.to_string());
    }
    (ds, story)
}

/// A large tenant for the poll benchmark: `total` invoices, of which `changed` were modified
/// today and the rest long ago, all cleared, against a handful of POs.
pub fn bulk(today: NaiveDate, total: usize, changed: usize) -> Dataset {
    let (mut ds, _) = example(today - Duration::days(400), 7);
    let old = (today - Duration::days(400)).to_string();
    let invoices = ds.table_mut(BROWSE_INVOICES).unwrap();
    *invoices = empty().tables.into_iter().find(|(b, _)| *b == BROWSE_INVOICES).unwrap().1;
    for i in 0..total {
        let modified = if i >= total - changed { today.to_string() } else { old.clone() };
        invoices.upsert(row(json!({
            "CInvoice.CInvoiceVoucher": format!("SI-{}", 1_000_000 + i), "CInvoice.CInvoiceReference": format!("INV-{i}"),
            "CInvoice.CreditorCode": "S-1001", "CInvoice.CInvoiceDate": old, "CInvoice.CInvoiceDueDate": old,
            "CInvoice.CInvoicePoNbr": format!("PO{}", 10_001 + i % 300), "CInvoice.ReasonCode": "AP-RMALLOC",
            "CInvoice.CInvoiceIsInvoiceApproved": true, "CInvoice.CInvoiceIsLockPayment": false,
            "CInvoice.CInvoiceIsLogisticMatching": true, "CInvoice.CInvoiceHoldAmountTC": "0.00",
            "CInvoice.LastModifiedDate": modified, "CInvoice.LastModifiedTime": 3600,
            "CInvoice.CInvoiceOriginalCreditTC": "1000.00", "CInvoice.CurrencyCode": "USD", "CInvoice.matchStatus": "MATCHED"
        })));
    }
    ds
}
