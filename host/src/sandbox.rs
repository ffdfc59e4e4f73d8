//! `ml-connector sandbox`: the no-credentials demo. One process runs the QAD sandbox with
//! the example manufacturer's data and the host on a fresh SQLite file, creates the example
//! tenant, and runs the real poll loop, printing a line for everything that needs a person
//! and everything resolved.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::{broadcast, watch};

use crate::clock::{Clock, SystemClock};
use crate::core::attention::Urgency;
use crate::core::people::People;
use crate::core::profile::{MappingProfile, PersonRef, Roles};
use crate::core::routing::{Channel, Message, Routed};
use crate::core::schedule::ScheduleSpec;
use crate::dispatcher::{Dispatcher, SECRET_TWILIO_API_KEY_SECRET, SECRET_TWILIO_API_KEY_SID, SECRET_TWILIO_AUTH_TOKEN};
use crate::grpc::{Control, EventFeed, GrpcOptions};
use crate::inbox::Inbox;
use crate::plugin::{LAKESHORE_PLUGIN, PluginRuntime, PluginSettings, sha256_hex};
use crate::poller::{Event, Poller, Routing, SECRET_QAD_PASSWORD, SECRET_QAD_USER};
use crate::qad_sandbox::{QadSandbox, SandboxConfig};
use crate::scheduler::Scheduler;
use crate::secrets::{Keyring, Origin, SecretString, generate_master_key};
use crate::store::{Store, Tenant, TwilioAccount};
use crate::twilio_sandbox::{Script, TwilioSandbox, TwilioSandboxConfig};
use crate::webhooks::WebhookServer;

pub const EXAMPLE_TENANT: &str = "lakeshore";
pub const EXAMPLE_TIME_ZONE: &str = "America/Chicago";

pub struct SandboxOptions {
    pub once: bool,
    /// Where Twilio's callbacks are told to go (default: the HTTP address bound).
    pub public_url: Option<String>,
    /// Where the host takes webhooks.
    pub http_addr: SocketAddr,
    /// The gRPC control plane, while the demo runs live.
    pub grpc_addr: SocketAddr,
    pub database_url: Option<String>,
    pub qad_addr: SocketAddr,
    pub poll_every_seconds: u64,
}

/// The example tenant as an operator would set it up against the QAD sandbox.
pub fn example_tenant(qad_base_url: &str, cfg: &SandboxConfig, every_seconds: u64) -> Tenant {
    let (domain, entity) = cfg.workspace.split_once('_').unwrap_or((&cfg.workspace, ""));
    Tenant {
        id: EXAMPLE_TENANT.into(),
        name: "Lakeshore Precision Components".into(),
        qad_base_url: qad_base_url.into(),
        qad_domain: domain.into(),
        qad_entity: entity.into(),
        schedule: ScheduleSpec {
            every_seconds: Some(every_seconds),
            cron: None,
            active_hours: None,
            time_zone: EXAMPLE_TIME_ZONE.into(),
        },
        profile: MappingProfile {
            roles: Roles {
                ap_clerk: vec![PersonRef::Employee { employee: "AP-01".into() }],
                plant_manager: vec![PersonRef::Employee { employee: "PM-01".into() }],
            },
            ..MappingProfile::default()
        },
    }
}

/// Create the example tenant with its QAD credentials (sealed) in `store`.
pub async fn provision_example(
    store: &Store,
    keys: &Keyring,
    tenant: &Tenant,
    cfg: &SandboxConfig,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    store.create_tenant(tenant, now).await?;
    let origin = Origin::of(&tenant.qad_base_url)?;
    store
        .set_secret(
            keys,
            &tenant.id,
            SECRET_QAD_USER,
            &origin,
            &SecretString::new(cfg.user.clone()),
            now,
        )
        .await?;
    store
        .set_secret(
            keys,
            &tenant.id,
            SECRET_QAD_PASSWORD,
            &origin,
            &SecretString::new(cfg.password.clone()),
            now,
        )
        .await?;
    Ok(())
}

/// Give the example tenant the example customer plugin (plugins/lakeshore), as an
/// integrator would, with a fallback to the default plugin's decision.
pub async fn install_example_plugin(store: &Store, runtime: &PluginRuntime, tenant: &str, now: DateTime<Utc>) -> anyhow::Result<i64> {
    let loaded = runtime.load(LAKESHORE_PLUGIN).await?;
    let version = store
        .add_plugin(tenant, LAKESHORE_PLUGIN, &sha256_hex(LAKESHORE_PLUGIN), loaded.world, now)
        .await?;
    store.activate_plugin(tenant, Some(version)).await?;
    let settings = PluginSettings {
        config: json!({"call_over": "25000", "quiet_start": "20:00", "quiet_end": "07:00"}),
        fallback_to_default: true,
        ..PluginSettings::default()
    };
    store.set_plugin_settings(tenant, &serde_json::to_string(&settings)?).await?;
    Ok(version)
}

/// Point a tenant at a Twilio account (the sandbox's, here): account, number, sealed keys.
pub async fn connect_twilio(
    store: &Store,
    keys: &Keyring,
    tenant: &str,
    cfg: &TwilioSandboxConfig,
    base_url: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let account = TwilioAccount {
        account_sid: cfg.account_sid.clone(),
        from: "+13125550100".into(),
        base_url: base_url.into(),
    };
    store.set_twilio_account(tenant, &account).await?;
    let origin = Origin::of(base_url)?;
    for (field, value) in [
        (SECRET_TWILIO_API_KEY_SID, &cfg.api_key_sid),
        (SECRET_TWILIO_API_KEY_SECRET, &cfg.api_key_secret),
        (SECRET_TWILIO_AUTH_TOKEN, &cfg.auth_token),
    ] {
        store
            .set_secret(keys, tenant, field, &origin, &SecretString::new(value.clone()), now)
            .await?;
    }
    Ok(())
}

fn routed_line(r: &Routed) -> String {
    let d = &r.delivery;
    let when = match (d.delay_minutes, d.escalation_step) {
        (0, 0) => String::new(),
        (m, 0) => format!(" in {m} min"),
        (m, s) => format!(" escalation {s} after {m} min without an answer"),
    };
    match (&r.message, d.channel) {
        (Message::Sms { body }, _) => format!("    ✉ sms to {} {}{when}: {body:?}", d.to.name, d.to.phone),
        (Message::Voice { say, choices }, Channel::Voice | Channel::Sms) => {
            let keys: Vec<String> = choices
                .iter()
                .map(|c| format!("{} {:?}", c.digit, c.action).to_lowercase())
                .collect();
            format!("    ☎ call to {} {}{when}: {say:?} [{}]", d.to.name, d.to.phone, keys.join(", "))
        }
    }
}

fn routing_lines(r: &Routing) -> String {
    match r {
        Routing::Routed { routed, .. } if routed.is_empty() => "\n    (the plugin alerts nobody for this)".to_string(),
        Routing::Routed { routed, .. } => routed.iter().map(|r| format!("\n{}", routed_line(r))).collect(),
        Routing::Fault { plugin, fault, fallback } => {
            let mut s = format!("\n    ⚠ plugin {plugin}: {:?} in {}: {}", fault.kind, fault.call, fault.message);
            if let Some(routed) = fallback {
                s.push_str("\n    (the default plugin decided instead)");
                s.extend(routed.iter().map(|r| format!("\n{}", routed_line(r))));
            }
            s
        }
    }
}

fn people_line(p: &People) -> String {
    let mut parts: Vec<String> = p
        .recipients
        .iter()
        .map(|r| format!("{} {} {}", r.role.as_str(), r.name, r.phone))
        .collect();
    if parts.is_empty() {
        parts.push("nobody reachable".into());
    }
    parts.join(", ")
}

fn urgency_tag(u: Urgency) -> &'static str {
    match u {
        Urgency::Low => "low     ",
        Urgency::Normal => "normal  ",
        Urgency::High => "HIGH    ",
        Urgency::Critical => "CRITICAL",
    }
}

/// How the example's people answer: an approver approves with the alert's code, the others
/// acknowledge with it, every call is answered with 1 (approve); confirmations ask nothing
/// and get no answer.
pub fn example_answers() -> Vec<Script> {
    let answer = |when: &str, reply: Option<&str>, digits: Option<&str>| Script {
        to: None,
        when_body_contains: Some(when.into()),
        reply: reply.map(String::from),
        digits: digits.map(String::from),
    };
    vec![
        answer("APPROVE ", Some("APPROVE {code}"), None),
        answer("SEEN ", Some("seen {code}, on it"), None),
        answer("<Gather", None, Some("1")),
    ]
}

/// The readable line for one event (several lines when people are unreachable).
pub fn event_line(e: &Event) -> String {
    match e {
        Event::NeedsAttention {
            summary,
            urgency,
            people,
            routing,
            ..
        } => {
            let mut s = format!("needs attention {} {summary}\n    → {}", urgency_tag(*urgency), people_line(people));
            for u in &people.unreachable {
                s.push_str(&format!("\n    ✗ {}", u.error));
            }
            s.push_str(&routing_lines(routing));
            s
        }
        Event::Updated { summary, urgency, .. } => format!("updated         {} {summary}", urgency_tag(*urgency)),
        Event::Resolved { kind, key, cause, .. } => format!("resolved                 {} {key}: {cause}", kind.label()),
        Event::RowError { error, .. } => format!("malformed row            {error}"),
        Event::Delivery {
            record_kind,
            record_key,
            event,
            detail,
            ..
        } => {
            let kind = crate::core::model::RecordKind::parse(record_kind)
                .map(|k| k.label())
                .unwrap_or("record");
            let how = format!(
                "{} to {}",
                detail["channel"].as_str().unwrap_or("?"),
                detail["to"].as_str().unwrap_or("?")
            );
            let extra = match event.as_str() {
                "sent" => detail["sid"].as_str().unwrap_or("").to_string(),
                "delivery_status" => {
                    let status = format!("Twilio: {}", detail["status"].as_str().unwrap_or("?"));
                    return format!("{status:<24} {how} about {kind} {record_key}");
                }
                "answer" => {
                    let said = match detail["answer"]["type"].as_str() {
                        Some("keypress") => format!("pressed {}", detail["answer"]["value"].as_str().unwrap_or("?")),
                        _ => format!("replied {:?}", detail["answer"]["value"].as_str().unwrap_or("")),
                    };
                    let mut line = format!(
                        "answer                   {} {said} about {kind} {record_key}: {}",
                        detail["name"].as_str().unwrap_or("?"),
                        detail["action"].as_str().unwrap_or("?")
                    );
                    if let Some(c) = detail["confirmation"].as_str().filter(|c| !c.is_empty()) {
                        line.push_str(&format!("\n    ← {c}"));
                    }
                    return line;
                }
                "qad_written" => {
                    return match detail["what"].as_str() {
                        Some("decision") => format!(
                            "QAD decision             {kind} {record_key}: {}",
                            detail["action"].as_str().unwrap_or("?")
                        ),
                        _ => format!(
                            "QAD comment              {kind} {record_key}: {}",
                            detail["text"].as_str().unwrap_or("")
                        ),
                    };
                }
                _ => detail["error"].as_str().or(detail["why"].as_str()).unwrap_or("").to_string(),
            };
            format!("{:<24} {how} about {kind} {record_key} {extra}", event.replace('_', " "))
        }
        Event::PollFinished {
            tenant,
            poll_id,
            totals,
            error,
        } => {
            let t = totals;
            let mut s = format!(
                "poll {poll_id} of {tenant}: {} rows read, {} changed, {} now need attention, {} resolved, {} malformed rows",
                t.rows_read, t.rows_changed, t.opened, t.resolved, t.row_errors
            );
            if let Some(e) = error {
                s.push_str(&format!("; FAILED: {e}"));
            }
            s
        }
    }
}

async fn print_events(mut rx: broadcast::Receiver<Event>) {
    loop {
        match rx.recv().await {
            Ok(e) => println!("{}", event_line(&e)),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                println!("({n} events not shown: the printer fell behind)")
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

pub async fn run(opts: SandboxOptions) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now();
    let today = now
        .with_timezone(&EXAMPLE_TIME_ZONE.parse::<chrono_tz::Tz>().expect("valid zone"))
        .date_naive();
    let qad_cfg = SandboxConfig::new(today);
    let qad = QadSandbox::new(qad_cfg.clone());
    let (qad_base, _qad_task) = qad.clone().spawn(opts.qad_addr).await?;
    let db_url = match opts.database_url {
        Some(u) => u,
        None => {
            let dir = std::env::temp_dir().join(format!("ml-connector-sandbox-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            format!("sqlite://{}", dir.join("ml-connector.db").display())
        }
    };
    println!("ml-connector sandbox");
    println!("  QAD sandbox   {qad_base}  (control surface under /_sandbox)");
    println!("  database      {db_url}");
    let store = Store::connect(&db_url).await?;
    store.migrate().await?;
    // The demo's credentials are the sandbox's own; an ephemeral master key seals them.
    let keys = Arc::new(Keyring::new(&generate_master_key(), &[])?);
    let tenant = example_tenant(&qad_base, &qad_cfg, opts.poll_every_seconds);
    provision_example(&store, &keys, &tenant, &qad_cfg, now).await?;
    println!(
        "  tenant        {} ({}), polled every {} s\n",
        tenant.id, tenant.name, opts.poll_every_seconds
    );

    let twilio = TwilioSandbox::new(TwilioSandboxConfig::default());
    let (twilio_base, _twilio_task) = twilio.clone().spawn("127.0.0.1:0".parse().expect("an address")).await?;
    connect_twilio(&store, &keys, &tenant.id, &twilio.config(), &twilio_base, now).await?;
    println!("  Twilio sandbox {twilio_base}  (account {})", twilio.config().account_sid);
    // Memory only: the demo's master key is ephemeral, so a disk cache would never verify.
    let runtime = Arc::new(PluginRuntime::new(None)?);
    let version = install_example_plugin(&store, &runtime, &tenant.id, now).await?;
    println!("  plugin        the example customer plugin (plugins/lakeshore), version {version}\n");
    let http = crate::outbound::client(Duration::from_secs(30))?;
    let poller = Poller::new(store.clone(), keys, http.clone(), clock, runtime);
    let inbox = Inbox::new(poller.clone());
    let listener = tokio::net::TcpListener::bind(opts.http_addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot take webhooks on {}: {e} (choose another address with --http-addr, e.g. 127.0.0.1:0 for any free port)",
            opts.http_addr
        )
    })?;
    let public_url = opts.public_url.clone().unwrap_or(format!("http://{}", listener.local_addr()?));
    let _http_task = WebhookServer::new(inbox.clone(), &public_url).serve(listener);
    // The sandbox's numbers send replies to the tenant's inbound path; its people answer.
    twilio.set_sms_url(&format!("{public_url}/twilio/{}/messages/inbound", tenant.id));
    twilio.set_scripts(example_answers());
    // The example customer lets approvals by keypress act in QAD.
    store.set_answer_settings(&tenant.id, true, true).await?;
    println!("  webhooks      {public_url}/twilio/{}/…\n", tenant.id);
    let printer = tokio::spawn(print_events(poller.events.subscribe()));
    let mut dispatcher = Dispatcher::new(store.clone(), poller.keys.clone(), http.clone(), poller.clock.clone(), &public_url);
    dispatcher.events = Some(poller.events.clone());
    let scheduler = Scheduler::new(poller.clone());
    let first = scheduler.poll_now(EXAMPLE_TENANT, "sandbox").await?;
    if opts.once {
        // Run until every alert due now reached a final state: delivered and answered, or
        // failed for a recorded reason (escalations stay scheduled for later).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let sent = dispatcher.run_once().await?;
            let read = inbox.run_once().await?;
            if sent + read == 0 {
                let busy = store.work_in_flight(EXAMPLE_TENANT, poller.clock.now()).await?;
                let unfinished = store
                    .delivery_statuses(EXAMPLE_TENANT)
                    .await?
                    .iter()
                    .filter(|(ch, st, _)| {
                        let ch = Channel::parse(ch).unwrap_or(Channel::Sms);
                        !st.as_deref().is_some_and(|st| crate::core::intake::is_final(ch, st))
                    })
                    .count();
                if busy == 0 && unfinished == 0 && twilio.idle() {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!(
                        "alerts still under way after 120 s: {busy} jobs or webhooks, {unfinished} deliveries without a final status"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        printer.abort();
        let open = store.attention(EXAMPLE_TENANT, Some("open")).await?;
        let jobs = store.job_counts_by_kind(EXAMPLE_TENANT).await?;
        let n = |k: &str, s: &str| jobs.get(&(k.to_string(), s.to_string())).copied().unwrap_or(0);
        let deliveries = store.delivery_statuses(EXAMPLE_TENANT).await?;
        let status = |w: &[&str]| {
            deliveries
                .iter()
                .filter(|(_, s, _)| s.as_deref().is_some_and(|s| w.contains(&s)))
                .count()
        };
        let st = twilio.stats();
        let answers = store
            .webhooks(EXAMPLE_TENANT)
            .await?
            .iter()
            .filter(|e| e.outcome.as_ref().is_some_and(|o| o["result"] == "answered"))
            .count();
        println!(
            "\nsummary: {} records need a person; {} alerts sent ({} SMS, {} calls), {} failed for a recorded reason, {} escalations scheduled; \
             {} delivered or completed, {} answered, {} confirmations sent, {} QAD comments and {} decisions written; {} malformed rows recorded in the audit trail",
            open.len(),
            n("send", "done"),
            st.messages_created - n("confirm", "done") as u64,
            st.calls_created,
            n("send", "failed") + n("send", "dead"),
            n("send", "queued"),
            status(&["delivered", "completed", "read"]),
            answers,
            n("confirm", "done"),
            n("qad_comment", "done"),
            n("qad_decision", "done"),
            first.totals.row_errors
        );
        store.close().await;
        return match first.error {
            Some(e) => Err(anyhow::anyhow!("the poll failed: {e}")),
            None => Ok(()),
        };
    }
    // The story goes on: a receipt posts for one stuck invoice's PO and a pending PO is
    // approved in QAD, so the next polls show them resolved.
    let story = qad.story();
    let control = qad_base
        .rsplit_once("/clouderp")
        .map(|(h, _)| h.to_string())
        .unwrap_or(qad_base.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_rx_grpc = stop_rx.clone();
    let loop_task = tokio::spawn({
        let s = scheduler.clone();
        let stop = stop_rx.clone();
        async move { s.run(stop).await }
    });
    let intake_task = tokio::spawn({
        let stop = stop_rx.clone();
        async move { inbox.run(stop).await }
    });
    let dispatch_task = tokio::spawn(async move { dispatcher.run(stop_rx).await });
    let grpc_task = serve_grpc(&poller, &scheduler, opts.grpc_addr, stop_rx_grpc).await?;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if let Some((voucher, po)) = story.missing_receipt.first().and_then(|v| story.invoice_po.get_key_value(v)) {
            println!("\n(QAD) goods receipt posted for {po}, the PO of stuck invoice {voucher}");
            let _ = http
                .post(format!("{control}/_sandbox/receipts"))
                .json(&json!({"po": po}))
                .send()
                .await;
        }
        if let Some(po) = story.pending_approval.first() {
            println!("(QAD) {po} approved by the plant manager\n");
            let _ = http
                .post(format!("{control}/_sandbox/approvals"))
                .json(&json!({"po": po, "status": "Approved"}))
                .send()
                .await;
        }
    });
    println!("polling every {} s; Ctrl-C to stop\n", opts.poll_every_seconds);
    crate::shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = loop_task.await;
    let _ = dispatch_task.await;
    let _ = intake_task.await;
    let _ = grpc_task.await;
    printer.abort();
    store.close().await;
    Ok(())
}

/// The control plane for grpcurl while the demo runs, with the event feed behind `Watch`.
/// The admin token is `ML_CONNECTOR_ADMIN_TOKEN`, else `sandbox` (said on screen).
async fn serve_grpc(
    poller: &Poller,
    scheduler: &Scheduler,
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let token = std::env::var("ML_CONNECTOR_ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
    let shown = if token.is_some() { "$ML_CONNECTOR_ADMIN_TOKEN" } else { "sandbox" };
    let feed = EventFeed::new(poller.store.clone(), 1024);
    let control = Control::new(poller.clone(), scheduler.clone(), feed.clone());
    let opts = GrpcOptions {
        addr,
        admin_token: Some(SecretString::new(token.unwrap_or_else(|| "sandbox".into()))),
        tls: None,
        // The demo has no TLS: off loopback only when told, as `serve` is.
        allow_plaintext: std::env::var("ML_CONNECTOR_GRPC_ALLOW_PLAINTEXT").is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "on")),
        limits: Default::default(),
    };
    let (bound, health, server) = crate::grpc::spawn(control, opts, stop.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve gRPC on {addr}: {e} (choose another address with --grpc-addr)"))?;
    println!("  gRPC          {bound}  e.g. grpcurl -plaintext -H \"authorization: Bearer {shown}\" {bound} list\n");
    let store = poller.store.clone();
    Ok(tokio::spawn(async move {
        let pump = feed.pump(stop.clone());
        let ready = health.ready(store, stop);
        let _ = tokio::join!(pump, ready, server);
    }))
}
