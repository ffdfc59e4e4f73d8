//! The life of one record's need for attention. A record that stops needing attention is
//! resolved, never forgotten; needing it again later (or for a different reason) is a new
//! episode of the same record. Pure: the store applies what this decides.

use super::attention::{Attention, Urgency};
use super::people::People;

/// The open episode of a record, as the store has it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenEpisode {
    pub episode: i64,
    pub reason_code: String,
    pub urgency: Urgency,
    pub people: People,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Nothing a person would notice changed.
    Unchanged,
    /// A new episode begins (the store numbers it).
    Open,
    /// Same problem, new figures, urgency or people.
    Update { urgency_changed: Option<(Urgency, Urgency)> },
    /// The problem is gone.
    Resolve,
    /// The problem changed kind: resolve the open episode and open the next.
    Replace,
    /// Still fine.
    None,
}

pub fn transition(open: Option<&OpenEpisode>, needed: Option<(&Attention, &People)>) -> Transition {
    match (open, needed) {
        (None, None) => Transition::None,
        (None, Some(_)) => Transition::Open,
        (Some(_), None) => Transition::Resolve,
        (Some(o), Some((a, _))) if o.reason_code != a.reason.code() => Transition::Replace,
        (Some(o), Some((a, people))) => {
            if o.urgency != a.urgency {
                Transition::Update {
                    urgency_changed: Some((o.urgency, a.urgency)),
                }
            } else if &o.people != people {
                Transition::Update { urgency_changed: None }
            } else {
                Transition::Unchanged
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::attention::Reason;
    use rust_decimal::Decimal;

    fn attention(reason: Reason, urgency: Urgency) -> Attention {
        Attention {
            reason,
            urgency,
            due_date: None,
        }
    }
    fn missing() -> Reason {
        Reason::MissingReceipt {
            po: "PO1".into(),
            invoiced: Decimal::TEN,
            received_value: Decimal::ZERO,
        }
    }
    fn price() -> Reason {
        Reason::PriceVariance {
            po: "PO1".into(),
            receiver: "R1".into(),
            line: 1,
            invoiced: Decimal::TEN,
            ordered: Decimal::ONE,
            variance_pct: Decimal::from(900),
        }
    }
    fn open(code: &str, urgency: Urgency) -> OpenEpisode {
        OpenEpisode {
            episode: 2,
            reason_code: code.into(),
            urgency,
            people: People::default(),
        }
    }

    #[test]
    fn transitions_table() {
        let none = People::default();
        let cases: Vec<(Option<OpenEpisode>, Option<Attention>, Transition)> = vec![
            (None, None, Transition::None),
            (None, Some(attention(missing(), Urgency::Low)), Transition::Open),
            (Some(open("missing_receipt", Urgency::Low)), None, Transition::Resolve),
            (
                Some(open("missing_receipt", Urgency::Low)),
                Some(attention(missing(), Urgency::Low)),
                Transition::Unchanged,
            ),
            (
                Some(open("missing_receipt", Urgency::Low)),
                Some(attention(missing(), Urgency::High)),
                Transition::Update {
                    urgency_changed: Some((Urgency::Low, Urgency::High)),
                },
            ),
            (
                Some(open("missing_receipt", Urgency::Low)),
                Some(attention(price(), Urgency::Low)),
                Transition::Replace,
            ),
        ];
        for (o, a, want) in cases {
            let got = transition(o.as_ref(), a.as_ref().map(|a| (a, &none)));
            assert_eq!(got, want, "open={o:?} needed={a:?}");
        }
    }

    #[test]
    fn a_change_of_people_is_an_update() {
        let mut people = People::default();
        people.unreachable.push(crate::core::people::Unreachable {
            role: crate::core::people::Role::Buyer,
            name: "B".into(),
            source: "employee B".into(),
            error: "x".into(),
        });
        let got = transition(
            Some(&open("missing_receipt", Urgency::Low)),
            Some((&attention(missing(), Urgency::Low), &people)),
        );
        assert_eq!(got, Transition::Update { urgency_changed: None });
    }
}
