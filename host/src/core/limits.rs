//! Ranges and lengths of what comes from outside, kept in one place so the checks, the docs
//! and the tests agree.

/// A tenant id: 1 to this many lower-case letters, digits or dashes, not starting with a dash.
/// It stands in webhook paths and log lines, so it stays plain.
pub const TENANT_ID_MAX: usize = 63;

/// How many characters of a string from outside (a path, a tenant id, a row key, a plugin's
/// error) one log field shows; the rest is counted, not printed.
pub const LOGGED_CHARS: usize = 64;

/// How many characters of an error one log field shows (errors name a record and a field
/// and may quote a value from outside).
pub const LOGGED_ERROR_CHARS: usize = 256;

/// How many bytes of a plugin's error or log line are kept, in the log and in the audit
/// trail alike; a longer one is cut and its length noted.
pub const PLUGIN_TEXT_BYTES: usize = 1024;

/// The most fuel (about instructions) a tenant's `limits.fuel` may give one plugin call:
/// a hundred times the default of 10 million. A larger setting is refused.
pub const PLUGIN_FUEL_MAX: u64 = 1_000_000_000;

/// The most memory a tenant's `limits.memory_bytes` may give one record's plugin store
/// (the pooling allocator's slot size). A larger setting is refused.
pub const PLUGIN_MEMORY_MAX_BYTES: usize = 128 << 20;

/// Wall-clock time one plugin call (instantiate, `route`, each `render`, `interpret-reply`)
/// may take, whatever its fuel: a WASI sleep or a wait on a clock uses no fuel.
pub const PLUGIN_CALL_SECONDS: u64 = 5;

/// The largest plugin (WebAssembly component) a host compiles: 64 MiB, room for a
/// Python component (about 40 MB) and the gRPC message limit.
pub const PLUGIN_WASM_MAX_BYTES: usize = 64 << 20;

/// Wall-clock time a plugin's compilation may take before its compiler process is killed
/// (a cold Python component takes about 30 s on two cores).
pub const PLUGIN_COMPILE_SECONDS: u64 = 120;

/// Whether `id` has a tenant id's shape (see [`TENANT_ID_MAX`]).
pub fn is_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= TENANT_ID_MAX
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        let long = "a".repeat(TENANT_ID_MAX);
        let too_long = "a".repeat(TENANT_ID_MAX + 1);
        let cases: &[(&str, bool)] = &[
            ("lakeshore", true),
            ("plant-7", true),
            (&long, true),
            ("", false),
            (&too_long, false),
            ("-lead", false),
            ("Upper", false),
            ("a/b", false),
            ("a\nb", false),
            ("é", false),
        ];
        for (id, want) in cases {
            assert_eq!(is_tenant_id(id), *want, "{id:?}");
        }
    }
}
