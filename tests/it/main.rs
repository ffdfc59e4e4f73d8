//! One integration-test binary (one link on a 2-core machine), a module per layer.

mod cli;
mod client;
mod conformance;
mod dispatch;
mod grpc;
mod hosts;
mod ops;
mod plugins;
mod poll;
mod store;
mod twilio;
mod webhooks;
