//! One integration-test binary (one link on a 2-core machine), a module per layer.

mod cli;
mod client;
mod conformance;
mod credentials;
mod dispatch;
mod fuzz_corpus;
mod grpc;
mod grpc_fields;
mod hosts;
mod ops;
mod plugins;
mod poll;
mod store;
mod tidy;
mod twilio;
mod webhook_port;
mod webhooks;
