//! What several benches share: an `ml-connector` emulator (QAD or Twilio sandbox) started as a
//! process of its own, stopped when dropped; CPU readings; the invoice the dispatch benches send.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use ml_connector::core::attention::Urgency;
use ml_connector::core::model::RecordKind;
use ml_connector::core::people::{Recipient, Role};
use ml_connector::core::routing::AlertInput;

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

impl Emulator {
    /// CPU time the emulator's process has used so far, user and system, all its threads
    /// (Linux `/proc/<pid>/stat`; `None` elsewhere).
    #[allow(dead_code)] // not every bench reads it
    pub fn cpu(&self) -> Option<std::time::Duration> {
        process_cpu_of(std::path::Path::new(&format!("/proc/{}/stat", self.child.id())))
    }
}

/// CPU time used so far, user and system, by this process (`RUSAGE_SELF`, all threads) or by
/// its children that ended and were waited for (`RUSAGE_CHILDREN`).
#[allow(dead_code)]
pub fn rusage_cpu(who: libc::c_int) -> std::time::Duration {
    // SAFETY: getrusage writes into the struct it is given and reads nothing else.
    let usage = unsafe {
        let mut u = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(who, &mut u);
        u
    };
    let tv = |t: libc::timeval| std::time::Duration::from_secs(t.tv_sec as u64) + std::time::Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time, user and system, from a `stat` file of `/proc` (a process's or a thread's).
#[allow(dead_code)]
pub fn process_cpu_of(stat: &std::path::Path) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(stat).ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    // utime and stime are the 14th and 15th fields, the 12th and 13th after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(std::time::Duration::from_micros((utime + stime) * 1_000_000 / ticks))
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

/// The `n`-th supplier invoice of tenant `ti` needing a person: a price variance, one clerk.
#[allow(dead_code)] // not every bench sends invoices
pub fn invoice(ti: usize, n: usize) -> AlertInput {
    AlertInput {
        kind: RecordKind::SupplierInvoice,
        key: format!("SI-{ti}{n:07}"),
        episode: 1,
        supplier_code: "S-1001".into(),
        supplier_name: "Windy City Machining".into(),
        amount: Some("12500.00".into()),
        currency: Some("USD".into()),
        due_date: Some("2026-12-20".into()),
        reason_code: "price_variance".into(),
        reason: "price 10.40 invoiced against 9.80 ordered on line 1".into(),
        urgency: Urgency::Low,
        people: vec![Recipient {
            role: Role::ApClerk,
            name: "Grace Liu".into(),
            source: "profile".into(),
            phone: format!("+1312{:07}", n % 10_000_000),
        }],
        reference: "K7QM2X".into(),
    }
}
