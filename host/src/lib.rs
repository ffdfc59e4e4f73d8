//! ml-connector: polls QAD ERP for records that need a person and alerts them through Twilio.
//! See ARCHITECTURE.md for the map.

pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub mod dispatcher;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod group_commit;
pub mod grpc;
pub mod inbox;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod plugin;
pub mod plugin_check;
pub mod poller;
pub mod qad;
pub mod qad_sandbox;
pub mod roles;
pub mod sandbox;
pub mod scheduler;
pub mod secrets;
pub mod store;
pub mod twilio;
pub mod twilio_sandbox;
pub mod webhooks;

/// The allocator every binary of the project declares (`#[global_allocator]`): the host's
/// hot paths allocate and free small buffers across threads, where glibc's malloc spent
/// about a fifth of the dispatch path's CPU (perf, `benches/dispatch.rs`).
pub use mimalloc::MiMalloc as HostAllocator;

/// TLS through rustls on ring: installed once per process before any HTTP client is built.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Resolves on the next SIGINT or SIGTERM after this call: the handlers are installed before
/// it returns, so a signal sent once it has returned is never missed.
#[cfg(unix)]
pub fn next_shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
