//! Every request field's shape (range, pattern, length, from `core::limits`) checked before
//! any handler reads it: [`Validated`] wraps each service and refuses a request with
//! INVALID_ARGUMENT naming the field and quoting at most `QUOTED_CHARS` of its value.
//! `convert` then turns what passed into the host's types (and checks what needs parsing:
//! URLs, phone numbers, schedules, the mapping profile). docs/limits.md lists every limit.

use tonic::{Request, Response, Status};

use super::{invalid, pb};
use crate::core::limits::*;

/// A request whose every field is checked for its shape.
pub(crate) trait Checked {
    fn check(&self) -> Result<(), Status>;
}

/// A service whose requests are [`Checked`] before it sees them.
pub(crate) struct Validated<S>(pub S);

/// `v` quoted for an error: at most [`QUOTED_CHARS`] characters, control characters
/// escaped, and the length of the whole said when it was cut.
pub(crate) fn quote(v: &str) -> String {
    match v.char_indices().nth(QUOTED_CHARS) {
        None => format!("{v:?}"),
        Some((cut, _)) => format!("{:?}… ({} characters in all)", &v[..cut], v.chars().count()),
    }
}

fn text(field: &str, v: &str, max: usize) -> Result<(), Status> {
    let chars = v.chars().count();
    if chars > max {
        return Err(invalid(field, format!("{} is {chars} characters long, more than {max}", quote(v))));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(field, format!("{} holds a control character", quote(v))));
    }
    Ok(())
}

fn required(field: &str, v: &str, max: usize) -> Result<(), Status> {
    text(field, v, max)?;
    if v.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    Ok(())
}

/// A secret is kept exactly as given: required, capped, no control characters, not trimmed.
fn secret(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(invalid(field, "is required"));
    }
    let chars = v.chars().count();
    if chars > SECRET_MAX_CHARS {
        // A secret is never quoted, even in part.
        return Err(invalid(field, format!("is {chars} characters long, more than {SECRET_MAX_CHARS}")));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(field, "holds a control character"));
    }
    Ok(())
}

fn tenant_id(field: &str, v: &str) -> Result<(), Status> {
    if is_tenant_id(v) {
        return Ok(());
    }
    Err(invalid(
        field,
        format!(
            "{} must be 1–{TENANT_ID_MAX} lower-case letters, digits or dashes, not starting with a dash",
            quote(v)
        ),
    ))
}

fn optional_tenant_id(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() { Ok(()) } else { tenant_id(field, v) }
}

fn one_of(field: &str, v: &str, allowed: &[&str], optional: bool) -> Result<(), Status> {
    if (optional && v.is_empty()) || allowed.contains(&v) {
        return Ok(());
    }
    let empty = if optional { ", or empty" } else { "" };
    Err(invalid(field, format!("{} is not one of {}{empty}", quote(v), allowed.join(", "))))
}

fn range(field: &str, v: i64, min: i64, max: i64) -> Result<(), Status> {
    if (min..=max).contains(&v) {
        return Ok(());
    }
    Err(invalid(field, format!("{v} is not between {min} and {max}")))
}

fn at_least(field: &str, v: i64, min: i64) -> Result<(), Status> {
    range(field, v, min, i64::MAX)
}

/// A base URL credentials may be sent to: `http(s)://host[:port][/path]` and nothing that
/// could carry or redirect them (user info, query, fragment).
fn base_url(field: &str, v: &str) -> Result<(), Status> {
    text(field, v, URL_MAX_CHARS)?;
    let u = url::Url::parse(v).map_err(|e| invalid(field, format!("{} is not a URL ({e})", quote(v))))?;
    let problem = if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        "must be an http(s) URL with a host"
    } else if !u.username().is_empty() || u.password().is_some() {
        "must not hold a user name or password (credentials are set with their own calls)"
    } else if u.query().is_some() || u.fragment().is_some() {
        "must not have a query or a fragment"
    } else {
        return Ok(());
    };
    Err(invalid(field, format!("{} {problem}", quote(v))))
}

/// A QAD domain or entity code (it goes into the `x-qad-workspace-id` header).
fn qad_code(field: &str, v: &str) -> Result<(), Status> {
    let code = v.trim();
    let ok = (1..=QAD_CODE_MAX_CHARS).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        return Ok(());
    }
    Err(invalid(
        field,
        format!("{} must be 1–{QAD_CODE_MAX_CHARS} ASCII letters, digits, `_`, `-` or `.`", quote(v)),
    ))
}

/// A Twilio SID: the prefix and 32 hex digits.
fn sid(field: &str, v: &str, prefix: &str) -> Result<(), Status> {
    let ok = v.len() == 34 && v.starts_with(prefix) && v[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        return Ok(());
    }
    Err(invalid(
        field,
        format!("{} is not a Twilio SID ({prefix} and 32 hex digits)", quote(v)),
    ))
}

fn json(field: &str, v: &str) -> Result<(), Status> {
    if v.len() > SETTINGS_JSON_MAX_BYTES {
        return Err(invalid(
            field,
            format!("is {} bytes long, more than {SETTINGS_JSON_MAX_BYTES}", v.len()),
        ));
    }
    Ok(())
}

fn schedule(field: &str, s: &pb::Schedule) -> Result<(), Status> {
    let every = s.every_seconds;
    if every != 0 && !(POLL_INTERVAL_MIN_SECONDS..=POLL_INTERVAL_MAX_SECONDS).contains(&every) {
        return Err(invalid(
            &format!("{field}.every_seconds"),
            format!("{every} is not between {POLL_INTERVAL_MIN_SECONDS} and {POLL_INTERVAL_MAX_SECONDS} (a week)"),
        ));
    }
    text(&format!("{field}.cron"), &s.cron, CRON_MAX_CHARS)?;
    text(&format!("{field}.time_zone"), &s.time_zone, TIME_ZONE_MAX_CHARS)?;
    text(&format!("{field}.active_from"), &s.active_from, 5)?;
    text(&format!("{field}.active_until"), &s.active_until, 5)
}

fn qad(field: &str, q: &pb::QadSettings) -> Result<(), Status> {
    base_url(&format!("{field}.base_url"), &q.base_url)?;
    qad_code(&format!("{field}.domain"), &q.domain)?;
    qad_code(&format!("{field}.entity"), &q.entity)
}

fn twilio(field: &str, t: &pb::TwilioSettings) -> Result<(), Status> {
    if !t.account_sid.is_empty() {
        sid(&format!("{field}.account_sid"), t.account_sid.trim(), "AC")?;
    }
    text(&format!("{field}.from_number"), &t.from_number, PHONE_MAX_CHARS)?;
    if !t.base_url.is_empty() {
        base_url(&format!("{field}.base_url"), t.base_url.trim())?;
    }
    Ok(())
}

/// The settable fields of a tenant the mask names (all of them when it is empty or absent).
/// Output-only fields (credentials, active_plugin_version, created_at, updated_at) are
/// ignored on input, so a tenant read with GetTenant can be sent back as it is.
fn tenant(field: &str, t: &pb::Tenant, mask: &[String]) -> Result<(), Status> {
    tenant_id(&format!("{field}.id"), &t.id)?;
    let named = |f: &str| mask.is_empty() || mask.iter().any(|m| m == f);
    let at = |f: &str| format!("{field}.{f}");
    if named("name") {
        required(&at("name"), &t.name, NAME_MAX_CHARS)?;
    }
    if let (true, Some(q)) = (named("qad"), &t.qad) {
        qad(&at("qad"), q)?;
    }
    if let (true, Some(tw)) = (named("twilio"), &t.twilio) {
        twilio(&at("twilio"), tw)?;
    }
    if let (true, Some(s)) = (named("schedule"), &t.schedule) {
        schedule(&at("schedule"), s)?;
    }
    if named("profile_json") {
        json(&at("profile_json"), &t.profile_json)?;
    }
    if named("plugin_settings_json") {
        json(&at("plugin_settings_json"), &t.plugin_settings_json)?;
    }
    Ok(())
}

fn update_mask(field: &str, mask: &[String]) -> Result<(), Status> {
    if mask.len() > UPDATE_MASK_MAX_ENTRIES {
        return Err(invalid(
            field,
            format!("names {} fields, more than {UPDATE_MASK_MAX_ENTRIES}", mask.len()),
        ));
    }
    mask.iter()
        .enumerate()
        .try_for_each(|(i, m)| required(&format!("{field}[{i}]"), m, UPDATE_MASK_ENTRY_MAX_CHARS))
}

const RECORD_KINDS: [&str; 3] = ["supplier_invoice", "purchase_order", "goods_receipt"];

fn record_key(field: &str, v: &str) -> Result<(), Status> {
    text(field, v, RECORD_KEY_MAX_CHARS)
}

fn since(field: &str, v: &str) -> Result<(), Status> {
    text(field, v, TOKEN_MAX_CHARS)
}

fn page(field: &str, p: Option<&pb::Page>) -> Result<(), Status> {
    let Some(p) = p else { return Ok(()) };
    range(&format!("{field}.page_size"), p.page_size.into(), 0, LIST_MAX.into())?;
    let token = &p.page_token;
    if token.len() > 20 || !token.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            &format!("{field}.page_token"),
            format!("{} is not a token this API gave", quote(token)),
        ));
    }
    Ok(())
}

impl Checked for pb::CreateTenantRequest {
    fn check(&self) -> Result<(), Status> {
        let t = self.tenant.as_ref().ok_or_else(|| invalid("tenant", "is required"))?;
        tenant("tenant", t, &[])
    }
}

impl Checked for pb::UpdateTenantRequest {
    fn check(&self) -> Result<(), Status> {
        update_mask("update_mask", &self.update_mask)?;
        let t = self.tenant.as_ref().ok_or_else(|| invalid("tenant", "is required"))?;
        tenant("tenant", t, &self.update_mask)
    }
}

impl Checked for pb::GetTenantRequest {
    fn check(&self) -> Result<(), Status> {
        tenant_id("id", &self.id)
    }
}

impl Checked for pb::DeleteTenantRequest {
    fn check(&self) -> Result<(), Status> {
        tenant_id("id", &self.id)
    }
}

impl Checked for pb::ListTenantsRequest {
    fn check(&self) -> Result<(), Status> {
        Ok(())
    }
}

impl Checked for pb::SetQadCredentialsRequest {
    fn check(&self) -> Result<(), Status> {
        tenant_id("tenant_id", &self.tenant_id)?;
        required("username", &self.username, USERNAME_MAX_CHARS)?;
        secret("password", &self.password)
    }
}

impl Checked for pb::SetTwilioCredentialsRequest {
    fn check(&self) -> Result<(), Status> {
        tenant_id("tenant_id", &self.tenant_id)?;
        if !self.api_key_sid.is_empty() {
            sid("api_key_sid", &self.api_key_sid, "SK")?;
        }
        if !self.api_key_secret.is_empty() {
            secret("api_key_secret", &self.api_key_secret)?;
        }
        if !self.auth_token.is_empty() {
            secret("auth_token", &self.auth_token)?;
        }
        Ok(())
    }
}

impl Checked for pb::SetScheduleRequest {
    fn check(&self) -> Result<(), Status> {
        tenant_id("tenant_id", &self.tenant_id)?;
        self.schedule.as_ref().map_or(Ok(()), |s| schedule("schedule", s))
    }
}

/// Requests that name only a tenant.
macro_rules! tenant_only {
    ($($t:ty),*) => {$(
        impl Checked for $t {
            fn check(&self) -> Result<(), Status> {
                tenant_id("tenant_id", &self.tenant_id)
            }
        }
    )*};
}

tenant_only!(
    pb::TestConnectionRequest,
    pb::UploadPluginRequest,
    pb::ListPluginVersionsRequest,
    pb::PollNowRequest,
    pb::ListCursorsRequest
);

impl Checked for pb::ActivatePluginRequest {
    fn check(&self) -> Result<(), Status> {
        tenant_id("tenant_id", &self.tenant_id)?;
        at_least("version", self.version, 0)
    }
}

impl Checked for pb::DryRunRequest {
    fn check(&self) -> Result<(), Status> {
        tenant_id("tenant_id", &self.tenant_id)?;
        at_least("version", self.version, -1)?;
        one_of("record_kind", &self.record_kind, &RECORD_KINDS, true)?;
        record_key("record_key", &self.record_key)
    }
}

impl Checked for pb::ListRecordsRequest {
    fn check(&self) -> Result<(), Status> {
        optional_tenant_id("tenant_id", &self.tenant_id)?;
        one_of("state", &self.state, &["open", "resolved"], true)?;
        one_of("kind", &self.kind, &RECORD_KINDS, true)?;
        since("opened_since", &self.opened_since)?;
        page("page", self.page.as_ref())
    }
}

impl Checked for pb::ListAlertsRequest {
    fn check(&self) -> Result<(), Status> {
        optional_tenant_id("tenant_id", &self.tenant_id)?;
        let states = ["queued", "running", "done", "failed", "dead", "cancelled", "unknown"];
        one_of("state", &self.state, &states, true)?;
        one_of("kind", &self.kind, &["send", "confirm", "qad_comment", "qad_decision"], true)?;
        since("created_since", &self.created_since)?;
        page("page", self.page.as_ref())
    }
}

impl Checked for pb::GetRecordRequest {
    fn check(&self) -> Result<(), Status> {
        tenant_id("tenant_id", &self.tenant_id)?;
        one_of("kind", &self.kind, &RECORD_KINDS, false)?;
        record_key("record_key", &self.record_key)
    }
}

impl Checked for pb::ReplayRequest {
    fn check(&self) -> Result<(), Status> {
        tenant_id("tenant_id", &self.tenant_id)?;
        at_least("alert_id", self.alert_id, 1)
    }
}

impl Checked for pb::WatchRequest {
    fn check(&self) -> Result<(), Status> {
        optional_tenant_id("tenant_id", &self.tenant_id)?;
        at_least("after_id", self.after_id, 0)
    }
}

impl Checked for pb::ListPollsRequest {
    fn check(&self) -> Result<(), Status> {
        tenant_id("tenant_id", &self.tenant_id)?;
        range("limit", self.limit.into(), 0, LIST_MAX.into())
    }
}

/// Check a request, and (debug builds only) panic when the test hook names its type: the
/// catch-panic layer's test needs a handler that panics, and a release build has none.
fn check<T: Checked>(req: &Request<T>) -> Result<(), Status> {
    #[cfg(debug_assertions)]
    if let Ok(name) = std::env::var("ML_CONNECTOR_TEST_PANIC_ON")
        && std::any::type_name::<T>().ends_with(&format!("::{name}"))
    {
        panic!("test hook: a handler panics on {name}");
    }
    req.get_ref().check()
}

/// `impl $service for Validated<S>`: every method checks its request, then calls `S`'s.
macro_rules! validated {
    ($service:path, { $($method:ident($req:ty) -> $resp:ty;)* } $($extra:tt)*) => {
        #[tonic::async_trait]
        impl<S: $service> $service for Validated<S> {
            $(
                async fn $method(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                    check(&req)?;
                    self.0.$method(req).await
                }
            )*
            $($extra)*
        }
    };
}

validated!(pb::tenants_server::Tenants, {
    create_tenant(pb::CreateTenantRequest) -> pb::Tenant;
    get_tenant(pb::GetTenantRequest) -> pb::Tenant;
    list_tenants(pb::ListTenantsRequest) -> pb::ListTenantsResponse;
    update_tenant(pb::UpdateTenantRequest) -> pb::Tenant;
    delete_tenant(pb::DeleteTenantRequest) -> pb::DeleteTenantResponse;
    set_qad_credentials(pb::SetQadCredentialsRequest) -> pb::Tenant;
    set_twilio_credentials(pb::SetTwilioCredentialsRequest) -> pb::Tenant;
    set_schedule(pb::SetScheduleRequest) -> pb::Tenant;
    test_connection(pb::TestConnectionRequest) -> pb::TestConnectionResponse;
});

validated!(pb::plugins_server::Plugins, {
    upload_plugin(pb::UploadPluginRequest) -> pb::PluginVersion;
    list_plugin_versions(pb::ListPluginVersionsRequest) -> pb::ListPluginVersionsResponse;
    activate_plugin(pb::ActivatePluginRequest) -> pb::ActivatePluginResponse;
    dry_run(pb::DryRunRequest) -> pb::DryRunResponse;
});

validated!(pb::polls_server::Polls, {
    poll_now(pb::PollNowRequest) -> pb::Poll;
    list_polls(pb::ListPollsRequest) -> pb::ListPollsResponse;
    list_cursors(pb::ListCursorsRequest) -> pb::ListCursorsResponse;
});

validated!(pb::alerts_server::Alerts, {
    list_records(pb::ListRecordsRequest) -> pb::ListRecordsResponse;
    list_alerts(pb::ListAlertsRequest) -> pb::ListAlertsResponse;
    get_record(pb::GetRecordRequest) -> pb::RecordDetail;
    replay(pb::ReplayRequest) -> pb::ReplayResponse;
}
    type WatchStream = S::WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        check(&req)?;
        self.0.watch(req).await
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quote_is_short_and_on_one_line() {
        assert_eq!(quote("10USA"), "\"10USA\"");
        assert_eq!(quote("a\r\nb"), "\"a\\r\\nb\"");
        let long = "x".repeat(3_000_000);
        let q = quote(&long);
        assert!(q.len() < QUOTED_CHARS + 40, "{q}");
        assert!(q.ends_with("(3000000 characters in all)"), "{q}");
    }

    /// Values seen accepted (issue 22), each refused naming its field.
    #[test]
    fn values_seen_accepted_are_refused_naming_the_field() {
        let base = crate::grpc::convert::tests::tenant;
        let create = |t| pb::CreateTenantRequest { tenant: Some(t) };
        assert!(create(base()).check().is_ok());
        type Edit = fn(&mut pb::Tenant);
        let cases: [(&str, Edit); 9] = [
            ("tenant.schedule.every_seconds", |t| {
                t.schedule.as_mut().unwrap().every_seconds = u64::MAX
            }),
            ("tenant.schedule.every_seconds", |t| {
                t.schedule.as_mut().unwrap().every_seconds = i64::MAX as u64
            }),
            ("tenant.schedule.every_seconds", |t| t.schedule.as_mut().unwrap().every_seconds = 1),
            ("tenant.qad.domain", |t| {
                t.qad.as_mut().unwrap().domain = "10USA\r\nX-Evil: 1".into()
            }),
            ("tenant.qad.base_url", |t| {
                t.qad.as_mut().unwrap().base_url = "https://u:p@qad.example.com".into()
            }),
            ("tenant.qad.base_url", |t| {
                t.qad.as_mut().unwrap().base_url = "https://qad.example.com/?a=1".into()
            }),
            ("tenant.qad.base_url", |t| {
                t.qad.as_mut().unwrap().base_url = "https://qad.example.com/#f".into()
            }),
            ("tenant.name", |t| t.name = "n".repeat(3 << 20)),
            ("tenant.id", |t| t.id = "x".repeat(3 << 20)),
        ];
        for (field, edit) in cases {
            let mut t = base();
            edit(&mut t);
            let err = create(t).check().expect_err(field);
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}");
            assert!(err.message().starts_with(&format!("{field}: ")), "{field}: {}", err.message());
            assert!(err.message().len() < 300, "{field}: {} characters", err.message().len());
        }
        let creds = pb::SetQadCredentialsRequest {
            tenant_id: "acme".into(),
            username: "mfg".into(),
            password: " pass word ".into(),
        };
        assert!(creds.check().is_ok(), "a password's spaces are its own");
    }
}
