//! The gRPC listener's connections, bounded against slow, idle and greedy clients. HTTP/2
//! has no header-read timeout of its own: a connection that sends nothing never finishes
//! its handshake, and one that drips bytes never finishes a request, and both would hold a
//! socket (and stall a graceful stop) for ever. Here every accepted connection carries its
//! deadline: its first call must have arrived within the header timeout of opening (TLS
//! handshake, HTTP/2 preface and the call's headers included), and a connection with no
//! call under way is closed after the idle timeout. Once a connection is serving, HTTP/2
//! pings find a peer that stopped answering. Connections beyond the cap wait in the
//! kernel's accept backlog.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::transport::server::{Connected, TcpIncoming};

/// How long a connection may go without a call, by stage.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// From accept to the first call's headers.
    pub header: Duration,
    /// From the end of the last call to the next one's headers.
    pub idle: Duration,
}

/// What a connection and the calls on it share.
#[derive(Debug)]
struct ConnState {
    accepted: Instant,
    calls: AtomicUsize,
    served: AtomicBool,
    last_end: Mutex<Instant>,
}

impl ConnState {
    /// When the connection is to be closed if nothing changes; None while a call is under way.
    fn deadline(&self, d: Deadlines) -> Option<Instant> {
        let last_end = self.last_end.lock().unwrap_or_else(|e| e.into_inner());
        if self.calls.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(if self.served.load(Ordering::SeqCst) {
            *last_end + d.idle
        } else {
            self.accepted + d.header
        })
    }
}

/// The connection a call arrived on, as tonic puts it in every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    state: Arc<ConnState>,
}

/// A call under way on its connection: the connection is not idle while one is held.
#[derive(Debug)]
pub struct CallGuard(Arc<ConnState>);

impl CallGuard {
    /// The guard of a request that arrived on one of this listener's connections.
    pub fn of(extensions: &http::Extensions) -> Option<CallGuard> {
        let state = extensions.get::<ConnInfo>()?.state.clone();
        state.calls.fetch_add(1, Ordering::SeqCst);
        state.served.store(true, Ordering::SeqCst);
        Some(CallGuard(state))
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        // The end time is written before the count drops, under the lock the reader takes.
        let mut last_end = self.0.last_end.lock().unwrap_or_else(|e| e.into_inner());
        *last_end = Instant::now();
        self.0.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An accepted connection: reads fail once it is past its deadline with nothing to read,
/// and the server then closes it. Holds its place under the connection cap.
pub(crate) struct Conn {
    io: TcpStream,
    state: Arc<ConnState>,
    deadlines: Deadlines,
    timer: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    fn new(io: TcpStream, deadlines: Deadlines, permit: OwnedSemaphorePermit) -> Self {
        let now = Instant::now();
        Conn {
            io,
            state: Arc::new(ConnState {
                accepted: now,
                calls: AtomicUsize::new(0),
                served: AtomicBool::new(false),
                last_end: Mutex::new(now),
            }),
            deadlines,
            timer: Box::pin(tokio::time::sleep_until(now + deadlines.header)),
            _permit: permit,
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        ConnInfo { state: self.state.clone() }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(r) = Pin::new(&mut this.io).poll_read(cx, buf) {
            return Poll::Ready(r);
        }
        // Nothing to read: the connection is closed only now, so what a client already
        // sent is never cut off mid-way.
        loop {
            let now = Instant::now();
            let next = match this.state.deadline(this.deadlines) {
                Some(d) if d <= now => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no gRPC call within the connection's header or idle timeout",
                    )));
                }
                Some(d) => d,
                // A call is under way: look again later.
                None => now + this.deadlines.idle,
            };
            this.timer.as_mut().reset(next);
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// TCP keepalive on every accepted socket: the kernel finds a peer that vanished.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Accept from `listener` while fewer than `max_connections` are open, each connection
/// bounded by `deadlines`. The accepting stops when the stream is dropped.
pub(crate) fn incoming(
    listener: tokio::net::TcpListener,
    max_connections: usize,
    deadlines: Deadlines,
) -> ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(1);
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut accepted = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                _ = tx.closed() => return,
            };
            let next = tokio::select! {
                n = accepted.next() => n,
                _ = tx.closed() => return,
            };
            let item = match next {
                Some(Ok(io)) => Ok(Conn::new(io, deadlines, permit)),
                Some(Err(e)) => Err(e),
                None => return,
            };
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// A service whose calls count as activity on their connection until they are answered.
/// A stream's body outlives its answer: `Watch` holds a [`CallGuard`] of its own.
#[derive(Clone)]
pub(crate) struct Tracked<S>(pub S);

impl<S: NamedService> NamedService for Tracked<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Tracked<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = CallGuard::of(req.extensions());
        let answer = self.0.call(req);
        Box::pin(async move {
            let r = answer.await;
            drop(guard);
            r
        })
    }
}
