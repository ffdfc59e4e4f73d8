//! A plugin that misbehaves on purpose; `{"mode": "…"}` picks how.

wit_bindgen::generate!({ world: "plugin", path: "../../../wit" });

use ml_connector::plugin::log::{Level, log};
use ml_connector::plugin::types::*;

struct Hostile;

fn mode(ctx: &Context) -> String {
    let c = &ctx.config;
    c.split("\"mode\"").nth(1).and_then(|r| r.split('"').nth(1)).unwrap_or("healthy").to_string()
}

fn first(alert: &AlertRecord) -> Delivery {
    Delivery { to: alert.people[0].clone(), channel: Channel::Sms, delay_minutes: 0, escalation_step: 0 }
}

#[inline(never)]
fn spin(n: u64) -> u64 {
    let mut x = n;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

impl Guest for Hostile {
    fn route(ctx: Context, alert: AlertRecord) -> Result<Vec<Delivery>, String> {
        match mode(&ctx).as_str() {
            "loop" => Err(format!("unreachable: {}", spin(alert.episode as u64))),
            "memory" => {
                // Reserve without writing: asks the host for memory as fast as it can.
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(Vec::with_capacity(1 << 20));
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("deliberate trap in route"),
            "bad-number" => Ok(vec![Delivery { to: Person { role: Role::Buyer, name: "x".into(), phone: "+1555".into() }, ..first(&alert) }]),
            "stranger" => Ok(vec![Delivery { to: Person { role: Role::Buyer, name: "x".into(), phone: "+13125559999".into() }, ..first(&alert) }]),
            // The record's first person, labelled a buyer whatever the record says they are.
            "relabel" => Ok(vec![Delivery { to: Person { role: Role::Buyer, ..alert.people[0].clone() }, ..first(&alert) }]),
            "clock-random" => {
                use std::hash::{BuildHasher, Hasher};
                let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
                let mono = std::time::Instant::now();
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(1);
                log(Level::Info, "observed", &[("wall".into(), wall.to_string()), ("random".into(), h.finish().to_string()), ("mono".into(), format!("{mono:?}"))]);
                Ok(vec![first(&alert)])
            }
            "open-file" => match std::fs::read("/etc/passwd") {
                Ok(b) => Ok(vec![Delivery { to: Person { name: format!("read {} bytes", b.len()), ..alert.people[0].clone() }, ..first(&alert) }]),
                Err(e) => Err(format!("cannot open a file: {e}")),
            },
            "open-socket" => match std::net::TcpStream::connect("127.0.0.1:5432") {
                Ok(_) => Ok(vec![first(&alert)]),
                Err(e) => Err(format!("cannot open a socket: {e}")),
            },
            "long-error" => Err("e".repeat(8_000_000)),
            // A WASI sleep (monotonic-clock subscribe-duration): no fuel, a real timer.
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok(vec![first(&alert)])
            }
            "log-flood" => {
                for i in 0..200 {
                    log(Level::Debug, &"x".repeat(5000), &[("i".into(), i.to_string())]);
                }
                Ok(vec![first(&alert)])
            }
            _ => Ok(vec![first(&alert)]),
        }
    }

    fn render(ctx: Context, alert: AlertRecord, _d: Delivery) -> Result<Message, String> {
        match mode(&ctx).as_str() {
            "big-output" => Ok(Message::Sms("x".repeat(10 << 20))),
            "asks-yes" => Ok(Message::Sms(format!("{} needs you. Reply YES to approve", alert.key))),
            _ => Ok(Message::Sms(format!("{} needs you. Ref {}", alert.key, alert.reference))),
        }
    }

    fn interpret_reply(ctx: Context, _alert: AlertRecord, _d: Delivery, _a: Answer) -> Result<Reply, String> {
        if mode(&ctx) == "sleep" {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        Ok(Reply { action: ReplyAction::Acknowledge, confirmation: "ok".into() })
    }
}

export!(Hostile);
