//! `mlconnector.v1.Tenants`.

use serde_json::json;
use tonic::{Request, Response, Status};

use super::convert::{self, check_tenant_id};
use super::{Control, invalid, pb, store_status};
use crate::dispatcher::{SECRET_TWILIO_API_KEY_SECRET, SECRET_TWILIO_API_KEY_SID, SECRET_TWILIO_AUTH_TOKEN};
use crate::poller::{SECRET_QAD_PASSWORD, SECRET_QAD_USER, qad_client};
use crate::secrets::{Origin, SecretString, Service};
use crate::store::{NewAudit, SecretState, TenantSettings};
use crate::twilio::{TwilioClient, TwilioConfig};

pub struct TenantsService(pub Control);

impl Control {
    /// The tenant as the API shows it: settings and when each credential was set.
    pub(crate) async fn tenant_out(&self, id: &str) -> Result<pb::Tenant, Status> {
        let s = self.store.tenant_settings(id).await.map_err(store_status)?;
        let creds = self.store.secret_states(id).await.map_err(store_status)?;
        Ok(convert::tenant_out(&s, &creds))
    }

    /// An administrative change, on the tenant's own audit trail (kind `tenant`).
    pub(crate) async fn audit_admin(&self, tenant: &str, event: &str, detail: serde_json::Value) -> Result<(), Status> {
        let entry = NewAudit {
            kind: "tenant".into(),
            record_key: tenant.into(),
            event: event.into(),
            detail,
        };
        self.store.append_audit(tenant, &[entry], self.now()).await.map_err(store_status)
    }

    /// Seal credentials of one service for the origin its base URL has now: they are sent
    /// there and nowhere else.
    async fn set_secrets(&self, tenant: &str, service: Service, values: &[(&str, &str)]) -> Result<(), Status> {
        let s = self.store.tenant_settings(tenant).await.map_err(store_status)?;
        let (name, url) = match service {
            Service::Qad => ("qad.base_url", &s.tenant.qad_base_url),
            Service::Twilio => ("twilio.base_url", &s.twilio.base_url),
        };
        let origin = Origin::of(url).map_err(|e| Status::failed_precondition(format!("{name}: {e}")))?;
        origin
            .check_transport(s.allow_plain_http)
            .map_err(|e| Status::failed_precondition(format!("{name}: {e}")))?;
        let now = self.now();
        for (field, value) in values {
            self.store
                .set_secret(&self.keys, tenant, field, &origin, &SecretString::new(*value), now)
                .await
                .map_err(store_status)?;
        }
        let fields: Vec<&str> = values.iter().map(|(f, _)| *f).collect();
        self.audit_admin(tenant, "credentials_set", json!({"fields": fields, "origin": origin.as_str()}))
            .await?;
        // A tenant held back for want of credentials is tried again now.
        self.scheduler.reschedule();
        Ok(())
    }
}

/// Base URLs credentials are sent to: plain `http://` only to loopback, unless the tenant
/// allows it explicitly (`allow_plain_http`).
fn plain_http_allowed(s: &TenantSettings) -> Result<(), Status> {
    for (field, url) in [
        ("tenant.qad.base_url", &s.tenant.qad_base_url),
        ("tenant.twilio.base_url", &s.twilio.base_url),
    ] {
        Origin::of(url)
            .and_then(|o| o.check_transport(s.allow_plain_http))
            .map_err(|e| invalid(field, e))?;
    }
    Ok(())
}

fn required<'a>(field: &str, v: &'a str) -> Result<&'a str, Status> {
    match v.trim() {
        "" => Err(invalid(field, "is required")),
        v => Ok(v),
    }
}

#[tonic::async_trait]
impl pb::tenants_server::Tenants for TenantsService {
    async fn create_tenant(&self, req: Request<pb::CreateTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let c = &self.0;
        let t = req.into_inner().tenant.ok_or_else(|| invalid("tenant", "is required"))?;
        let settings = convert::new_tenant(&t, c.now())?;
        plain_http_allowed(&settings)?;
        c.store.create_tenant(&settings.tenant, c.now()).await.map_err(store_status)?;
        c.store.update_tenant(&settings, c.now()).await.map_err(store_status)?;
        c.audit_admin(&t.id, "tenant_created", json!({"name": settings.tenant.name}))
            .await?;
        c.scheduler.reschedule();
        tracing::info!(tenant = %t.id, "tenant created over gRPC");
        Ok(Response::new(c.tenant_out(&t.id).await?))
    }

    async fn get_tenant(&self, req: Request<pb::GetTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        Ok(Response::new(self.0.tenant_out(&req.into_inner().id).await?))
    }

    async fn list_tenants(&self, _req: Request<pb::ListTenantsRequest>) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let c = &self.0;
        let mut tenants = Vec::new();
        for s in c.store.all_tenant_settings().await.map_err(store_status)? {
            let creds = c.store.secret_states(&s.tenant.id).await.map_err(store_status)?;
            tenants.push(convert::tenant_out(&s, &creds));
        }
        Ok(Response::new(pb::ListTenantsResponse { tenants }))
    }

    async fn update_tenant(&self, req: Request<pb::UpdateTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let c = &self.0;
        let req = req.into_inner();
        let t = req.tenant.ok_or_else(|| invalid("tenant", "is required"))?;
        let mut current = c.store.tenant_settings(&t.id).await.map_err(store_status)?;
        convert::apply_update(&mut current, &t, &req.update_mask)?;
        plain_http_allowed(&current)?;
        c.store.update_tenant(&current, c.now()).await.map_err(store_status)?;
        c.audit_admin(&t.id, "tenant_updated", json!({"fields": req.update_mask})).await?;
        c.scheduler.reschedule();
        Ok(Response::new(c.tenant_out(&t.id).await?))
    }

    async fn delete_tenant(&self, req: Request<pb::DeleteTenantRequest>) -> Result<Response<pb::DeleteTenantResponse>, Status> {
        let c = &self.0;
        let id = req.into_inner().id;
        // A poll under way ends first, recorded as cancelled, so nothing it writes follows the delete.
        c.scheduler.cancel(&id).await;
        let deleted = c.store.delete_tenant(&id, c.now()).await.map_err(store_status)?;
        c.scheduler.reschedule();
        tracing::info!(tenant = %id, jobs_cancelled = deleted.jobs_cancelled, "tenant deleted over gRPC");
        Ok(Response::new(pb::DeleteTenantResponse {
            jobs_cancelled: deleted.jobs_cancelled as i64,
        }))
    }

    async fn set_qad_credentials(&self, req: Request<pb::SetQadCredentialsRequest>) -> Result<Response<pb::Tenant>, Status> {
        let r = req.into_inner();
        let user = required("username", &r.username)?;
        let password = required("password", &r.password)?;
        self.0
            .set_secrets(
                &r.tenant_id,
                Service::Qad,
                &[(SECRET_QAD_USER, user), (SECRET_QAD_PASSWORD, password)],
            )
            .await?;
        Ok(Response::new(self.0.tenant_out(&r.tenant_id).await?))
    }

    async fn set_twilio_credentials(&self, req: Request<pb::SetTwilioCredentialsRequest>) -> Result<Response<pb::Tenant>, Status> {
        let r = req.into_inner();
        let mut values = Vec::new();
        if !r.api_key_sid.is_empty() || !r.api_key_secret.is_empty() {
            let sid = required("api_key_sid", &r.api_key_sid)?;
            if !sid.starts_with("SK") {
                return Err(invalid("api_key_sid", format!("{sid:?} is not an API key SID (SK…)")));
            }
            values.push((SECRET_TWILIO_API_KEY_SID, sid));
            values.push((SECRET_TWILIO_API_KEY_SECRET, required("api_key_secret", &r.api_key_secret)?));
        }
        if !r.auth_token.is_empty() {
            values.push((SECRET_TWILIO_AUTH_TOKEN, required("auth_token", &r.auth_token)?));
        }
        if values.is_empty() {
            return Err(invalid("api_key_sid", "give an API key and its secret, an auth_token, or both"));
        }
        self.0.set_secrets(&r.tenant_id, Service::Twilio, &values).await?;
        Ok(Response::new(self.0.tenant_out(&r.tenant_id).await?))
    }

    async fn set_schedule(&self, req: Request<pb::SetScheduleRequest>) -> Result<Response<pb::Tenant>, Status> {
        let c = &self.0;
        let r = req.into_inner();
        check_tenant_id("tenant_id", &r.tenant_id)?;
        let mut current = c.store.tenant_settings(&r.tenant_id).await.map_err(store_status)?;
        current.tenant.schedule = convert::schedule_spec("schedule", r.schedule.as_ref())?;
        c.store.update_tenant(&current, c.now()).await.map_err(store_status)?;
        c.audit_admin(
            &r.tenant_id,
            "schedule_set",
            serde_json::to_value(&current.tenant.schedule).unwrap_or_default(),
        )
        .await?;
        c.scheduler.reschedule();
        Ok(Response::new(c.tenant_out(&r.tenant_id).await?))
    }

    async fn test_connection(&self, req: Request<pb::TestConnectionRequest>) -> Result<Response<pb::TestConnectionResponse>, Status> {
        let c = &self.0;
        let id = req.into_inner().tenant_id;
        let s = c.store.tenant_settings(&id).await.map_err(store_status)?;
        let mut checks = c.qad_checks(&s).await;
        checks.extend(c.twilio_checks(&s).await?);
        let ok = checks.iter().all(|c| c.ok);
        Ok(Response::new(pb::TestConnectionResponse { ok, checks }))
    }
}

fn check(name: &str, r: Result<String, String>) -> pb::ConnectionCheck {
    pb::ConnectionCheck {
        name: name.into(),
        ok: r.is_ok(),
        detail: r.unwrap_or_else(|e| e),
    }
}

impl Control {
    /// `qad.login`, then what a poll needs: one row of each stream in the tenant's
    /// workspace (`qad.browse.<stream>`), and the profile's roles each reaching someone
    /// (`qad.roles`).
    async fn qad_checks(&self, s: &TenantSettings) -> Vec<pb::ConnectionCheck> {
        let t = &s.tenant;
        let streams = crate::poller::streams(&t.profile);
        let client = match qad_client(&self.store, &self.keys, &self.poller.http, self.poller.retry.clone(), t).await {
            Ok(client) => client,
            Err(e) => return not_tried(check("qad.login", Err(e.to_string())), &streams),
        };
        if let Err(e) = client.login().await {
            let login = check("qad.login", Err(format!("{} refused or failed the login: {e}", t.qad_base_url)));
            return not_tried(login, &streams);
        }
        let mut checks = vec![check(
            "qad.login",
            Ok(format!("logged into {} as the tenant's user", t.qad_base_url)),
        )];
        for stream in &streams {
            let read = client.probe(&stream.browse).await.map(|n| {
                format!(
                    "read {n} row of {} in workspace {} (as a poll does)",
                    stream.browse,
                    client.workspace()
                )
            });
            let read = read.map_err(|e| format!("{e} (workspace {}: are qad.domain and qad.entity right?)", client.workspace()));
            checks.push(check(&format!("qad.browse.{}", stream.name), read));
        }
        let roles = match crate::roles::role_report(&client, &t.profile).await {
            // A role no one is named for is reported, not failed: the tenant may mean it.
            // One whose named people are all unreachable is a mistake to fix.
            Ok(r) if r.nobody().all(|gap| gap.problems.is_empty()) => Ok(r.describe()),
            Ok(r) => Err(r.describe()),
            Err(e) => Err(format!("employees could not be read: {e}")),
        };
        checks.push(check("qad.roles", roles));
        checks
    }

    /// `twilio.api_key` and `twilio.auth_token`, each credential read for the origin of the
    /// Twilio base URL (unset if set for another).
    async fn twilio_checks(&self, s: &TenantSettings) -> Result<Vec<pb::ConnectionCheck>, Status> {
        let origin = match Origin::of(&s.twilio.base_url) {
            Ok(o) => o,
            Err(e) => {
                let e = format!("twilio.base_url: {e}");
                return Ok(vec![
                    check("twilio.api_key", Err(e.clone())),
                    check("twilio.auth_token", Err(format!("not tried: {e}"))),
                ]);
            }
        };
        let states = self.store.secret_states(&s.tenant.id).await.map_err(store_status)?;
        let secret = |field: &'static str| {
            let (store, keys, tenant, origin) = (self.store.clone(), self.keys.clone(), s.tenant.id.clone(), origin.clone());
            let states = &states;
            async move {
                store
                    .secret(&keys, &tenant, field, &origin)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| unset(field, &origin, states))
            }
        };
        let key = match (secret(SECRET_TWILIO_API_KEY_SID).await, secret(SECRET_TWILIO_API_KEY_SECRET).await) {
            (Ok(sid), Ok(secret)) if !s.twilio.account_sid.is_empty() => Ok(TwilioClient::new(
                self.poller.http.clone(),
                TwilioConfig {
                    base_url: s.twilio.base_url.clone(),
                    account_sid: s.twilio.account_sid.clone(),
                    api_key_sid: sid.expose().to_string(),
                    api_key_secret: secret,
                },
            )),
            (Ok(_), Ok(_)) => Err("the tenant has no Twilio account SID (Tenants.UpdateTenant, field twilio)".to_string()),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        Ok(match key {
            Ok(client) => {
                let token = match secret(SECRET_TWILIO_AUTH_TOKEN).await {
                    Ok(token) => client.check_auth_token(&token).await,
                    Err(e) => Err(e),
                };
                vec![
                    check("twilio.api_key", client.check_api_key().await),
                    check("twilio.auth_token", token),
                ]
            }
            Err(e) => vec![
                check("twilio.api_key", Err(e.clone())),
                check("twilio.auth_token", Err(format!("not tried: {e}"))),
            ],
        })
    }
}

/// A failed first check, and every check after it marked not tried.
fn not_tried(first: pb::ConnectionCheck, streams: &[crate::poller::Stream]) -> Vec<pb::ConnectionCheck> {
    let why = format!("not tried: {} failed", first.name);
    let mut checks = vec![first];
    checks.extend(streams.iter().map(|s| check(&format!("qad.browse.{}", s.name), Err(why.clone()))));
    checks.push(check("qad.roles", Err(why)));
    checks
}

/// Why a credential reads as unset: never set, or set for another origin.
fn unset(field: &str, origin: &Origin, states: &[SecretState]) -> String {
    match states.iter().find(|c| c.field == field).and_then(|c| c.origin.as_deref()) {
        Some(other) if other != origin.as_str() => {
            format!("{field} was set for {other}, not {origin}: set it again for the new base URL (Tenants.SetTwilioCredentials)")
        }
        _ => format!("{field} is not set (Tenants.SetTwilioCredentials)"),
    }
}
