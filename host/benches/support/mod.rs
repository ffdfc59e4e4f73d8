//! What several benches share: an `ml-connector` emulator (QAD or Twilio sandbox) started as a
//! process of its own, stopped when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Emulator {
    child: Child,
    /// The base URL it printed.
    pub base: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `ml-connector <args>` (release build) and wait for the URL it prints first.
pub fn start(args: &[&str]) -> Emulator {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ml-connector"))
        .args(args)
        .env("ML_CONNECTOR_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the ml-connector binary is built for benches");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the emulator prints its URL")
        .to_string();
    Emulator { child, base }
}
