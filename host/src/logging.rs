//! The process's log lines: one event, one line, whatever the values hold. Values come from
//! QAD, Twilio, plugins and strangers' requests; a line break in one must not start a forged
//! line, an escape sequence must not reach a terminal, and colour codes belong on a terminal,
//! not in a file.

use std::io::IsTerminal;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::MakeWriter;

use crate::core::text::{escape_controls, is_line_trick};

/// Text lines (the default) or one JSON object a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Install the process-wide subscriber writing to stderr.
pub fn init(filter: &str, format: LogFormat) {
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing::subscriber::set_global_default(subscriber(filter, format, colour, std::io::stderr));
}

/// The subscriber `init` installs, writing to `out` (tests write to a buffer). Text fields
/// are written with every control character and line trick escaped (`\n`, `\u{1b}`,
/// `\u{2028}`); JSON escapes control characters itself, and the line tricks are written as
/// JSON escapes on the way out.
pub fn subscriber<W>(filter: &str, format: LogFormat, colour: bool, out: W) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colour);
    match format {
        LogFormat::Text => {
            let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
                let text = escape_controls(&format!("{value:?}"));
                match field.name() {
                    "message" => w.write_str(&text),
                    name => write!(w, "{name}={text}"),
                }
            })
            .delimited(" ");
            Box::new(builder.with_writer(out).fmt_fields(fields).finish())
        }
        LogFormat::Json => Box::new(builder.with_writer(JsonSafe(out)).json().finish()),
    }
}

/// Writes each JSON line with the line tricks (`core::text::is_line_trick`) as `\uXXXX`
/// escapes, which JSON allows inside strings and where alone they can occur.
struct JsonSafe<M>(M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for JsonSafe<M> {
    type Writer = JsonSafeWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        JsonSafeWriter(self.0.make_writer())
    }
}

struct JsonSafeWriter<W>(W);

impl<W: std::io::Write> std::io::Write for JsonSafeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) if text.chars().any(is_line_trick) => {
                let escaped: String = text
                    .chars()
                    .map(|c| {
                        if is_line_trick(c) {
                            format!("\\u{:04x}", c as u32)
                        } else {
                            c.to_string()
                        }
                    })
                    .collect();
                self.0.write_all(escaped.as_bytes())?;
            }
            _ => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(format: LogFormat, colour: bool, emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = subscriber("info", format, colour, move || sink.clone());
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    /// A row key from QAD that holds a line break and colour codes, as a field and inside the
    /// message: one line each, no escape byte, in either format.
    #[test]
    fn a_value_cannot_forge_a_line_or_colour_a_file() {
        let key = "SI-1\n2026-12-04T00:00:00.000000Z  INFO ml_connector: forged\r\u{1b}[31m\u{2028}next\u{202e}desrever";
        for format in [LogFormat::Text, LogFormat::Json] {
            let out = logged(format, false, || {
                tracing::warn!(record = %key, "malformed row");
                tracing::warn!("malformed row {key}");
            });
            assert_eq!(out.lines().count(), 2, "{format:?}: {out}");
            assert!(out.ends_with('\n'));
            assert!(!out.contains('\u{1b}'), "{format:?}: {out:?}");
            assert!(!out.contains('\u{2028}') && !out.contains('\u{202e}'), "{format:?}: {out:?}");
            if format == LogFormat::Json {
                for line in out.lines() {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    assert!(v.to_string().contains("forged"), "{v}");
                }
            }
            assert!(out.lines().all(|l| !l.starts_with("2026-12-04T00:00:00.000000Z")), "{out}");
        }
    }

    #[test]
    fn colour_only_when_asked() {
        let plain = logged(LogFormat::Text, false, || tracing::warn!("x"));
        let coloured = logged(LogFormat::Text, true, || tracing::warn!("x"));
        assert!(!plain.contains('\u{1b}'), "{plain:?}");
        assert!(coloured.contains('\u{1b}'), "{coloured:?}");
    }
}
