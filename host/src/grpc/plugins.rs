//! `mlconnector.v1.Plugins`.

use std::sync::Arc;

use serde_json::json;
use tonic::{Request, Response, Status};

use super::{Control, invalid, pb, store_status, time};
use crate::core::routing::{AlertInput, Message, PluginContext, Routed};
use crate::core::schedule::Schedule;
use crate::plugin::{DEFAULT_PLUGIN, LoadedPlugin, PluginSettings, sha256_hex};
use crate::store::PluginVersionRow;

pub struct PluginsService(pub Control);

fn version_out(tenant: &str, v: &PluginVersionRow, active: Option<i64>) -> pb::PluginVersion {
    pb::PluginVersion {
        tenant_id: tenant.into(),
        version: v.version,
        sha256: v.sha256.clone(),
        world: v.world.clone(),
        uploaded_at: time(v.uploaded_at),
        active: active == Some(v.version),
        size_bytes: v.size_bytes,
    }
}

fn default_version(tenant: &str, active: Option<i64>) -> pb::PluginVersion {
    pb::PluginVersion {
        tenant_id: tenant.into(),
        version: 0,
        sha256: sha256_hex(DEFAULT_PLUGIN),
        world: "built-in default plugin".into(),
        active: active.is_none(),
        size_bytes: DEFAULT_PLUGIN.len() as i64,
        ..Default::default()
    }
}

fn rendered(r: &Routed) -> pb::RenderedDelivery {
    let d = &r.delivery;
    let (body, keypad) = match &r.message {
        Message::Sms { body } => (body.clone(), vec![]),
        Message::Voice { say, choices } => (
            say.clone(),
            choices
                .iter()
                .map(|c| {
                    format!(
                        "{} {} ({})",
                        c.digit,
                        serde_json::to_value(c.action).unwrap_or_default().as_str().unwrap_or(""),
                        c.label
                    )
                })
                .collect(),
        ),
    };
    pb::RenderedDelivery {
        to_name: d.to.name.clone(),
        to_phone: d.to.phone.clone(),
        channel: d.channel.as_str().into(),
        delay_minutes: d.delay_minutes,
        escalation_step: d.escalation_step as u32,
        body,
        keypad,
    }
}

impl PluginsService {
    async fn version_row(&self, tenant: &str, version: i64) -> Result<(pb::PluginVersion, Option<i64>), Status> {
        let c = &self.0;
        let settings = c.store.tenant_settings(tenant).await.map_err(store_status)?;
        if version == 0 {
            return Ok((default_version(tenant, settings.active_plugin), settings.active_plugin));
        }
        let versions = c.store.plugin_versions(tenant).await.map_err(store_status)?;
        let v = versions
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| Status::not_found(format!("tenant {tenant} has no plugin version {version}")))?;
        Ok((version_out(tenant, v, settings.active_plugin), settings.active_plugin))
    }

    /// The compiled plugin of a version (0: the default; -1: the active one).
    async fn load(&self, tenant: &str, version: i64, active: Option<i64>) -> Result<Arc<LoadedPlugin>, Status> {
        let c = &self.0;
        let version = if version == -1 { active.unwrap_or(0) } else { version };
        let wasm = if version == 0 {
            DEFAULT_PLUGIN.to_vec()
        } else {
            c.store
                .plugin_wasm(tenant, version)
                .await
                .map_err(store_status)?
                .ok_or_else(|| Status::not_found(format!("tenant {tenant} has no plugin version {version}")))?
        };
        c.plugins()
            .load(&wasm)
            .await
            .map_err(|f| Status::failed_precondition(format!("plugin version {version} no longer loads: {f}")))
    }

    /// What the tenant's plugin was given for the record's latest routing.
    async fn recorded_input(&self, tenant: &str, kind: &str, key: &str) -> Result<AlertInput, Status> {
        let trail = self.0.store.audit_trail(tenant, kind, key).await.map_err(store_status)?;
        trail
            .iter()
            .rev()
            .filter(|e| e.event == "routed" || e.event == "plugin_fault")
            .find_map(|e| serde_json::from_value(e.detail["input"].clone()).ok())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "{kind} {key} of tenant {tenant} was never routed by a plugin (dry-run needs a record that needed attention, or samples: true)"
                ))
            })
    }
}

#[tonic::async_trait]
impl pb::plugins_server::Plugins for PluginsService {
    async fn upload_plugin(&self, req: Request<pb::UploadPluginRequest>) -> Result<Response<pb::PluginVersion>, Status> {
        let c = &self.0;
        let r = req.into_inner();
        c.store.tenant_settings(&r.tenant_id).await.map_err(store_status)?;
        if r.wasm.is_empty() {
            return Err(invalid("wasm", "is empty"));
        }
        let loaded = c.plugins().load(&r.wasm).await.map_err(|f| invalid("wasm", f))?;
        let version = c
            .store
            .add_plugin(&r.tenant_id, &r.wasm, &loaded.sha256, loaded.world, c.now())
            .await
            .map_err(store_status)?;
        if r.activate {
            c.store.activate_plugin(&r.tenant_id, Some(version)).await.map_err(store_status)?;
        }
        c.audit_admin(
            &r.tenant_id,
            "plugin_uploaded",
            json!({"version": version, "sha256": loaded.sha256, "world": loaded.world, "activated": r.activate}),
        )
        .await?;
        tracing::info!(tenant = %r.tenant_id, version, world = loaded.world, "plugin uploaded over gRPC");
        Ok(Response::new(self.version_row(&r.tenant_id, version).await?.0))
    }

    async fn list_plugin_versions(
        &self,
        req: Request<pb::ListPluginVersionsRequest>,
    ) -> Result<Response<pb::ListPluginVersionsResponse>, Status> {
        let c = &self.0;
        let tenant = req.into_inner().tenant_id;
        let active = c.store.tenant_settings(&tenant).await.map_err(store_status)?.active_plugin;
        let mut versions = vec![default_version(&tenant, active)];
        versions.extend(
            c.store
                .plugin_versions(&tenant)
                .await
                .map_err(store_status)?
                .iter()
                .map(|v| version_out(&tenant, v, active)),
        );
        Ok(Response::new(pb::ListPluginVersionsResponse { versions }))
    }

    async fn activate_plugin(&self, req: Request<pb::ActivatePluginRequest>) -> Result<Response<pb::ActivatePluginResponse>, Status> {
        let c = &self.0;
        let r = req.into_inner();
        if r.version < 0 {
            return Err(invalid("version", "must be 0 (the default plugin) or an uploaded version"));
        }
        let (_, previous) = self.version_row(&r.tenant_id, r.version).await?;
        // Refuse a version this host can no longer run rather than activating a broken plugin.
        self.load(&r.tenant_id, r.version, previous).await?;
        c.store
            .activate_plugin(&r.tenant_id, (r.version > 0).then_some(r.version))
            .await
            .map_err(store_status)?;
        c.audit_admin(
            &r.tenant_id,
            "plugin_activated",
            json!({"version": r.version, "previous": previous.unwrap_or(0)}),
        )
        .await?;
        Ok(Response::new(pb::ActivatePluginResponse {
            previous_version: previous.unwrap_or(0),
            active: Some(self.version_row(&r.tenant_id, r.version).await?.0),
        }))
    }

    async fn dry_run(&self, req: Request<pb::DryRunRequest>) -> Result<Response<pb::DryRunResponse>, Status> {
        let c = &self.0;
        let r = req.into_inner();
        let tenant = c.store.tenant_settings(&r.tenant_id).await.map_err(store_status)?;
        let plugin = self.load(&r.tenant_id, r.version, tenant.active_plugin).await?;
        let settings: PluginSettings = serde_json::from_str(&tenant.plugin_settings)
            .map_err(|e| Status::failed_precondition(format!("the tenant's plugin settings do not parse: {e}")))?;
        let tz = Schedule::parse(&tenant.tenant.schedule)
            .map_err(|e| Status::failed_precondition(format!("the tenant's schedule: {e}")))?
            .time_zone();
        let inputs = if r.samples {
            crate::plugin_check::samples()
        } else {
            if r.record_kind.is_empty() || r.record_key.is_empty() {
                return Err(invalid("record_key", "give record_kind and record_key, or samples: true"));
            }
            vec![self.recorded_input(&r.tenant_id, &r.record_kind, &r.record_key).await?]
        };
        let ctx = PluginContext::at(&r.tenant_id, &settings.config.to_string(), c.now(), tz);
        let mut results = Vec::new();
        for input in &inputs {
            let outcome = c.plugins().route_and_render(&plugin, settings.limits, &ctx, input).await;
            let mut result = pb::DryRunResult {
                record_kind: input.kind.as_str().into(),
                record_key: input.key.clone(),
                ..Default::default()
            };
            match outcome {
                Ok(o) => {
                    result.deliveries = o.routed.iter().map(rendered).collect();
                    result.logs = o.logs.iter().map(|l| format!("{}: {}", l.level, l.message)).collect();
                }
                Err(f) => {
                    result.fault_kind = serde_json::to_value(f.kind).unwrap_or_default().as_str().unwrap_or("").into();
                    result.fault = f.to_string();
                }
            }
            results.push(result);
        }
        Ok(Response::new(pb::DryRunResponse { results }))
    }
}
