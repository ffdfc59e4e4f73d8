//! A plain plugin built against the world in ../wit-0.1.1.

wit_bindgen::generate!({ world: "plugin", path: "../wit-0.1.1" });

use ml_connector::plugin::log::{Level, log};
use ml_connector::plugin::types::*;

struct P;

impl Guest for P {
    fn route(_ctx: Context, alert: AlertRecord) -> Result<Vec<Delivery>, String> {
        log(Level::Info, "routing", &[("world".into(), "0.1.1".into())]);
        Ok(alert.people.first().map(|p| Delivery { to: p.clone(), channel: Channel::Sms, delay_minutes: 0, escalation_step: 0 }).into_iter().collect())
    }
    fn render(_ctx: Context, alert: AlertRecord, _d: Delivery) -> Result<Message, String> {
        Ok(Message::Sms(format!("[0.1.1] {} {}", alert.key, alert.reason)))
    }
    fn interpret_reply(_ctx: Context, _alert: AlertRecord, _d: Delivery, _a: Answer) -> Result<Reply, String> {
        Ok(Reply { action: ReplyAction::Acknowledge, confirmation: "noted".into() })
    }
}

export!(P);
