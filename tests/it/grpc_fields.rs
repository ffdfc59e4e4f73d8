//! Every field of every request, from the protos' own descriptors: an over-long, badly
//! shaped or out-of-range value in any of them is refused with INVALID_ARGUMENT naming the
//! field and quoting little of it, or is in the one list of documented exceptions. And a
//! handler that panics answers INTERNAL, the host serving on.

use std::collections::HashMap;

use ml_connector::grpc::pb;
use ml_connector::secrets::generate_master_key;
use ml_connector_tests::fresh_db;
use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};

use crate::grpc::{TOKEN, serve};

/// Fields a hostile value does not make INVALID_ARGUMENT, each with why: (request message,
/// field path, which value): the message `*` for any, a path ending in `.` for every field
/// under it, the value `*` for any.
const EXCEPTIONS: [(&str, &str, &str, &str); 8] = [
    (
        "*",
        "tenant.credentials.",
        "*",
        "output only: ignored on input (GetTenant's answer can be sent back)",
    ),
    (
        "*",
        "tenant.active_plugin_version",
        "*",
        "output only: ignored on input (ActivatePlugin sets it)",
    ),
    ("*", "tenant.created_at", "*", "output only: ignored on input"),
    ("*", "tenant.updated_at", "*", "output only: ignored on input"),
    (
        "ActivatePluginRequest",
        "version",
        "max",
        "any version; one never uploaded is NOT_FOUND",
    ),
    ("DryRunRequest", "version", "max", "any version; one never uploaded is NOT_FOUND"),
    ("ReplayRequest", "alert_id", "max", "any id; an unknown one is NOT_FOUND"),
    (
        "WatchRequest",
        "after_id",
        "max",
        "resumes after any id: past the last one, it waits",
    ),
];

/// Bytes in, bytes out: requests built by hand from the descriptors.
#[derive(Clone, Copy)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(tag: i32, wire: u64, out: &mut Vec<u8>) {
    varint(((tag as u64) << 3) | wire, out);
}

fn length_delimited(tag: i32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    key(tag, 2, &mut out);
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// A hostile value of a field's type: its name and its encoding (without the key).
#[derive(Clone)]
enum Hostile {
    Text(&'static str, String),
    Int(&'static str, u64),
}

fn hostile_values(t: Type) -> Vec<Hostile> {
    match t {
        Type::String => vec![
            Hostile::Text("long", "x".repeat(100_000)),
            Hostile::Text("control", "bad\r\nvalue".into()),
        ],
        Type::Int32 => vec![Hostile::Int("min", -2i64 as u64), Hostile::Int("max", i32::MAX as u64)],
        Type::Int64 => vec![Hostile::Int("min", -2i64 as u64), Hostile::Int("max", i64::MAX as u64)],
        Type::Uint64 => vec![
            Hostile::Int("max", u64::MAX),
            Hostile::Int("i64max", i64::MAX as u64),
            Hostile::Int("min", 1),
        ],
        Type::Uint32 => vec![Hostile::Int("max", u32::MAX as u64)],
        _ => vec![],
    }
}

struct Messages(HashMap<String, DescriptorProto>);

impl Messages {
    fn of(set: &FileDescriptorSet) -> Self {
        let mut all = HashMap::new();
        for f in set.file.iter().filter(|f| f.package() == "mlconnector.v1") {
            for m in &f.message_type {
                all.insert(format!(".mlconnector.v1.{}", m.name()), m.clone());
            }
        }
        Messages(all)
    }

    /// Every string and integer field reachable from `message`: the path of fields to it.
    fn leaves(&self, message: &str, path: Vec<FieldDescriptorProto>, out: &mut Vec<Vec<FieldDescriptorProto>>) {
        let m = &self.0[message];
        for f in &m.field {
            let mut p = path.clone();
            p.push(f.clone());
            match f.r#type() {
                Type::Message if path.len() < 4 => self.leaves(f.type_name(), p, out),
                t if !hostile_values(t).is_empty() => out.push(p),
                _ => {}
            }
        }
    }
}

/// What a new element of a repeated message needs beside the hostile field, so that the
/// refusal is the hostile field's.
fn filler(message: &str) -> Vec<u8> {
    match message {
        ".mlconnector.v1.DecisionRoles" => pb::DecisionRoles {
            record_kind: "goods_receipt".into(),
            roles: vec![],
        }
        .encode_to_vec(),
        _ => vec![],
    }
}

/// The baseline request plus the hostile value at `path` (protobuf merges a nested message
/// given again, and the last value of a scalar wins).
fn with_hostile(baseline: &[u8], path: &[FieldDescriptorProto], value: &Hostile) -> Vec<u8> {
    let leaf = path.last().unwrap();
    let mut inner = Vec::new();
    match value {
        Hostile::Text(_, s) => inner = length_delimited(leaf.number(), s.as_bytes()),
        Hostile::Int(_, v) => {
            key(leaf.number(), 0, &mut inner);
            varint(*v, &mut inner);
        }
    }
    for f in path[..path.len() - 1].iter().rev() {
        let mut body = if f.label() == Label::Repeated {
            filler(f.type_name())
        } else {
            vec![]
        };
        body.extend(inner);
        inner = length_delimited(f.number(), &body);
    }
    let mut out = baseline.to_vec();
    out.extend(inner);
    out
}

fn tenant() -> pb::Tenant {
    pb::Tenant {
        id: "acme".into(),
        name: "Acme".into(),
        qad: Some(pb::QadSettings {
            base_url: "http://127.0.0.1:9/qad-central".into(),
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

/// A valid request for every method, by its input type.
fn baselines() -> HashMap<&'static str, Vec<u8>> {
    let id = || "acme".to_string();
    let tenant_id = id;
    HashMap::from([
        (
            "CreateTenantRequest",
            pb::CreateTenantRequest { tenant: Some(tenant()) }.encode_to_vec(),
        ),
        ("GetTenantRequest", pb::GetTenantRequest { id: id() }.encode_to_vec()),
        ("ListTenantsRequest", vec![]),
        (
            "UpdateTenantRequest",
            pb::UpdateTenantRequest {
                tenant: Some(tenant()),
                update_mask: vec![],
            }
            .encode_to_vec(),
        ),
        ("DeleteTenantRequest", pb::DeleteTenantRequest { id: id() }.encode_to_vec()),
        (
            "SetQadCredentialsRequest",
            pb::SetQadCredentialsRequest {
                tenant_id: tenant_id(),
                username: "mfg".into(),
                password: "secret".into(),
            }
            .encode_to_vec(),
        ),
        (
            "SetTwilioCredentialsRequest",
            pb::SetTwilioCredentialsRequest {
                tenant_id: tenant_id(),
                api_key_sid: format!("SK{}", "0".repeat(32)),
                api_key_secret: "secret".into(),
                auth_token: "token".into(),
            }
            .encode_to_vec(),
        ),
        (
            "SetScheduleRequest",
            pb::SetScheduleRequest {
                tenant_id: tenant_id(),
                schedule: tenant().schedule,
            }
            .encode_to_vec(),
        ),
        (
            "TestConnectionRequest",
            pb::TestConnectionRequest { tenant_id: tenant_id() }.encode_to_vec(),
        ),
        (
            "UploadPluginRequest",
            pb::UploadPluginRequest {
                tenant_id: tenant_id(),
                wasm: vec![0],
                activate: false,
            }
            .encode_to_vec(),
        ),
        (
            "ListPluginVersionsRequest",
            pb::ListPluginVersionsRequest { tenant_id: tenant_id() }.encode_to_vec(),
        ),
        (
            "ActivatePluginRequest",
            pb::ActivatePluginRequest {
                tenant_id: tenant_id(),
                version: 0,
            }
            .encode_to_vec(),
        ),
        (
            "DryRunRequest",
            pb::DryRunRequest {
                tenant_id: tenant_id(),
                samples: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("ListRecordsRequest", pb::ListRecordsRequest::default().encode_to_vec()),
        ("ListAlertsRequest", pb::ListAlertsRequest::default().encode_to_vec()),
        (
            "GetRecordRequest",
            pb::GetRecordRequest {
                tenant_id: tenant_id(),
                kind: "supplier_invoice".into(),
                record_key: "V-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            "ReplayRequest",
            pb::ReplayRequest {
                tenant_id: tenant_id(),
                alert_id: 1,
                accept_possible_duplicate: false,
            }
            .encode_to_vec(),
        ),
        ("WatchRequest", pb::WatchRequest::default().encode_to_vec()),
        ("PollNowRequest", pb::PollNowRequest { tenant_id: tenant_id() }.encode_to_vec()),
        (
            "ListPollsRequest",
            pb::ListPollsRequest {
                tenant_id: tenant_id(),
                limit: 0,
            }
            .encode_to_vec(),
        ),
        (
            "ListCursorsRequest",
            pb::ListCursorsRequest { tenant_id: tenant_id() }.encode_to_vec(),
        ),
    ])
}

async fn call(channel: &tonic::transport::Channel, path: &str, body: Vec<u8>, streaming: bool) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(body);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let path = PathAndQuery::try_from(path.to_string()).unwrap();
    if streaming {
        grpc.server_streaming(req, path, Raw).await.map(|_| ())
    } else {
        grpc.unary(req, path, Raw).await.map(|_| ())
    }
}

/// `tenant.decision_roles[0].roles[1]: …` → `tenant.decision_roles.roles: …`
fn without_indexes(message: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for c in message.chars() {
        match c {
            '[' if !skipping => skipping = true,
            ']' if skipping => skipping = false,
            c if !skipping => out.push(c),
            _ => {}
        }
    }
    out
}

/// Issue 22: `every_seconds` u64::MAX and i64::MAX, a domain with "\r\n", a 3 MB name…
/// were accepted. Every string and integer field of every request of every service gets
/// hostile values; each is refused naming the field, or is a listed exception.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_field_refuses_a_hostile_value_naming_it() {
    let db = fresh_db("sqlite").await;
    let host = serve(&db.url, &generate_master_key(), &[]).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", host.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let set = FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let messages = Messages::of(&set);
    let baselines = baselines();
    // The tenant exists: an update reaches the checks that need the stored tenant.
    call(
        &channel,
        "/mlconnector.v1.Tenants/CreateTenant",
        baselines["CreateTenantRequest"].clone(),
        false,
    )
    .await
    .unwrap();
    let (mut tried, mut problems, mut excepted) = (0, Vec::new(), std::collections::BTreeSet::new());
    let methods = set.file.iter().filter(|f| f.package() == "mlconnector.v1").flat_map(|f| {
        f.service
            .iter()
            .flat_map(|s| s.method.iter().map(move |m| (s.name().to_string(), m.clone())))
    });
    for (service, method) in methods {
        let input = method.input_type().trim_start_matches(".mlconnector.v1.").to_string();
        let baseline = baselines
            .get(input.as_str())
            .unwrap_or_else(|| panic!("no baseline request for {input}: add one"));
        let rpc = format!("/mlconnector.v1.{service}/{}", method.name());
        let mut leaves = Vec::new();
        messages.leaves(method.input_type(), vec![], &mut leaves);
        for path in leaves {
            let name = path.iter().map(|f| f.name()).collect::<Vec<_>>().join(".");
            for value in hostile_values(path.last().unwrap().r#type()) {
                let which = match &value {
                    Hostile::Text(w, _) | Hostile::Int(w, _) => *w,
                };
                let exception = EXCEPTIONS.iter().position(|(m, p, v, _)| {
                    let path = if p.ends_with('.') { name.starts_with(p) } else { *p == name };
                    (*m == "*" || *m == input) && path && (*v == "*" || *v == which)
                });
                if let Some(i) = exception {
                    excepted.insert(i);
                    continue;
                }
                tried += 1;
                let answer = call(&channel, &rpc, with_hostile(baseline, &path, &value), method.server_streaming()).await;
                let ok = match &answer {
                    Err(s) if s.code() == Code::InvalidArgument => {
                        let m = s.message();
                        without_indexes(m).starts_with(&format!("{name}: ")) && m.len() <= 400 && !m.contains(&"x".repeat(101))
                    }
                    _ => false,
                };
                if !ok {
                    let said = answer
                        .err()
                        .map(|s| format!("{:?} {}", s.code(), &s.message()[..s.message().len().min(200)]));
                    problems.push(format!("{rpc} {name} ({which}): {said:?}"));
                }
            }
        }
    }
    assert!(tried > 80, "{tried} cases: the walk found the fields");
    assert_eq!(excepted.len(), EXCEPTIONS.len(), "every exception is still needed");
    assert!(
        problems.is_empty(),
        "{} of {tried} not refused as they should be:\n{}",
        problems.len(),
        problems.join("\n")
    );
    drop(host);
}

/// No handler may panic; if one does, the call is answered INTERNAL (a reset stream used to
/// reach the client as CANCELLED) and the host serves on. The panic comes from a hook only
/// debug builds have (`ML_CONNECTOR_TEST_PANIC_ON`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_internal_and_the_host_serves_on() {
    let db = fresh_db("sqlite").await;
    let host = serve(
        &db.url,
        &generate_master_key(),
        &[("ML_CONNECTOR_TEST_PANIC_ON", "ListCursorsRequest")],
    )
    .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", host.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let req = pb::ListCursorsRequest { tenant_id: "acme".into() }.encode_to_vec();
    for _ in 0..3 {
        let err = call(&channel, "/mlconnector.v1.Polls/ListCursors", req.clone(), false)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{err:?}");
    }
    let other = pb::GetTenantRequest { id: "acme".into() }.encode_to_vec();
    let err = call(&channel, "/mlconnector.v1.Tenants/GetTenant", other, false).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "the host serves on: {err:?}");
    drop(host);
}
