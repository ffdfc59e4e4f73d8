//! `mlconnector.v1.Alerts`.

use std::pin::Pin;

use chrono::{DateTime, Utc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::convert::{audit_out, episode_out, job_out};
use super::{Control, invalid, pb, store_status};
use crate::store::{ListFilter, Replayed};

pub struct AlertsService(pub Control);

fn filter(tenant: &str, state: &str, kind: &str, since: &str, page: Option<&pb::Page>, since_field: &str) -> Result<ListFilter, Status> {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let since = match since {
        "" => None,
        s => Some(
            DateTime::parse_from_rfc3339(s)
                .map_err(|e| invalid(since_field, format!("{s:?} is not an RFC 3339 time ({e})")))?
                .with_timezone(&Utc),
        ),
    };
    let (size, token) = page.map(|p| (p.page_size, p.page_token.as_str())).unwrap_or((0, ""));
    let before_id = match token {
        "" => None,
        t => Some(
            t.parse::<i64>()
                .map_err(|_| invalid("page.page_token", format!("{t:?} is not a token this API gave")))?,
        ),
    };
    Ok(ListFilter {
        tenant: opt(tenant),
        state: opt(state),
        kind: opt(kind),
        since,
        before_id,
        limit: if size <= 0 { 50 } else { size.min(1000) as i64 },
    })
}

/// The next page's token: the last id, when the page came back full.
fn next_token(len: usize, limit: i64, last_id: Option<i64>) -> String {
    match last_id {
        Some(id) if len as i64 == limit => id.to_string(),
        _ => String::new(),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::alerts_server::Alerts for AlertsService {
    async fn list_records(&self, req: Request<pb::ListRecordsRequest>) -> Result<Response<pb::ListRecordsResponse>, Status> {
        let r = req.into_inner();
        let f = filter(&r.tenant_id, &r.state, &r.kind, &r.opened_since, r.page.as_ref(), "opened_since")?;
        let rows = self.0.store.list_episodes(&f).await.map_err(store_status)?;
        Ok(Response::new(pb::ListRecordsResponse {
            next_page_token: next_token(rows.len(), f.limit, rows.last().map(|e| e.id)),
            records: rows.iter().map(episode_out).collect(),
        }))
    }

    async fn list_alerts(&self, req: Request<pb::ListAlertsRequest>) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let r = req.into_inner();
        let f = filter(&r.tenant_id, &r.state, &r.kind, &r.created_since, r.page.as_ref(), "created_since")?;
        let rows = self.0.store.list_jobs(&f).await.map_err(store_status)?;
        Ok(Response::new(pb::ListAlertsResponse {
            next_page_token: next_token(rows.len(), f.limit, rows.last().map(|j| j.id)),
            alerts: rows.iter().map(job_out).collect(),
        }))
    }

    async fn get_record(&self, req: Request<pb::GetRecordRequest>) -> Result<Response<pb::RecordDetail>, Status> {
        let r = req.into_inner();
        let store = &self.0.store;
        let (episodes, jobs, data) = store
            .record_history(&r.tenant_id, &r.kind, &r.record_key)
            .await
            .map_err(store_status)?;
        let audit = store
            .audit_trail(&r.tenant_id, &r.kind, &r.record_key)
            .await
            .map_err(store_status)?;
        if episodes.is_empty() && jobs.is_empty() && audit.is_empty() && data.is_none() {
            return Err(Status::not_found(format!(
                "tenant {} has no {} {} on record",
                r.tenant_id, r.kind, r.record_key
            )));
        }
        Ok(Response::new(pb::RecordDetail {
            episodes: episodes.iter().map(episode_out).collect(),
            alerts: jobs.iter().map(job_out).collect(),
            audit: audit.iter().map(|a| audit_out(&r.tenant_id, a)).collect(),
            data_json: data.map(|d| d.to_string()).unwrap_or_default(),
        }))
    }

    async fn replay(&self, req: Request<pb::ReplayRequest>) -> Result<Response<pb::ReplayResponse>, Status> {
        let c = &self.0;
        let r = req.into_inner();
        let outcome = c
            .store
            .replay_job(&r.tenant_id, r.alert_id, r.accept_possible_duplicate, c.now())
            .await
            .map_err(store_status)?;
        let replayed = match outcome {
            Replayed::NotFound => {
                return Err(Status::not_found(format!("tenant {} has no alert {}", r.tenant_id, r.alert_id)));
            }
            Replayed::OutcomeUnknown => {
                return Err(Status::failed_precondition(format!(
                    "alert {}'s last send has an unknown outcome: it may have reached the person. Replay with accept_possible_duplicate \
                     to look at Twilio first and send only if it finds nothing",
                    r.alert_id
                )));
            }
            Replayed::Queued => {
                tracing::info!(tenant = %r.tenant_id, job = r.alert_id, "job replayed over gRPC");
                c.feed.nudge();
                true
            }
            Replayed::Unchanged => false,
        };
        let job = c.store.job_row(&r.tenant_id, r.alert_id).await.map_err(store_status)?;
        Ok(Response::new(pb::ReplayResponse {
            replayed,
            alert: job.as_ref().map(job_out),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        // The stream outlives this answer: its connection is not idle while it is open.
        let open = super::conn::CallGuard::of(req.extensions());
        let r = req.into_inner();
        if r.after_id < 0 {
            return Err(invalid("after_id", "must be 0 or an event id"));
        }
        let tenant = (!r.tenant_id.is_empty()).then_some(r.tenant_id);
        let rx = self.0.feed.watch(r.after_id, tenant)?;
        let stream = ReceiverStream::new(rx).map(move |m| {
            let _open = &open;
            m
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
