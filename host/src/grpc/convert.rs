//! Between protobuf messages and the host's own types. Input is validated here, field by
//! field, so a refused request names the field and changes nothing.

use std::collections::BTreeMap;

use chrono::NaiveTime;
use tonic::Status;

use super::pb;
use super::{invalid, opt_time, time};
use crate::core::intake::DecisionRoles;
use crate::core::phone;
use crate::core::profile::MappingProfile;
use crate::core::schedule::{ActiveHours, Schedule, ScheduleSpec};
use crate::plugin::PluginSettings;
use crate::secrets::{Origin, Service};
use crate::store::{AuditEntry, DeliveryRow, EpisodeRow, JobRow, SecretState, Tenant, TenantSettings, TwilioAccount};
use crate::twilio::DEFAULT_BASE_URL;

/// Tenant ids appear in webhook paths and logs: keep them plain.
pub fn check_tenant_id(field: &str, id: &str) -> Result<(), Status> {
    if crate::core::limits::is_tenant_id(id) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{} must be 1–63 lower-case letters, digits or dashes", super::validate::quote(id)),
        ))
    }
}

fn check_url(field: &str, raw: &str) -> Result<String, Status> {
    let u = url::Url::parse(raw).map_err(|e| invalid(field, format!("{raw:?} is not a URL ({e})")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(invalid(field, format!("{raw:?} must be an http(s) URL with a host")));
    }
    Ok(raw.trim_end_matches('/').to_string())
}

fn check_phone(field: &str, raw: &str) -> Result<String, Status> {
    if !raw.trim().starts_with('+') {
        return Err(invalid(field, format!("phone {raw:?} must be in E.164 form, e.g. +13125550100")));
    }
    phone::normalise(raw, "US", &BTreeMap::new())
        .map(|e| e.number)
        .map_err(|e| invalid(field, e))
}

fn check_time(field: &str, raw: &str) -> Result<NaiveTime, Status> {
    NaiveTime::parse_from_str(raw, "%H:%M").map_err(|_| invalid(field, format!("{raw:?} is not a local time HH:MM")))
}

pub fn schedule_spec(field: &str, s: Option<&pb::Schedule>) -> Result<ScheduleSpec, Status> {
    let s = s.ok_or_else(|| invalid(field, "is required"))?;
    let active_hours = match (s.active_from.as_str(), s.active_until.as_str()) {
        ("", "") => None,
        (from, until) => Some(ActiveHours {
            start: check_time(&format!("{field}.active_from"), from)?,
            end: check_time(&format!("{field}.active_until"), until)?,
        }),
    };
    let spec = ScheduleSpec {
        every_seconds: (s.every_seconds > 0).then_some(s.every_seconds),
        cron: (!s.cron.is_empty()).then(|| s.cron.clone()),
        active_hours,
        // Required: an empty one was silently UTC.
        time_zone: s.time_zone.clone(),
    };
    Schedule::check(&spec).map_err(|e| invalid(&format!("{field}.{}", e.field()), e))?;
    Ok(spec)
}

fn schedule_out(s: &ScheduleSpec) -> pb::Schedule {
    let hm = |t: NaiveTime| t.format("%H:%M").to_string();
    pb::Schedule {
        every_seconds: s.every_seconds.unwrap_or(0),
        cron: s.cron.clone().unwrap_or_default(),
        time_zone: s.time_zone.clone(),
        active_from: s.active_hours.as_ref().map(|a| hm(a.start)).unwrap_or_default(),
        active_until: s.active_hours.as_ref().map(|a| hm(a.end)).unwrap_or_default(),
    }
}

pub fn qad(field: &str, q: Option<&pb::QadSettings>) -> Result<(String, String, String), Status> {
    let q = q.ok_or_else(|| invalid(field, "is required (base_url, domain, entity)"))?;
    let url = check_url(&format!("{field}.base_url"), &q.base_url)?;
    for (name, v) in [("domain", &q.domain), ("entity", &q.entity)] {
        if v.trim().is_empty() {
            return Err(invalid(&format!("{field}.{name}"), "is required"));
        }
    }
    Ok((url, q.domain.trim().to_string(), q.entity.trim().to_string()))
}

pub fn twilio(field: &str, t: Option<&pb::TwilioSettings>) -> Result<TwilioAccount, Status> {
    let Some(t) = t else {
        return Ok(TwilioAccount {
            account_sid: String::new(),
            from: String::new(),
            base_url: DEFAULT_BASE_URL.into(),
        });
    };
    let sid = t.account_sid.trim();
    let well_formed = sid.len() == 34 && sid.starts_with("AC") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if !sid.is_empty() && !well_formed {
        return Err(invalid(
            &format!("{field}.account_sid"),
            format!("{sid:?} is not a Twilio account SID (AC and 32 hex digits)"),
        ));
    }
    let from = match t.from_number.trim() {
        "" => String::new(),
        n => check_phone(&format!("{field}.from_number"), n)?,
    };
    let base_url = match t.base_url.trim() {
        "" => DEFAULT_BASE_URL.to_string(),
        u => check_url(&format!("{field}.base_url"), u)?,
    };
    Ok(TwilioAccount {
        account_sid: sid.to_string(),
        from,
        base_url,
    })
}

pub fn profile(field: &str, raw: &str) -> Result<MappingProfile, Status> {
    if raw.trim().is_empty() {
        return Ok(MappingProfile::default());
    }
    let p: MappingProfile = serde_json::from_str(raw).map_err(|e| invalid(field, format!("is not a mapping profile: {e}")))?;
    p.check().map_err(|e| invalid(field, e))?;
    Ok(p)
}

pub fn plugin_settings(field: &str, raw: &str) -> Result<String, Status> {
    if raw.trim().is_empty() {
        return Ok("{}".into());
    }
    let s: PluginSettings = serde_json::from_str(raw).map_err(|e| invalid(field, format!("is not plugin settings: {e}")))?;
    // The ceilings are core::limits' PLUGIN_FUEL_MAX and PLUGIN_MEMORY_MAX_BYTES.
    s.limits.check().map_err(|e| invalid(field, e))?;
    Ok(serde_json::to_string(&s).expect("plain data serialises"))
}

/// Who may decide each kind of record; kinds not named keep their defaults. A refusal names
/// the entry and the role: `tenant.decision_roles[0].roles[1]`.
pub fn decision_roles(field: &str, entries: &[pb::DecisionRoles]) -> Result<DecisionRoles, Status> {
    let entries: Vec<(String, Vec<String>)> = entries.iter().map(|e| (e.record_kind.clone(), e.roles.clone())).collect();
    DecisionRoles::from_entries(&entries).map_err(|e| invalid(&format!("{field}{}", e.field()), e))
}

/// A whole tenant from a create request.
pub fn new_tenant(t: &pb::Tenant, now: chrono::DateTime<chrono::Utc>) -> Result<TenantSettings, Status> {
    check_tenant_id("tenant.id", &t.id)?;
    if t.name.trim().is_empty() {
        return Err(invalid("tenant.name", "is required"));
    }
    let (qad_base_url, qad_domain, qad_entity) = qad("tenant.qad", t.qad.as_ref())?;
    Ok(TenantSettings {
        tenant: Tenant {
            id: t.id.clone(),
            name: t.name.trim().to_string(),
            qad_base_url,
            qad_domain,
            qad_entity,
            schedule: schedule_spec("tenant.schedule", t.schedule.as_ref())?,
            profile: profile("tenant.profile_json", &t.profile_json)?,
        },
        twilio: twilio("tenant.twilio", t.twilio.as_ref())?,
        execute_decisions: t.execute_decisions,
        call_opted_out: t.call_opted_out,
        unproven_answers_cancel_escalations: t.unproven_answers_cancel_escalations,
        decision_roles: decision_roles("tenant.decision_roles", &t.decision_roles)?,
        allow_plain_http: t.allow_plain_http,
        active_plugin: None,
        plugin_settings: plugin_settings("tenant.plugin_settings_json", &t.plugin_settings_json)?,
        created_at: now,
        updated_at: now,
    })
}

/// Apply the fields an update names (all settable ones when the mask is empty).
pub fn apply_update(current: &mut TenantSettings, t: &pb::Tenant, mask: &[String]) -> Result<(), Status> {
    const FIELDS: [&str; 11] = [
        "name",
        "qad",
        "twilio",
        "schedule",
        "execute_decisions",
        "call_opted_out",
        "profile_json",
        "plugin_settings_json",
        "unproven_answers_cancel_escalations",
        "decision_roles",
        "allow_plain_http",
    ];
    let mask: Vec<&str> = if mask.is_empty() {
        FIELDS.to_vec()
    } else {
        mask.iter().map(String::as_str).collect()
    };
    for f in mask {
        match f {
            "name" if t.name.trim().is_empty() => return Err(invalid("tenant.name", "is required")),
            "name" => current.tenant.name = t.name.trim().to_string(),
            "qad" => {
                (current.tenant.qad_base_url, current.tenant.qad_domain, current.tenant.qad_entity) = qad("tenant.qad", t.qad.as_ref())?
            }
            "twilio" => current.twilio = twilio("tenant.twilio", t.twilio.as_ref())?,
            "schedule" => current.tenant.schedule = schedule_spec("tenant.schedule", t.schedule.as_ref())?,
            "execute_decisions" => current.execute_decisions = t.execute_decisions,
            "call_opted_out" => current.call_opted_out = t.call_opted_out,
            "profile_json" => current.tenant.profile = profile("tenant.profile_json", &t.profile_json)?,
            "plugin_settings_json" => current.plugin_settings = plugin_settings("tenant.plugin_settings_json", &t.plugin_settings_json)?,
            "unproven_answers_cancel_escalations" => current.unproven_answers_cancel_escalations = t.unproven_answers_cancel_escalations,
            "decision_roles" => current.decision_roles = decision_roles("tenant.decision_roles", &t.decision_roles)?,
            "allow_plain_http" => current.allow_plain_http = t.allow_plain_http,
            other => {
                return Err(invalid(
                    "update_mask",
                    format!("{other:?} is not a settable field (one of {})", FIELDS.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

/// A stored credential as the API shows it: set for the origin its base URL has now, or not.
fn credential_out(s: &TenantSettings, c: &SecretState) -> pb::CredentialState {
    let url = match Service::of_field(&c.field) {
        Some(Service::Qad) => Some(&s.tenant.qad_base_url),
        Some(Service::Twilio) => Some(&s.twilio.base_url),
        None => None,
    };
    let now = url.and_then(|u| Origin::of(u).ok());
    let status = match (&c.origin, now) {
        (Some(set_for), Some(now)) if set_for == now.as_str() => pb::CredentialStatus::Set,
        _ => pb::CredentialStatus::SetForAnotherOrigin,
    };
    pb::CredentialState {
        field: c.field.clone(),
        set_at: time(c.set_at),
        origin: c.origin.clone().unwrap_or_default(),
        status: status.into(),
    }
}

pub fn tenant_out(s: &TenantSettings, credentials: &[SecretState]) -> pb::Tenant {
    let t = &s.tenant;
    pb::Tenant {
        id: t.id.clone(),
        name: t.name.clone(),
        qad: Some(pb::QadSettings {
            base_url: t.qad_base_url.clone(),
            domain: t.qad_domain.clone(),
            entity: t.qad_entity.clone(),
        }),
        twilio: Some(pb::TwilioSettings {
            account_sid: s.twilio.account_sid.clone(),
            from_number: s.twilio.from.clone(),
            base_url: s.twilio.base_url.clone(),
        }),
        schedule: Some(schedule_out(&t.schedule)),
        credentials: credentials.iter().map(|c| credential_out(s, c)).collect(),
        allow_plain_http: s.allow_plain_http,
        execute_decisions: s.execute_decisions,
        call_opted_out: s.call_opted_out,
        unproven_answers_cancel_escalations: s.unproven_answers_cancel_escalations,
        decision_roles: s
            .decision_roles
            .entries()
            .into_iter()
            .map(|(kind, roles)| pb::DecisionRoles {
                record_kind: kind.as_str().into(),
                roles: roles.into_iter().map(|r| r.as_str().into()).collect(),
            })
            .collect(),
        active_plugin_version: s.active_plugin.unwrap_or(0),
        profile_json: serde_json::to_string(&t.profile).expect("plain data serialises"),
        plugin_settings_json: s.plugin_settings.clone(),
        created_at: time(s.created_at),
        updated_at: time(s.updated_at),
    }
}

pub fn episode_out(e: &EpisodeRow) -> pb::AttentionRecord {
    pb::AttentionRecord {
        tenant_id: e.tenant.clone(),
        kind: e.kind.clone(),
        record_key: e.record_key.clone(),
        episode: e.episode,
        state: e.state.clone(),
        reason_code: e.reason_code.clone(),
        summary: e.summary.clone(),
        urgency: e.urgency.clone(),
        due_date: e.due_date.clone().unwrap_or_default(),
        resolution: e.resolution.clone().unwrap_or_default(),
        reference: e.reference.clone(),
        opened_at: time(e.opened_at),
        resolved_at: opt_time(e.resolved_at),
    }
}

fn delivery_out(d: &DeliveryRow) -> pb::Delivery {
    pb::Delivery {
        sid: d.sid.clone().unwrap_or_default(),
        channel: d.channel.clone(),
        to_phone: d.to.clone(),
        from_phone: d.from.clone(),
        status: d.status.clone().unwrap_or_default(),
        error_code: d.error_code.clone().unwrap_or_default(),
        sent_at: time(d.sent_at),
        answered_at: opt_time(d.answered_at),
    }
}

pub fn job_out(j: &JobRow) -> pb::Alert {
    pb::Alert {
        id: j.id,
        job_key: j.key.clone(),
        tenant_id: j.tenant.clone(),
        kind: j.kind.clone(),
        record_kind: j.record_kind.clone(),
        record_key: j.record_key.clone(),
        episode: j.episode,
        state: j.state.clone(),
        attempt: j.attempt,
        outcome_json: j.outcome.clone().unwrap_or_default(),
        run_at: time(j.run_at),
        created_at: time(j.created_at),
        updated_at: time(j.updated_at),
        delivery: j.delivery.as_ref().map(delivery_out),
    }
}

pub fn audit_out(tenant: &str, a: &AuditEntry) -> pb::AuditEvent {
    pb::AuditEvent {
        id: a.id,
        tenant_id: tenant.to_string(),
        record_kind: a.kind.clone(),
        record_key: a.record_key.clone(),
        episode: a.episode.unwrap_or(0),
        at: time(a.at),
        event: a.event.clone(),
        detail_json: a.detail.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid tenant, the base the validation tests change one field of.
    pub(crate) fn tenant() -> pb::Tenant {
        pb::Tenant {
            id: "acme".into(),
            name: "Acme".into(),
            qad: Some(pb::QadSettings {
                base_url: "https://qad.example.com/qad-central".into(),
                domain: "10USA".into(),
                entity: "10USA".into(),
            }),
            schedule: Some(pb::Schedule {
                every_seconds: 300,
                time_zone: "America/Chicago".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Each bad input is refused naming its field; the good one passes.
    #[test]
    fn tenant_input_is_refused_naming_the_field() {
        let now = chrono::Utc::now();
        assert!(new_tenant(&tenant(), now).is_ok());
        type Edit = fn(&mut pb::Tenant);
        let cases: [(&str, Edit); 11] = [
            ("tenant.id", |t| t.id = "Acme Corp".into()),
            ("tenant.id", |t| t.id = String::new()),
            ("tenant.name", |t| t.name = " ".into()),
            ("tenant.qad.base_url", |t| {
                t.qad.as_mut().unwrap().base_url = "qad.example.com".into()
            }),
            ("tenant.qad.domain", |t| t.qad.as_mut().unwrap().domain = String::new()),
            ("tenant.schedule.cron", |t| {
                t.schedule.as_mut().unwrap().cron = "every tuesday".into()
            }),
            ("tenant.schedule.time_zone", |t| {
                t.schedule.as_mut().unwrap().time_zone = "Mars/Olympus".into()
            }),
            ("tenant.schedule.active_from", |t| {
                t.schedule.as_mut().unwrap().active_from = "25:00".into()
            }),
            ("tenant.twilio.from_number", |t| {
                t.twilio = Some(pb::TwilioSettings {
                    from_number: "(312) 55-01".into(),
                    ..Default::default()
                })
            }),
            ("tenant.twilio.account_sid", |t| {
                t.twilio = Some(pb::TwilioSettings {
                    account_sid: "AC123".into(),
                    ..Default::default()
                })
            }),
            ("tenant.profile_json", |t| t.profile_json = r#"{"no_such_field": 1}"#.into()),
        ];
        for (field, edit) in cases {
            let mut t = tenant();
            edit(&mut t);
            let err = new_tenant(&t, now).expect_err(field);
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}");
            assert!(err.message().starts_with(&format!("{field}: ")), "{field}: {}", err.message());
        }
    }

    #[test]
    fn update_mask_changes_only_what_it_names() {
        let now = chrono::Utc::now();
        let mut current = new_tenant(&tenant(), now).unwrap();
        let mut change = tenant();
        change.name = "Acme Renamed".into();
        change.qad.as_mut().unwrap().domain = "20CAN".into();
        apply_update(&mut current, &change, &["name".into()]).unwrap();
        assert_eq!(current.tenant.name, "Acme Renamed");
        assert_eq!(current.tenant.qad_domain, "10USA");
        let err = apply_update(&mut current, &change, &["secrets".into()]).unwrap_err();
        assert!(err.message().starts_with("update_mask: "), "{}", err.message());
    }

    fn roles(kind: &str, roles: &[&str]) -> pb::DecisionRoles {
        pb::DecisionRoles {
            record_kind: kind.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    /// The answer settings: defaults on create, set through the mask, every refusal naming
    /// the entry and role, and every kind shown back.
    #[test]
    fn answer_settings_are_set_through_the_mask_and_checked() {
        use crate::core::model::RecordKind;
        use crate::core::people::Role;
        let now = chrono::Utc::now();
        let mut current = new_tenant(&tenant(), now).unwrap();
        assert!(!current.unproven_answers_cancel_escalations);
        assert_eq!(current.decision_roles, DecisionRoles::default());
        let mut change = tenant();
        change.unproven_answers_cancel_escalations = true;
        change.decision_roles = vec![roles("purchase_order", &["buyer"])];
        apply_update(&mut current, &change, &["decision_roles".into()]).unwrap();
        assert!(!current.unproven_answers_cancel_escalations, "not in the mask");
        assert!(!current.decision_roles.allows(RecordKind::PurchaseOrder, Role::PlantManager));
        apply_update(&mut current, &change, &["unproven_answers_cancel_escalations".into()]).unwrap();
        assert!(current.unproven_answers_cancel_escalations);
        let out = tenant_out(&current, &[]);
        assert_eq!(out.decision_roles.len(), 3, "every kind shown: {:?}", out.decision_roles);
        assert_eq!(out.decision_roles[0], roles("purchase_order", &["buyer"]));
        assert_eq!(out.decision_roles[1], roles("supplier_invoice", &["ap_clerk"]));
        let long = "x".repeat(100_000);
        let cases: Vec<(Vec<pb::DecisionRoles>, &str)> = vec![
            (vec![roles("purchase_orders", &[])], "tenant.decision_roles[0].record_kind"),
            (
                vec![roles("purchase_order", &[]), roles("purchase_order", &["buyer"])],
                "tenant.decision_roles[1].record_kind",
            ),
            (
                vec![roles("supplier_invoice", &["ap_clerk", "cfo"])],
                "tenant.decision_roles[0].roles[1]",
            ),
            (vec![roles("supplier_invoice", &[&long])], "tenant.decision_roles[0].roles[0]"),
            (vec![roles("supplier_invoice", &["buyer"; 9])], "tenant.decision_roles[0].roles"),
            (vec![roles("goods_receipt", &[]); 9], "tenant.decision_roles"),
        ];
        for (entries, field) in cases {
            let mut t = tenant();
            t.decision_roles = entries;
            let err = new_tenant(&t, now).expect_err(field);
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}");
            assert!(err.message().starts_with(&format!("{field}: ")), "{field}: {}", err.message());
            assert!(err.message().len() < 300, "a refused name is cut: {}", err.message().len());
        }
    }
}
