//! One poll cycle of one tenant. The data of a QAD record flows one way:
//! QAD rows → `core::rows` (parse) → content version check → facts read fresh from QAD →
//! `core::attention` (decide) → `core::episode` (transition) → `Store::apply` (one
//! transaction per record) → an `Event` for whoever listens.
//!
//! Within a cycle: receipts first, then purchase orders, then invoices, then every open
//! episode not seen in this cycle is re-checked (a back-dated receipt escapes the receipt
//! cursor; an invoice's row does not change when its receipt posts).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};
use thiserror::Error;
use tokio::sync::broadcast;

use crate::clock::Clock;
use crate::core::attention::{self, Attention, InvoiceFacts};
use crate::core::episode::{self, OpenEpisode, Transition};
use crate::core::model::*;
use crate::core::people::{self, People, Person, Role, Unreachable};
use crate::core::profile::{MappingProfile, PersonRef};
use crate::core::routing::{AlertInput, PluginContext, Routed};
use crate::core::rows::{self, Row, RowError};
use crate::core::schedule::{Schedule, ScheduleError};
use crate::plugin::{DEFAULT_PLUGIN, LoadedPlugin, PluginFault, PluginRuntime, PluginSettings};
use crate::qad::{Ceiling, Filter, QadClient, QadConfig, QadError, RetryPolicy};
use crate::secrets::{Keyring, Origin, OriginError};
use crate::store::{Applied, EpisodeChange, NewAudit, NewEpisode, NewJob, OpenRecord, PollTotals, RecordChange, Store, StoreError, Tenant};

pub const SECRET_QAD_USER: &str = "qad.username";
pub const SECRET_QAD_PASSWORD: &str = "qad.password";

#[derive(Debug, Error)]
pub enum PollError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Qad(#[from] QadError),
    #[error("tenant {0} has no QAD {1} set for {2} (set for another origin, or never: Tenants.SetQadCredentials)")]
    MissingCredential(String, &'static str, Origin),
    /// The QAD base URL is no origin credentials may be sent to (plain http:// off loopback
    /// without the tenant's allow_plain_http, or no http(s) URL at all).
    #[error("tenant {0}: {1}")]
    Origin(String, OriginError),
    #[error("tenant {0}: {1}")]
    Schedule(String, ScheduleError),
    /// Ended where it was: its tenant was deleted.
    #[error("cancelled: {0}")]
    Cancelled(&'static str),
}

/// What happened, for the demo's printed lines and other listeners.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    NeedsAttention {
        tenant: String,
        kind: RecordKind,
        key: String,
        episode: i64,
        summary: String,
        urgency: attention::Urgency,
        people: People,
        routing: Routing,
    },
    Updated {
        tenant: String,
        kind: RecordKind,
        key: String,
        summary: String,
        urgency: attention::Urgency,
    },
    Resolved {
        tenant: String,
        kind: RecordKind,
        key: String,
        episode: i64,
        cause: String,
    },
    RowError {
        tenant: String,
        error: String,
    },
    /// A send job ended an attempt: `event` is its audit event (sent, send_failed, throttled…).
    Delivery {
        tenant: String,
        record_kind: String,
        record_key: String,
        event: String,
        detail: Value,
    },
    PollFinished {
        tenant: String,
        poll_id: i64,
        totals: PollTotals,
        error: Option<String>,
    },
}

/// What the tenant's plugin decided for a newly opened episode.
#[derive(Debug, Clone, PartialEq)]
pub enum Routing {
    Routed {
        plugin: String,
        routed: Vec<Routed>,
    },
    /// The plugin faulted; with the tenant's fallback on, the default plugin's decision.
    Fault {
        plugin: String,
        fault: PluginFault,
        fallback: Option<Vec<Routed>>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PollReport {
    pub poll_id: i64,
    pub totals: PollTotals,
    pub error: Option<String>,
    /// QAD requests and rows this cycle cost.
    pub qad_requests: u64,
    pub qad_rows: u64,
}

#[derive(Clone)]
pub struct Poller {
    pub store: Store,
    pub keys: Arc<Keyring>,
    pub http: reqwest::Client,
    pub clock: Arc<dyn Clock>,
    pub events: broadcast::Sender<Event>,
    pub retry: RetryPolicy,
    pub plugins: Arc<PluginRuntime>,
    /// The most one poll reads of QAD (`ML_CONNECTOR_POLL_MAX_PAGES`, `…_MAX_ROWS`).
    pub ceiling: Ceiling,
}

impl Poller {
    pub fn new(store: Store, keys: Arc<Keyring>, http: reqwest::Client, clock: Arc<dyn Clock>, plugins: Arc<PluginRuntime>) -> Self {
        Poller {
            store,
            keys,
            http,
            clock,
            events: broadcast::channel(4096).0,
            retry: RetryPolicy::default(),
            plugins,
            ceiling: Ceiling::default(),
        }
    }

    /// The tenant's plugin (its active version, else the default) and settings.
    pub(crate) async fn router(&self, tenant: &Tenant) -> Result<Router, PollError> {
        let settings: PluginSettings =
            serde_json::from_str(&self.store.plugin_settings(&tenant.id).await?).map_err(|e| StoreError::Corrupt {
                tenant: tenant.id.clone(),
                what: "plugin settings",
                problem: e.to_string(),
            })?;
        let default = self.plugins.load(DEFAULT_PLUGIN).await.expect("the embedded default plugin loads");
        let (label, plugin) = match self.store.active_plugin(&tenant.id).await? {
            Some((version, sha)) => {
                let label = format!("v{version} ({})", &sha[..12.min(sha.len())]);
                // The bytes are read from the store only the first time this host meets them.
                let plugin = match self.plugins.cached(&sha) {
                    Some(p) => Ok(p),
                    None => {
                        let wasm = self.store.plugin_wasm(&tenant.id, version).await?.unwrap_or_default();
                        self.plugins.load(&wasm).await
                    }
                };
                (label, plugin)
            }
            None => ("default".to_string(), Ok(default.clone())),
        };
        Ok(Router {
            plugin,
            label,
            settings,
            default,
        })
    }

    /// Poll one tenant once. A QAD failure ends the cycle with the cursors of the streams
    /// already finished advanced and the rest untouched, recorded in the poll history.
    pub async fn poll(&self, tenant_id: &str, requested_by: &str) -> Result<PollReport, PollError> {
        self.poll_until(tenant_id, requested_by, std::future::pending()).await
    }

    /// [`Poller::poll`], ended where it is when `cancel` resolves (with why), and recorded
    /// as failed with that reason.
    pub async fn poll_until(
        &self,
        tenant_id: &str,
        requested_by: &str,
        cancel: impl std::future::Future<Output = &'static str>,
    ) -> Result<PollReport, PollError> {
        let tenant = self.store.tenant(tenant_id).await?;
        let schedule = Schedule::parse(&tenant.schedule).map_err(|e| PollError::Schedule(tenant.id.clone(), e))?;
        let client = qad_client(&self.store, &self.keys, &self.http, self.retry.clone(), &tenant)
            .await?
            .with_ceiling(self.ceiling);
        let started = self.clock.now();
        self.store.abandon_running_polls(&tenant.id, started).await?;
        let poll_id = self.store.start_poll(&tenant.id, requested_by, started).await?;
        let today = started.with_timezone(&schedule.time_zone()).date_naive();
        let router = self.router(&tenant).await?;
        let mut cycle = Cycle {
            p: self,
            client: &client,
            tenant: &tenant,
            tz: schedule.time_zone(),
            today,
            router,
            totals: PollTotals::default(),
            caches: Caches::default(),
            seen: HashSet::new(),
            pending: Vec::new(),
        };
        let outcome = {
            use tracing::Instrument;
            let span = tracing::info_span!("poll", tenant = %tenant.id, poll_id);
            tokio::select! {
                r = cycle.run().instrument(span) => r,
                why = cancel => Err(PollError::Cancelled(why)),
            }
        };
        let error = outcome.as_ref().err().map(|e| e.to_string());
        let totals = cycle.totals;
        let finished = self.clock.now();
        self.store.finish_poll(poll_id, totals, error.as_deref(), finished).await?;
        let seconds = (finished - started).to_std().map(|d| d.as_secs_f64()).unwrap_or(0.0);
        crate::metrics::poll_finished(&tenant.id, error.is_none(), seconds, totals.rows_read, totals.row_errors);
        let _ = self.events.send(Event::PollFinished {
            tenant: tenant.id.clone(),
            poll_id,
            totals,
            error: error.clone(),
        });
        if let Err(e) = outcome {
            tracing::warn!(tenant = %tenant.id, poll_id, error = %e, "poll failed");
        }
        Ok(PollReport {
            poll_id,
            totals,
            error,
            qad_requests: client.counters.requests.load(Ordering::Relaxed),
            qad_rows: client.counters.rows.load(Ordering::Relaxed),
        })
    }
}

/// A client for the tenant's QAD, with its sealed credentials opened.
pub async fn qad_client(
    store: &Store,
    keys: &Keyring,
    http: &reqwest::Client,
    retry: RetryPolicy,
    tenant: &Tenant,
) -> Result<QadClient, PollError> {
    let origin = Origin::of(&tenant.qad_base_url).map_err(|e| PollError::Origin(tenant.id.clone(), e))?;
    let secret = |field| store.secret(keys, &tenant.id, field, &origin);
    let (user, password) = match (secret(SECRET_QAD_USER).await, secret(SECRET_QAD_PASSWORD).await) {
        (Ok(user), Ok(password)) => (user, password),
        (Err(StoreError::Transport(e)), _) | (_, Err(StoreError::Transport(e))) => return Err(PollError::Origin(tenant.id.clone(), e)),
        (Err(e), _) | (_, Err(e)) => return Err(e.into()),
    };
    let missing = |what| PollError::MissingCredential(tenant.id.clone(), what, origin.clone());
    let user = user.ok_or_else(|| missing("user name"))?;
    let password = password.ok_or_else(|| missing("password"))?;
    Ok(QadClient::new(
        http.clone(),
        QadConfig {
            base_url: tenant.qad_base_url.clone(),
            workspace: tenant.workspace(),
            user: user.expose().to_string(),
            password,
            page_size: tenant.profile.page_size,
            retry,
        },
    ))
}

/// Lookups cached for one cycle only: QAD is re-read every cycle.
#[derive(Default)]
struct Caches {
    tolerance: Option<Tolerance>,
    pos: HashMap<String, Option<PurchaseOrder>>,
    po_lines: HashMap<String, Vec<PoLine>>,
    receipts: HashMap<String, Vec<Receipt>>,
    matchings: HashMap<String, Vec<MatchingLine>>,
    addresses: HashMap<String, Option<Address>>,
    contacts: HashMap<String, Vec<Contact>>,
    employees: HashMap<String, Option<Employee>>,
}

pub(crate) struct Router {
    pub(crate) plugin: Result<Arc<LoadedPlugin>, PluginFault>,
    pub(crate) label: String,
    pub(crate) settings: PluginSettings,
    pub(crate) default: Arc<LoadedPlugin>,
}

/// A fresh unguessable reference for an episode's alerts: 6 characters, no look-alikes, at
/// least one digit (`core::intake::reference_from`).
fn new_reference() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    crate::core::intake::reference_from(|n| rng.gen_range(0..n))
}

struct Cycle<'a> {
    p: &'a Poller,
    client: &'a QadClient,
    tenant: &'a Tenant,
    tz: chrono_tz::Tz,
    today: NaiveDate,
    router: Router,
    totals: PollTotals,
    caches: Caches,
    seen: HashSet<(RecordKind, String)>,
    /// Decided records waiting for the commit they share (see [`APPLY_BATCH`]).
    pending: Vec<Pending>,
}

/// Records decided in a row whose changes commit together: one transaction for many records
/// (group commit). Each record is still applied whole or not at all; a poll that fails
/// before a batch commits leaves those records unprocessed, re-read by the next poll, as the
/// cursor moves only after its stream's last batch.
pub const APPLY_BATCH: usize = 64;

/// A record's change waiting for its batch's commit, and what to announce once committed.
struct Pending {
    change: RecordChange,
    routing: Option<Routing>,
}

/// A parsed record ready for a decision.
enum Parsed {
    Receipt(Receipt),
    Po(PurchaseOrder),
    Invoice(Invoice),
}

impl Parsed {
    fn key(&self) -> String {
        match self {
            Parsed::Receipt(r) => r.key(),
            Parsed::Po(p) => p.number.clone(),
            Parsed::Invoice(i) => i.voucher.clone(),
        }
    }
}

/// One stream a poll reads, in the order it reads them.
pub(crate) struct Stream {
    pub(crate) kind: RecordKind,
    pub(crate) name: &'static str,
    pub(crate) browse: String,
    pub(crate) date_field: String,
}

/// The streams a poll reads: receipts first, then purchase orders, then invoices (what
/// `TestConnection` browses one row of, too).
pub(crate) fn streams(p: &MappingProfile) -> [Stream; 3] {
    [
        Stream {
            kind: RecordKind::GoodsReceipt,
            name: "receipts",
            browse: p.browses.receipts.clone(),
            date_field: "prh_hist.prh_rcp_date".into(),
        },
        Stream {
            kind: RecordKind::PurchaseOrder,
            name: "purchase_orders",
            browse: p.browses.purchase_orders.clone(),
            date_field: p.fields.po_mod_date.clone(),
        },
        Stream {
            kind: RecordKind::SupplierInvoice,
            name: "invoices",
            browse: p.browses.invoices.clone(),
            date_field: "CInvoice.LastModifiedDate".into(),
        },
    ]
}

impl<'a> Cycle<'a> {
    fn profile(&self) -> &MappingProfile {
        &self.tenant.profile
    }

    async fn run(&mut self) -> Result<(), PollError> {
        let streams = streams(self.profile());
        let mut open: HashMap<(RecordKind, String), OpenRecord> = self
            .p
            .store
            .open_records(&self.tenant.id)
            .await?
            .into_iter()
            .map(|o| ((o.kind, o.record_key.clone()), o))
            .collect();
        for s in &streams {
            self.stream(s, &mut open).await?;
        }
        // Whatever is still open and was not in this cycle's changed rows is re-checked.
        let rest: Vec<OpenRecord> = open
            .into_values()
            .filter(|o| !self.seen.contains(&(o.kind, o.record_key.clone())))
            .collect();
        for o in rest {
            self.recheck(o).await?;
        }
        self.commit_pending().await
    }

    async fn stream(&mut self, s: &Stream, open: &mut HashMap<(RecordKind, String), OpenRecord>) -> Result<(), PollError> {
        let cursor = self.p.store.cursor(&self.tenant.id, s.name).await?;
        // Day granularity: re-read the last day seen, inclusive; versions drop what is unchanged.
        let filters: Vec<Filter> = cursor.iter().map(|c| Filter::Ge(s.date_field.clone(), c.clone())).collect();
        let rows = self.client.browse(&s.browse, &filters).await?;
        self.totals.rows_read += rows.len() as i64;
        let mut max_date: Option<NaiveDate> = None;
        let mut parsed = Vec::new();
        let mut row_errors = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            if let Some(d) = row
                .get(&s.date_field)
                .and_then(Value::as_str)
                .and_then(|d| d.parse::<NaiveDate>().ok())
            {
                max_date = max_date.max(Some(d));
            }
            let position = format!("row {} of {}", i + 1, s.name);
            match self.parse(s.kind, row, &position) {
                Ok(rec) => parsed.push((rec, row)),
                Err(e) => row_errors.push((e, rows::content_version(row))),
            }
        }
        self.record_row_errors(row_errors).await?;
        let keys: Vec<String> = parsed.iter().map(|(r, _)| r.key()).collect();
        let versions = self.p.store.versions(&self.tenant.id, s.kind, &keys).await?;
        for (rec, row) in parsed {
            let key = rec.key();
            let version = rows::content_version(row);
            if versions.get(&key) == Some(&version) {
                continue; // unchanged since it was last processed
            }
            self.totals.rows_changed += 1;
            self.seen.insert((s.kind, key.clone()));
            let current = open.remove(&(s.kind, key.clone())).map(|o| o.open);
            self.decide(rec, current, Some((version, Value::Object(row.clone())))).await?;
        }
        // The cursor moves only past rows whose changes are committed.
        self.commit_pending().await?;
        // A future-dated row must not move the cursor past days not yet read.
        if let Some(d) = max_date.map(|d| d.min(self.today)) {
            let keep = cursor.as_deref().and_then(|c| c.parse::<NaiveDate>().ok()).is_some_and(|c| c >= d);
            if !keep {
                self.p
                    .store
                    .set_cursor(&self.tenant.id, s.name, &d.to_string(), self.p.clock.now())
                    .await?;
            }
        }
        Ok(())
    }

    fn parse(&self, kind: RecordKind, row: &Row, position: &str) -> Result<Parsed, RowError> {
        let p = self.profile();
        Ok(match kind {
            RecordKind::GoodsReceipt => Parsed::Receipt(rows::receipt(row, p, position)?),
            RecordKind::PurchaseOrder => Parsed::Po(rows::purchase_order(row, p, position)?),
            RecordKind::SupplierInvoice => Parsed::Invoice(rows::invoice(row, p, position)?),
        })
    }

    /// Malformed rows land in the audit trail once per content version, and the rest goes on.
    async fn record_row_errors(&mut self, errors: Vec<(RowError, String)>) -> Result<(), PollError> {
        let mut entries = Vec::new();
        for (e, version) in errors {
            self.totals.row_errors += 1;
            let kind = kind_of_row_error(&e);
            let already = self
                .p
                .store
                .audit_trail(&self.tenant.id, kind, &e.record)
                .await?
                .last()
                .is_some_and(|a| a.event == "row_error" && a.detail["version"] == json!(version));
            if already {
                continue;
            }
            tracing::warn!(
                tenant = %self.tenant.id,
                record = crate::core::text::for_log(&e.record),
                error = crate::core::text::error_for_log(&e),
                "malformed QAD row"
            );
            let _ = self.p.events.send(Event::RowError {
                tenant: self.tenant.id.clone(),
                error: e.to_string(),
            });
            entries.push(NewAudit {
                kind: kind.to_string(),
                record_key: e.record.clone(),
                event: "row_error".into(),
                detail: json!({"error": e.to_string(), "field": e.field, "version": version}),
            });
        }
        self.p.store.append_audit(&self.tenant.id, &entries, self.p.clock.now()).await?;
        Ok(())
    }

    /// Re-check an open episode without a new row for the record itself.
    async fn recheck(&mut self, o: OpenRecord) -> Result<(), PollError> {
        let Some(Value::Object(row)) = &o.data else {
            return Ok(()); // never stored: nothing to re-check against
        };
        match self.parse(o.kind, row, &o.record_key) {
            Ok(rec) => self.decide(rec, Some(o.open), None).await,
            Err(e) => self.record_row_errors(vec![(e, rows::content_version(row))]).await,
        }
    }

    /// One record, in a span naming it: every log line about it, down to its alerts, says which.
    async fn decide(&mut self, rec: Parsed, open: Option<OpenEpisode>, seen: Option<(String, Value)>) -> Result<(), PollError> {
        use tracing::Instrument;
        let span = tracing::info_span!("record", tenant = %self.tenant.id, record = %rec.key());
        self.decide_in_span(rec, open, seen).instrument(span).await
    }

    async fn decide_in_span(&mut self, rec: Parsed, open: Option<OpenEpisode>, seen: Option<(String, Value)>) -> Result<(), PollError> {
        let key = rec.key();
        let (kind, needed, supplier, amount, people, cause) = match &rec {
            Parsed::Receipt(r) => {
                let lines = self.po_lines(&r.po_number).await?;
                let receipts = self.receipts(&r.po_number).await?;
                let tol = self.tolerance().await?;
                let line = lines.iter().find(|l| l.line == r.line);
                let a = attention::receipt_attention(r, &receipts, line, &tol);
                let people = if a.is_some() {
                    self.receipt_people(r).await?
                } else {
                    People::default()
                };
                (
                    RecordKind::GoodsReceipt,
                    a,
                    r.supplier.clone(),
                    None,
                    people,
                    "received quantity now matches the order".to_string(),
                )
            }
            Parsed::Po(po) => {
                let a = attention::po_attention(po, self.profile().high_value_threshold, self.today);
                let people = if a.is_some() {
                    self.po_people(po).await?
                } else {
                    People::default()
                };
                let cause = format!("approval status now {:?}", po.approval);
                (
                    RecordKind::PurchaseOrder,
                    a,
                    po.supplier.clone(),
                    Some((po.total, po.currency.clone())),
                    people,
                    cause,
                )
            }
            Parsed::Invoice(inv) => {
                let (a, cause) = if attention::invoice_cleared(inv) {
                    let facts = InvoiceFacts {
                        invoice: inv,
                        po_lines: &[],
                        receipts: &[],
                        matchings: &[],
                        tolerance: &Tolerance::default(),
                    };
                    (
                        None,
                        attention::invoice_resolution(open.as_ref().map_or("", |o| &o.reason_code), facts),
                    )
                } else {
                    let lines = self.po_lines(&inv.po_number).await?;
                    let receipts = self.receipts(&inv.po_number).await?;
                    let matchings = self.matchings(&inv.voucher).await?;
                    let tol = self.tolerance().await?;
                    let facts = InvoiceFacts {
                        invoice: inv,
                        po_lines: &lines,
                        receipts: &receipts,
                        matchings: &matchings,
                        tolerance: &tol,
                    };
                    let a = attention::invoice_attention(facts, self.today);
                    (
                        a,
                        attention::invoice_resolution(open.as_ref().map_or("", |o| &o.reason_code), facts),
                    )
                };
                let people = if a.is_some() {
                    self.invoice_people(inv).await?
                } else {
                    People::default()
                };
                (
                    RecordKind::SupplierInvoice,
                    a,
                    inv.supplier.clone(),
                    Some((inv.amount, inv.currency.clone())),
                    people,
                    cause,
                )
            }
        };
        let transition = episode::transition(open.as_ref(), needed.as_ref().map(|a| (a, &people)));
        // The supplier's name only matters for what a person will read.
        let supplier_name = if matches!(transition, Transition::Open | Transition::Update { .. } | Transition::Replace) {
            self.address(&supplier).await?.map(|a| a.name).unwrap_or_default()
        } else {
            String::new()
        };
        let summary = |a: &Attention| attention::summary(kind, &key, &supplier_name, amount.as_ref().map(|(v, c)| (*v, c.as_str())), a);
        let mut audit = Vec::new();
        let mut routing = None;
        let opening = |a: Attention, episode: i64, audit: &mut Vec<(String, String)>| {
            let reference = new_reference();
            let alert = AlertInput {
                kind,
                key: key.clone(),
                episode: episode as u32,
                supplier_code: supplier.clone(),
                supplier_name: supplier_name.clone(),
                amount: amount.as_ref().map(|(v, _)| v.to_string()),
                currency: amount.as_ref().map(|(_, c)| c.clone()),
                due_date: a.due_date.map(|d| d.to_string()),
                reason_code: a.reason.code().to_string(),
                reason: a.reason.describe(),
                urgency: a.urgency,
                people: people.recipients.clone(),
                reference: reference.clone(),
            };
            for u in &people.unreachable {
                audit.push((
                    "unreachable".to_string(),
                    json!({"role": u.role, "name": u.name, "error": u.error}).to_string(),
                ));
            }
            (
                NewEpisode {
                    episode,
                    summary: summary(&a),
                    attention: a,
                    people: people.clone(),
                    reference,
                },
                alert,
            )
        };
        let change = match (transition, needed) {
            (Transition::Open, Some(a)) => {
                let episode = self.p.store.last_episode(&self.tenant.id, kind, &key).await? + 1;
                let (opened, alert) = opening(a, episode, &mut audit);
                routing = Some((self.route(&alert, &mut audit).await, alert));
                EpisodeChange::Open { opened }
            }
            (Transition::Update { urgency_changed }, Some(a)) => {
                let o = open.as_ref().expect("an update has an open episode");
                match urgency_changed {
                    Some((from, to)) => audit.push(("urgency_changed".to_string(), json!({"from": from, "to": to}).to_string())),
                    None => audit.push(("people_changed".to_string(), json!({"people": people}).to_string())),
                }
                EpisodeChange::Update {
                    episode: o.episode,
                    summary: summary(&a),
                    attention: a,
                    people: people.clone(),
                }
            }
            (Transition::Resolve, _) => EpisodeChange::Resolve {
                episode: open.as_ref().expect("open").episode,
                cause: cause.clone(),
            },
            (Transition::Replace, Some(a)) => {
                let o = open.as_ref().expect("open");
                let cause = format!("the problem changed: {}", a.reason.describe());
                let (opened, alert) = opening(a, o.episode + 1, &mut audit);
                routing = Some((self.route(&alert, &mut audit).await, alert));
                EpisodeChange::Replace {
                    episode: o.episode,
                    cause,
                    opened,
                }
            }
            _ => EpisodeChange::None,
        };
        if matches!(change, EpisodeChange::None) && seen.is_none() {
            return Ok(());
        }
        // The alerts the plugin decided become jobs in the same transaction as the episode.
        let jobs = match (&routing, &change) {
            (Some((r, alert)), EpisodeChange::Open { opened } | EpisodeChange::Replace { opened, .. }) => {
                send_jobs(&self.tenant.id, alert, opened.episode, r, self.p.clock.now())
            }
            _ => Vec::new(),
        };
        let record_change = RecordChange {
            kind,
            record_key: key.clone(),
            seen,
            episode: change,
            audit,
            jobs,
        };
        self.pending.push(Pending {
            change: record_change,
            routing: routing.map(|(r, _)| r),
        });
        if self.pending.len() >= APPLY_BATCH {
            self.commit_pending().await?;
        }
        Ok(())
    }

    /// Commit the records decided so far in one transaction, then announce what changed.
    async fn commit_pending(&mut self) -> Result<(), PollError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // Split rather than copied: the store takes the changes, the routings wait beside them.
        let (changes, routings): (Vec<RecordChange>, Vec<Option<Routing>>) =
            std::mem::take(&mut self.pending).into_iter().map(|p| (p.change, p.routing)).unzip();
        let applied = self.p.store.apply_batch(&self.tenant.id, &changes, self.p.clock.now()).await?;
        for ((change, routing), applied) in changes.into_iter().zip(routings).zip(applied) {
            self.announce(Pending { change, routing }, applied);
        }
        Ok(())
    }

    /// Tell listeners (the sandbox's printer, gRPC watchers) what a committed change did.
    fn announce(&mut self, p: Pending, applied: Applied) {
        let Pending {
            change: record_change,
            routing,
        } = p;
        let (kind, key, change) = (record_change.kind, record_change.record_key, record_change.episode);
        let tenant = self.tenant.id.clone();
        if let Some(episode) = applied.resolved {
            self.totals.resolved += 1;
            let cause = match &change {
                EpisodeChange::Resolve { cause, .. } | EpisodeChange::Replace { cause, .. } => cause.clone(),
                _ => String::new(),
            };
            let _ = self.p.events.send(Event::Resolved {
                tenant: tenant.clone(),
                kind,
                key: key.clone(),
                episode,
                cause,
            });
        }
        if let Some(episode) = applied.opened
            && let EpisodeChange::Open { opened } | EpisodeChange::Replace { opened, .. } = &change
            && let Some(routing) = routing
        {
            self.totals.opened += 1;
            let _ = self.p.events.send(Event::NeedsAttention {
                tenant,
                kind,
                key,
                episode,
                summary: opened.summary.clone(),
                urgency: opened.attention.urgency,
                people: opened.people.clone(),
                routing,
            });
        } else if let EpisodeChange::Update { attention, summary, .. } = &change {
            let _ = self.p.events.send(Event::Updated {
                tenant,
                kind,
                key,
                summary: summary.clone(),
                urgency: attention.urgency,
            });
        }
    }

    /// Ask the tenant's plugin whom to alert and with what words; every fault becomes an
    /// audit entry on the record, and the default plugin decides only if the tenant said so.
    async fn route(&self, alert: &AlertInput, audit: &mut Vec<(String, String)>) -> Routing {
        let r = &self.router;
        let ctx = PluginContext::at(&self.tenant.id, &r.settings.config.to_string(), self.p.clock.now(), self.tz);
        let timer = std::time::Instant::now();
        let outcome = match &r.plugin {
            Ok(p) => self.p.plugins.route_and_render(p, r.settings.limits, &ctx, alert).await,
            Err(load_fault) => Err(load_fault.clone()),
        };
        let fault_kind = outcome.as_ref().err().map(|f| serde_json::to_value(f.kind).unwrap_or_default());
        crate::metrics::plugin_call(
            &self.tenant.id,
            timer.elapsed().as_secs_f64(),
            fault_kind.as_ref().map(|k| k.as_str().unwrap_or("unknown")),
        );
        // The plugin ran on this worker without giving it up (tens of µs): a cycle deciding
        // record after record would otherwise hold it, and the store's commits, whose every
        // statement needs a worker to go on, would wait behind the whole batch.
        tokio::task::yield_now().await;
        let fault = match outcome {
            Ok(o) => {
                // The input is kept so a dry-run can replay exactly what the plugin saw.
                audit.push(("routed".into(), routed_entry(&r.label, Some(alert), &o.routed, &o.logs)));
                return Routing::Routed {
                    plugin: r.label.clone(),
                    routed: o.routed,
                };
            }
            Err(f) => f,
        };
        let (record, error) = (crate::core::text::for_log(&alert.key), crate::core::text::error_for_log(&fault));
        tracing::warn!(tenant = %self.tenant.id, record, plugin = %r.label, error, "plugin fault");
        audit.push((
            "plugin_fault".into(),
            json!({"plugin": r.label, "input": alert, "kind": fault.kind, "call": fault.call, "error": fault.message}).to_string(),
        ));
        let fallback = if r.settings.fallback_to_default {
            match self
                .p
                .plugins
                .route_and_render(&r.default, crate::plugin::Limits::default(), &ctx, alert)
                .await
            {
                Ok(o) => {
                    audit.push(("routed".into(), routed_entry("default (fallback)", None, &o.routed, &o.logs)));
                    Some(o.routed)
                }
                Err(f) => {
                    audit.push((
                        "plugin_fault".into(),
                        json!({"plugin": "default (fallback)", "kind": f.kind, "call": f.call, "error": f.message}).to_string(),
                    ));
                    None
                }
            }
        } else {
            None
        };
        Routing::Fault {
            plugin: r.label.clone(),
            fault,
            fallback,
        }
    }

    // ---- facts, read fresh once per cycle --------------------------------------------------------

    async fn tolerance(&mut self) -> Result<Tolerance, PollError> {
        if let Some(t) = &self.caches.tolerance {
            return Ok(t.clone());
        }
        let rows = self.client.browse(&self.profile().browses.po_control.clone(), &[]).await?;
        // No control row, or a broken one: zero tolerance, so nothing slips through unseen.
        let t = match rows.first().map(|r| rows::tolerance(r, "PO control")) {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                self.record_row_errors(vec![(e, rows::content_version(&rows[0]))]).await?;
                Tolerance::default()
            }
            None => Tolerance::default(),
        };
        self.caches.tolerance = Some(t.clone());
        Ok(t)
    }

    async fn browse_parsed<T>(
        &mut self,
        browse: String,
        filter: Filter,
        what: &str,
        parse: impl Fn(&Row, &str) -> Result<T, RowError>,
    ) -> Result<Vec<T>, PollError> {
        let rows = self.client.browse(&browse, &[filter]).await?;
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            match parse(r, &format!("row {} of {what}", i + 1)) {
                Ok(t) => out.push(t),
                Err(e) => errors.push((e, rows::content_version(r))),
            }
        }
        self.record_row_errors(errors).await?;
        Ok(out)
    }

    async fn po_lines(&mut self, po: &str) -> Result<Vec<PoLine>, PollError> {
        if let Some(v) = self.caches.po_lines.get(po) {
            return Ok(v.clone());
        }
        let browse = self.profile().browses.po_lines.clone();
        let v = self
            .browse_parsed(browse, Filter::Eq("pod_det.pod_nbr".into(), po.into()), "PO lines", rows::po_line)
            .await?;
        self.caches.po_lines.insert(po.into(), v.clone());
        Ok(v)
    }

    async fn receipts(&mut self, po: &str) -> Result<Vec<Receipt>, PollError> {
        if let Some(v) = self.caches.receipts.get(po) {
            return Ok(v.clone());
        }
        let p = self.profile().clone();
        let v = self
            .browse_parsed(
                p.browses.receipts.clone(),
                Filter::Eq("prh_hist.prh_nbr".into(), po.into()),
                "receipts",
                |r, pos| rows::receipt(r, &p, pos),
            )
            .await?;
        self.caches.receipts.insert(po.into(), v.clone());
        Ok(v)
    }

    async fn matchings(&mut self, voucher: &str) -> Result<Vec<MatchingLine>, PollError> {
        if let Some(v) = self.caches.matchings.get(voucher) {
            return Ok(v.clone());
        }
        let browse = self.profile().browses.invoice_matchings.clone();
        let v = self
            .browse_parsed(
                browse,
                Filter::Eq("APMatching.CInvoiceVoucher".into(), voucher.into()),
                "matching lines",
                rows::matching_line,
            )
            .await?;
        self.caches.matchings.insert(voucher.into(), v.clone());
        Ok(v)
    }

    async fn purchase_order(&mut self, po: &str) -> Result<Option<PurchaseOrder>, PollError> {
        if let Some(v) = self.caches.pos.get(po) {
            return Ok(v.clone());
        }
        let p = self.profile().clone();
        let v = self
            .browse_parsed(
                p.browses.purchase_orders.clone(),
                Filter::Eq("po_mstr.po_nbr".into(), po.into()),
                "purchase orders",
                |r, pos| rows::purchase_order(r, &p, pos),
            )
            .await?
            .into_iter()
            .next();
        self.caches.pos.insert(po.into(), v.clone());
        Ok(v)
    }

    async fn address(&mut self, code: &str) -> Result<Option<Address>, PollError> {
        if code.is_empty() {
            return Ok(None);
        }
        if let Some(v) = self.caches.addresses.get(code) {
            return Ok(v.clone());
        }
        let p = self.profile().clone();
        let v = self
            .browse_parsed(
                p.browses.addresses.clone(),
                Filter::Eq("ad_mstr.ad_addr".into(), code.into()),
                "addresses",
                |r, pos| rows::address(r, &p, pos),
            )
            .await?
            .into_iter()
            .next();
        self.caches.addresses.insert(code.into(), v.clone());
        Ok(v)
    }

    async fn contacts(&mut self, supplier: &str) -> Result<Vec<Contact>, PollError> {
        if let Some(v) = self.caches.contacts.get(supplier) {
            return Ok(v.clone());
        }
        let p = self.profile().clone();
        let v = self
            .browse_parsed(
                p.browses.contacts.clone(),
                Filter::Eq(p.fields.contact_supplier.clone(), supplier.into()),
                "contacts",
                |r, pos| rows::contact(r, &p, pos),
            )
            .await?;
        self.caches.contacts.insert(supplier.into(), v.clone());
        Ok(v)
    }

    async fn employee(&mut self, code: &str) -> Result<Option<Employee>, PollError> {
        if let Some(v) = self.caches.employees.get(code) {
            return Ok(v.clone());
        }
        let p = self.profile().clone();
        let v = self
            .browse_parsed(
                p.browses.employees.clone(),
                Filter::Eq(p.fields.employee_code.clone(), code.into()),
                "employees",
                |r, pos| rows::employee(r, &p, pos),
            )
            .await?
            .into_iter()
            .next();
        self.caches.employees.insert(code.into(), v.clone());
        Ok(v)
    }

    // ---- people ---------------------------------------------------------------------------------

    async fn employee_person(
        &mut self,
        role: Role,
        code: &str,
        what: &str,
        out: &mut Vec<Person>,
        missing: &mut Vec<Unreachable>,
    ) -> Result<(), PollError> {
        match self.employee(code).await? {
            Some(e) => out.push(Person {
                role,
                name: e.full_name(),
                source: format!("employee {code}"),
                phone: e.phone,
                country: e.country,
            }),
            None => missing.push(Unreachable {
                role,
                name: code.to_string(),
                source: format!("employee {code}"),
                error: format!("{what} {code} is not a QAD employee"),
            }),
        }
        Ok(())
    }

    async fn role_people(&mut self, role: Role, out: &mut Vec<Person>, missing: &mut Vec<Unreachable>) -> Result<(), PollError> {
        let refs = match role {
            Role::ApClerk => self.profile().roles.ap_clerk.clone(),
            Role::PlantManager => self.profile().roles.plant_manager.clone(),
            _ => Vec::new(),
        };
        for r in refs {
            match r {
                PersonRef::Employee { employee } => self.employee_person(role, &employee, role.as_str(), out, missing).await?,
                PersonRef::Direct { name, phone, country } => out.push(Person {
                    role,
                    source: format!("{} {name}", role.as_str()),
                    name,
                    phone,
                    country,
                }),
            }
        }
        Ok(())
    }

    async fn supplier_person(&mut self, supplier: &str, out: &mut Vec<Person>) -> Result<(), PollError> {
        let address = self.address(supplier).await?;
        let country = address.as_ref().map(|a| a.country.clone()).unwrap_or_default();
        let contacts = self.contacts(supplier).await?;
        let source = format!("supplier {supplier}");
        let best = contacts.iter().find(|c| c.primary).or(contacts.first());
        match (best, &address) {
            (Some(c), _) => {
                let phone = if c.mobile.trim().is_empty() {
                    c.telephone.clone()
                } else {
                    c.mobile.clone()
                };
                out.push(Person {
                    role: Role::SupplierContact,
                    name: c.name.clone(),
                    source,
                    phone,
                    country,
                });
            }
            (None, Some(a)) => out.push(Person {
                role: Role::SupplierContact,
                name: a.attention.clone(),
                source,
                phone: a.phone.clone(),
                country,
            }),
            (None, None) => {}
        }
        Ok(())
    }

    fn finish_people(&self, people: Vec<Person>, mut missing: Vec<Unreachable>) -> People {
        let p = self.profile();
        let mut out = people::resolve(people, &p.default_country, &p.country_aliases);
        out.unreachable.append(&mut missing);
        out
    }

    async fn buyer_of(&mut self, po: &str, out: &mut Vec<Person>, missing: &mut Vec<Unreachable>) -> Result<(), PollError> {
        if let Some(order) = self.purchase_order(po).await?
            && !order.buyer.is_empty()
        {
            self.employee_person(Role::Buyer, &order.buyer, &format!("buyer of {po}"), out, missing)
                .await?;
        }
        Ok(())
    }

    async fn invoice_people(&mut self, inv: &Invoice) -> Result<People, PollError> {
        let (mut out, mut missing) = (Vec::new(), Vec::new());
        self.role_people(Role::ApClerk, &mut out, &mut missing).await?;
        self.buyer_of(&inv.po_number, &mut out, &mut missing).await?;
        self.supplier_person(&inv.supplier, &mut out).await?;
        Ok(self.finish_people(out, missing))
    }

    async fn po_people(&mut self, po: &PurchaseOrder) -> Result<People, PollError> {
        let (mut out, mut missing) = (Vec::new(), Vec::new());
        self.role_people(Role::PlantManager, &mut out, &mut missing).await?;
        if !po.buyer.is_empty() {
            self.employee_person(Role::Buyer, &po.buyer, &format!("buyer of {}", po.number), &mut out, &mut missing)
                .await?;
        }
        Ok(self.finish_people(out, missing))
    }

    async fn receipt_people(&mut self, r: &Receipt) -> Result<People, PollError> {
        let (mut out, mut missing) = (Vec::new(), Vec::new());
        self.buyer_of(&r.po_number, &mut out, &mut missing).await?;
        self.supplier_person(&r.supplier, &mut out).await?;
        Ok(self.finish_people(out, missing))
    }
}

/// A poll's `routed` audit entry: the plugin, what it saw (kept so a dry-run can replay it
/// exactly; the fallback's entry leaves it out, it is the same input) and what it decided.
/// Written straight to text: no `Value` tree of the alert and the deliveries in between.
pub fn routed_entry(plugin: &str, input: Option<&AlertInput>, deliveries: &[Routed], logs: &[crate::plugin::PluginLog]) -> String {
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        plugin: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        input: Option<&'a AlertInput>,
        deliveries: &'a [Routed],
        logs: &'a [crate::plugin::PluginLog],
    }
    serde_json::to_string(&Entry {
        plugin,
        input,
        deliveries,
        logs,
    })
    .expect("plain data serialises")
}

/// A send job's payload: the [`Routed`](crate::core::routing::Routed) delivery and words, and
/// the alert beside them. Written straight to text (no `Value` in between).
#[derive(serde::Serialize)]
struct SendPayload<'a> {
    delivery: &'a crate::core::routing::Delivery,
    message: &'a crate::core::routing::Message,
    alert: &'a AlertInput,
}

/// One send job per routed delivery, due after its delay; the key is the alert's identity.
/// The payload carries the alert as the plugin saw it, so an
/// answer to it can be read by the same plugin later.
pub fn send_jobs(tenant: &str, alert: &AlertInput, episode: i64, routing: &Routing, now: DateTime<Utc>) -> Vec<NewJob> {
    let (kind, key) = (alert.kind, alert.key.as_str());
    let routed = match routing {
        Routing::Routed { routed, .. } => routed,
        Routing::Fault {
            fallback: Some(routed), ..
        } => routed,
        Routing::Fault { fallback: None, .. } => return Vec::new(),
    };
    routed
        .iter()
        .map(|r| {
            let d = &r.delivery;
            NewJob {
                key: crate::core::dispatch::send_job_id(tenant, kind, key, episode, d.channel, &d.to.phone, d.escalation_step),
                kind: "send".into(),
                episode,
                payload: serde_json::to_string(&SendPayload {
                    delivery: &r.delivery,
                    message: &r.message,
                    alert,
                })
                .expect("plain data serialises"),
                run_at: now + chrono::Duration::minutes(d.delay_minutes as i64),
                escalation_step: d.escalation_step,
            }
        })
        .collect()
}

fn kind_of_row_error(e: &RowError) -> &'static str {
    match e.kind {
        "supplier invoice" => RecordKind::SupplierInvoice.as_str(),
        "purchase order" => RecordKind::PurchaseOrder.as_str(),
        "goods receipt" => RecordKind::GoodsReceipt.as_str(),
        "PO line" => "po_line",
        "invoice matching line" => "invoice_matching_line",
        "PO control" => "po_control",
        "supplier address" => "supplier_address",
        "supplier contact" => "supplier_contact",
        _ => "employee",
    }
}
