//! `mlconnector.v1.Polls`.

use tonic::{Request, Response, Status};

use super::{Control, opt_time, pb, store_status, time};
use crate::poller::PollError;
use crate::scheduler::PollNowError;
use crate::store::PollRow;

pub struct PollsService(pub Control);

fn poll_out(p: &PollRow) -> pb::Poll {
    pb::Poll {
        id: p.id,
        tenant_id: p.tenant_id.clone(),
        requested_by: p.requested_by.clone(),
        started_at: time(p.started_at),
        finished_at: opt_time(p.finished_at),
        outcome: p.outcome.clone(),
        rows_read: p.rows_read,
        rows_changed: p.rows_changed,
        opened: p.opened,
        resolved: p.resolved,
        row_errors: p.row_errors,
        error: p.error.clone().unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl pb::polls_server::Polls for PollsService {
    async fn poll_now(&self, req: Request<pb::PollNowRequest>) -> Result<Response<pb::Poll>, Status> {
        let c = &self.0;
        let tenant = req.into_inner().tenant_id;
        let report = match c.scheduler.poll_now(&tenant, "grpc").await {
            Ok(r) => r,
            Err(e @ (PollNowError::AlreadyRunning(_) | PollNowError::HeldElsewhere(..))) => {
                return Err(Status::failed_precondition(e.to_string()));
            }
            Err(PollNowError::Poll(PollError::Store(e))) => return Err(store_status(e)),
            // Before a poll starts: no credentials, a schedule that no longer parses…
            Err(PollNowError::Poll(e)) => return Err(Status::failed_precondition(format!("tenant {tenant} cannot be polled: {e}"))),
        };
        let polls = c.store.polls(&tenant, 20).await.map_err(store_status)?;
        let row = polls
            .iter()
            .find(|p| p.id == report.poll_id)
            .ok_or_else(|| Status::internal(format!("poll {} is missing from the history", report.poll_id)))?;
        Ok(Response::new(poll_out(row)))
    }

    async fn list_polls(&self, req: Request<pb::ListPollsRequest>) -> Result<Response<pb::ListPollsResponse>, Status> {
        let c = &self.0;
        let r = req.into_inner();
        c.store.tenant_settings(&r.tenant_id).await.map_err(store_status)?;
        let limit = if r.limit <= 0 { 20 } else { r.limit.min(1000) };
        let polls = c.store.polls(&r.tenant_id, limit as i64).await.map_err(store_status)?;
        Ok(Response::new(pb::ListPollsResponse {
            polls: polls.iter().map(poll_out).collect(),
        }))
    }

    async fn list_cursors(&self, req: Request<pb::ListCursorsRequest>) -> Result<Response<pb::ListCursorsResponse>, Status> {
        let c = &self.0;
        let tenant = req.into_inner().tenant_id;
        c.store.tenant_settings(&tenant).await.map_err(store_status)?;
        let cursors = c.store.cursors(&tenant).await.map_err(store_status)?;
        Ok(Response::new(pb::ListCursorsResponse {
            cursors: cursors
                .into_iter()
                .map(|(stream, cursor, at)| pb::Cursor {
                    stream,
                    cursor,
                    updated_at: time(at),
                })
                .collect(),
        }))
    }
}
