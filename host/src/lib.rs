//! ml-connector: polls QAD ERP for records that need a person and alerts them through Twilio.
//! See ARCHITECTURE.md for the map.

pub mod core;
pub mod secrets;
pub mod store;
