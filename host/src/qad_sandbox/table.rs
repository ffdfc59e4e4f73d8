//! One browse's rows, with indexes on the fields clients filter by, so the sandbox's own
//! cost follows the rows it returns, not the table's size.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use serde_json::{Map, Value};

pub type Row = Map<String, Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub field: String,
    pub op: Op,
    pub value: String,
}

impl Filter {
    /// `<field>,<op>,<value>,literal` as QAD takes it; the value may itself hold commas.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let bad = || format!("filter {text:?} is not <field>,<op>,<value>,literal");
        let (field, rest) = text.split_once(',').ok_or_else(bad)?;
        let (op, rest) = rest.split_once(',').ok_or_else(bad)?;
        let value = rest.strip_suffix(",literal").ok_or_else(bad)?;
        let op = Op::parse(op).ok_or_else(|| format!("filter operator {op:?} is not one of eq, ne, gt, ge, lt, le"))?;
        Ok(Filter {
            field: field.to_string(),
            op,
            value: value.to_string(),
        })
    }
}

pub fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Compare as numbers when both sides are numbers, else as text (dates are ISO, so text works).
fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.cmp(b),
    }
}

fn matches(row: &Row, f: &Filter) -> bool {
    let Some(v) = row.get(&f.field).and_then(text_of) else {
        return false;
    };
    let ord = compare(&v, &f.value);
    match f.op {
        Op::Eq => ord.is_eq(),
        Op::Ne => !ord.is_eq(),
        Op::Gt => ord.is_gt(),
        Op::Ge => ord.is_ge(),
        Op::Lt => ord.is_lt(),
        Op::Le => ord.is_le(),
    }
}

#[derive(Debug, Default)]
pub struct Table {
    /// The fields every row of this browse carries (a query naming another field is refused).
    pub fields: Vec<String>,
    key: Vec<String>,
    rows: Vec<Row>,
    by_key: HashMap<String, usize>,
    indexes: HashMap<String, BTreeMap<String, Vec<usize>>>,
}

impl Table {
    pub fn new(fields: &[&str], key: &[&str], indexed: &[&str]) -> Table {
        Table {
            fields: fields.iter().map(|s| s.to_string()).collect(),
            key: key.iter().map(|s| s.to_string()).collect(),
            indexes: indexed.iter().map(|f| (f.to_string(), BTreeMap::new())).collect(),
            ..Table::default()
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn key_of(&self, row: &Row) -> String {
        self.key
            .iter()
            .map(|k| row.get(k).and_then(text_of).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\u{1f}")
    }

    /// Insert, or replace the row with the same key.
    pub fn upsert(&mut self, row: Row) -> usize {
        let key = self.key_of(&row);
        match self.by_key.get(&key).copied() {
            Some(i) => {
                self.unindex(i);
                self.rows[i] = row;
                self.index(i);
                i
            }
            None => {
                let i = self.rows.len();
                self.rows.push(row);
                self.by_key.insert(key, i);
                self.index(i);
                i
            }
        }
    }

    pub fn find(&self, key: &[&str]) -> Option<&Row> {
        self.by_key.get(&key.join("\u{1f}")).map(|i| &self.rows[*i])
    }

    pub fn rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter()
    }

    pub fn row(&self, i: usize) -> &Row {
        &self.rows[i]
    }

    fn index(&mut self, i: usize) {
        for (field, idx) in self.indexes.iter_mut() {
            if let Some(v) = self.rows[i].get(field).and_then(text_of) {
                idx.entry(v).or_default().push(i);
            }
        }
    }

    fn unindex(&mut self, i: usize) {
        for (field, idx) in self.indexes.iter_mut() {
            if let Some(v) = self.rows[i].get(field).and_then(text_of)
                && let Some(list) = idx.get_mut(&v)
            {
                list.retain(|j| *j != i);
            }
        }
    }

    /// Row positions matching every filter, in table order.
    pub fn query(&self, filters: &[Filter]) -> Result<Vec<usize>, String> {
        for f in filters {
            if !self.fields.contains(&f.field) {
                return Err(format!("Unknown field {} in filter", f.field));
            }
        }
        // Start from an index when one covers a filter (dates and codes are ISO text, so a
        // text range is right for them); check every filter on the candidates.
        let indexed = filters
            .iter()
            .find(|f| self.indexes.contains_key(&f.field) && f.op != Op::Ne && f.value.parse::<f64>().is_err());
        let mut out: Vec<usize> = match indexed {
            Some(f) => {
                let idx = &self.indexes[&f.field];
                let v = f.value.clone();
                let range: Box<dyn Iterator<Item = (&String, &Vec<usize>)>> = match f.op {
                    Op::Eq => Box::new(idx.range(v.clone()..=v)),
                    Op::Ge => Box::new(idx.range(v..)),
                    Op::Gt => Box::new(idx.range((Bound::Excluded(v), Bound::Unbounded))),
                    Op::Le => Box::new(idx.range(..=v)),
                    Op::Lt => Box::new(idx.range(..v)),
                    Op::Ne => unreachable!("not taken from an index"),
                };
                let mut ids: Vec<usize> = range.flat_map(|(_, ids)| ids.iter().copied()).collect();
                ids.sort_unstable();
                ids.retain(|i| filters.iter().all(|f| matches(&self.rows[*i], f)));
                ids
            }
            None => (0..self.rows.len())
                .filter(|i| filters.iter().all(|f| matches(&self.rows[*i], f)))
                .collect(),
        };
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_parse_with_commas_in_values() {
        let f = Filter::parse("po_mstr.po_rmks,eq,rush, call first,literal").unwrap();
        assert_eq!(f.value, "rush, call first");
        assert!(Filter::parse("po_mstr.po_nbr,eq,PO1").is_err());
        assert!(Filter::parse("po_mstr.po_nbr,like,PO1,literal").is_err());
    }

    #[test]
    fn indexed_and_scanned_queries_agree() {
        let mut t = Table::new(&["k", "d", "n"], &["k"], &["d"]);
        for i in 0..50 {
            let d = format!("2026-11-{:02}", 1 + i % 28);
            t.upsert(json!({"k": format!("K{i}"), "d": d, "n": i}).as_object().unwrap().clone());
        }
        let ge = Filter::parse("d,ge,2026-11-20,literal").unwrap();
        let n_ge = Filter::parse("n,ge,10,literal").unwrap();
        let via_index = t.query(&[ge.clone(), n_ge.clone()]).unwrap();
        let scanned: Vec<usize> = (0..50).filter(|i| matches(t.row(*i), &ge) && matches(t.row(*i), &n_ge)).collect();
        assert_eq!(via_index, scanned);
        assert!(!via_index.is_empty());
        // replacing a row moves it in the index
        t.upsert(json!({"k": "K0", "d": "2026-12-31", "n": 0}).as_object().unwrap().clone());
        assert_eq!(t.query(&[Filter::parse("d,eq,2026-12-31,literal").unwrap()]).unwrap(), vec![0]);
        assert!(t.query(&[Filter::parse("zz,eq,1,literal").unwrap()]).is_err());
    }
}
