//! Group commit: callers that arrive while a commit is under way wait for the next one
//! together, so one transaction (one write lock, one fsync on PostgreSQL) answers many of
//! them. Each caller is answered only once its own item is committed.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

type Queued<T, R> = (T, oneshot::Sender<Result<R, String>>);

/// A writer task committing items in batches of up to `max_batch`.
pub struct GroupCommit<T, R> {
    tx: mpsc::Sender<Queued<T, R>>,
}

impl<T, R> Clone for GroupCommit<T, R> {
    fn clone(&self) -> Self {
        GroupCommit { tx: self.tx.clone() }
    }
}

impl<T: Send + 'static, R: Send + 'static> GroupCommit<T, R> {
    /// Start the writer. `commit` gets every item waiting (in arrival order) and answers one
    /// result per item, or one error for the lot. The task ends when every handle is gone.
    pub fn spawn<F, Fut>(max_batch: usize, commit: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, String>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<Queued<T, R>>(4 * max_batch);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut buf, max_batch).await > 0 {
                let (items, replies): (Vec<T>, Vec<_>) = buf.drain(..).unzip();
                match commit(items).await {
                    Ok(results) => {
                        for (reply, r) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(r));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        GroupCommit { tx }
    }

    /// Commit `item` with whatever else is waiting; its own result once committed.
    pub async fn submit(&self, item: T) -> Result<R, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((item, reply))
            .await
            .map_err(|_| "the group-commit writer stopped".to_string())?;
        answer.await.map_err(|_| "the group-commit writer stopped".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn concurrent_callers_share_commits_and_each_gets_its_own_answer() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let started = Arc::new(tokio::sync::Notify::new());
        let (held, starting) = (gate.clone(), started.clone());
        let writer = GroupCommit::spawn(64, move |items: Vec<u32>| {
            let (seen, held, starting) = (seen.clone(), held.clone(), starting.clone());
            async move {
                // The first commit waits until everyone has queued behind it.
                if seen.lock().unwrap().is_empty() {
                    starting.notify_one();
                    held.acquire().await.unwrap().forget();
                }
                seen.lock().unwrap().push(items.len());
                if items.contains(&13) {
                    return Err("unlucky".to_string());
                }
                Ok(items.iter().map(|i| i * 2).collect())
            }
        });
        let first = tokio::spawn({
            let w = writer.clone();
            async move { w.submit(1).await }
        });
        started.notified().await;
        let rest: Vec<_> = (2..=12)
            .map(|i| {
                let w = writer.clone();
                tokio::spawn(async move { w.submit(i).await })
            })
            .collect();
        while writer.tx.max_capacity() - writer.tx.capacity() < 11 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(1);
        assert_eq!(first.await.unwrap(), Ok(2));
        for (i, t) in (2..=12).zip(rest) {
            assert_eq!(t.await.unwrap(), Ok(i * 2));
        }
        assert_eq!(*batches.lock().unwrap(), vec![1, 11], "the eleven waiting shared one commit");
        assert_eq!(writer.submit(13).await, Err("unlucky".to_string()));
    }
}
