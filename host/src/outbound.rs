//! HTTP to QAD and Twilio: the requests that carry a tenant's credentials. One client that
//! follows no redirect (a 3xx is taken as the answer: followed, a 307 would carry the QAD
//! password's form body, or Basic credentials, to wherever it points), and answers read up
//! to a cap, so a server cannot grow the process by answering without end.

use std::time::Duration;

use thiserror::Error;

/// The client every QAD and Twilio request goes through: no redirect followed, a deadline
/// on the whole exchange (body included).
pub fn client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

#[derive(Debug, Error)]
pub enum BodyError {
    #[error("the answer is larger than the {cap}-byte cap")]
    TooLarge { cap: usize },
    #[error("reading the answer failed: {0}")]
    Read(#[source] reqwest::Error),
}

impl BodyError {
    /// Worth another try: the connection broke or timed out mid-body.
    pub fn is_transient(&self) -> bool {
        matches!(self, BodyError::Read(_))
    }
}

/// The body of an answer, at most `cap` bytes: refused as soon as it says or shows it is
/// larger, without reading the rest.
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge { cap });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge { cap });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
