//! The pure core: plain functions over plain data. No I/O, no clock, no database.
//! Architecture invariant: nothing under `core` depends on tokio, sqlx, reqwest or axum.

pub mod attention;
pub mod dispatch;
pub mod episode;
pub mod intake;
pub mod limits;
pub mod model;
pub mod people;
pub mod phone;
pub mod profile;
pub mod routing;
pub mod rows;
pub mod schedule;
pub mod signature;
pub mod text;
pub mod twiml;

#[cfg(test)]
mod attention_tests;
