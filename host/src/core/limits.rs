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

// ---- The control plane's input (gRPC). docs/limits.md lists every one; a test compares. ----

/// How many characters of a refused value an INVALID_ARGUMENT quotes; the rest is counted.
pub const QUOTED_CHARS: usize = 100;

/// A tenant's name, for people: 1 to this many characters, no control characters.
pub const NAME_MAX_CHARS: usize = 200;

/// A base URL (QAD, Twilio): `http(s)://host[:port][/path]`, no user info, query or fragment.
pub const URL_MAX_CHARS: usize = 2048;

/// A QAD domain or entity code: 1 to this many ASCII letters, digits, `_`, `-` or `.` (they
/// form the `x-qad-workspace-id` header).
pub const QAD_CODE_MAX_CHARS: usize = 32;

/// A phone number as given (E.164 is at most 16 characters; spaces and dashes are allowed).
pub const PHONE_MAX_CHARS: usize = 32;

/// The shortest time between two scheduled polls of one tenant, whatever its schedule says
/// (an interval or a cron expression); a stored shorter one is stretched to it.
pub const POLL_INTERVAL_MIN_SECONDS: u64 = 60;

/// The longest interval a schedule may give: a week.
pub const POLL_INTERVAL_MAX_SECONDS: u64 = 7 * 24 * 3600;

/// After a failed poll the next scheduled one waits `POLL_INTERVAL_MIN_SECONDS` doubled per
/// failure in a row (2 min, 4 min, …), at most this long, until a poll succeeds.
pub const POLL_BACKOFF_MAX_SECONDS: u64 = 3600;

/// A cron expression's length.
pub const CRON_MAX_CHARS: usize = 128;

/// An IANA time zone's name (required: no silent UTC).
pub const TIME_ZONE_MAX_CHARS: usize = 64;

/// A mapping profile or plugin settings document, as JSON.
pub const SETTINGS_JSON_MAX_BYTES: usize = 64 << 10;

/// Any one string inside the mapping profile (a browse id, a field name, a value).
pub const PROFILE_TEXT_MAX_CHARS: usize = 256;

/// Rows per QAD browse page (`page_size` of the mapping profile).
pub const PAGE_SIZE_MIN: u32 = 1;
pub const PAGE_SIZE_MAX: u32 = 1000;

/// People named directly in the profile's roles, and aliases of countries.
pub const PROFILE_ENTRIES_MAX: usize = 100;

/// A QAD user name.
pub const USERNAME_MAX_CHARS: usize = 256;

/// A secret (QAD password, Twilio API key secret, Auth Token): 1 to this many characters,
/// no control characters, kept exactly as given (never trimmed).
pub const SECRET_MAX_CHARS: usize = 1024;

/// Entries of an `update_mask`, and each one's length.
pub const UPDATE_MASK_MAX_ENTRIES: usize = 16;
pub const UPDATE_MASK_ENTRY_MAX_CHARS: usize = 64;

/// A record's key in QAD (voucher, PO number, receipt with its line).
pub const RECORD_KEY_MAX_CHARS: usize = 128;

/// A listing's page size and `ListPolls.limit` (0: the default).
pub const LIST_MAX: i32 = 1000;

/// A page token or an RFC 3339 time given as a filter.
pub const TOKEN_MAX_CHARS: usize = 64;

/// The most QAD pages one poll reads (all browses together), unless
/// `ML_CONNECTOR_POLL_MAX_PAGES` says otherwise: a QAD that pages forever ends the poll.
pub const POLL_MAX_PAGES: u64 = 10_000;

/// The most QAD rows one poll reads, unless `ML_CONNECTOR_POLL_MAX_ROWS` says otherwise.
pub const POLL_MAX_ROWS: u64 = 2_000_000;

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

    /// Every constant of this file, by name, as the docs table must show it.
    fn constants() -> Vec<(&'static str, i128)> {
        macro_rules! all { ($($c:ident),* $(,)?) => { vec![$((stringify!($c), $c as i128)),*] }; }
        all![
            TENANT_ID_MAX,
            LOGGED_CHARS,
            LOGGED_ERROR_CHARS,
            PLUGIN_TEXT_BYTES,
            PLUGIN_FUEL_MAX,
            PLUGIN_MEMORY_MAX_BYTES,
            PLUGIN_CALL_SECONDS,
            PLUGIN_WASM_MAX_BYTES,
            PLUGIN_COMPILE_SECONDS,
            QUOTED_CHARS,
            NAME_MAX_CHARS,
            URL_MAX_CHARS,
            QAD_CODE_MAX_CHARS,
            PHONE_MAX_CHARS,
            POLL_INTERVAL_MIN_SECONDS,
            POLL_INTERVAL_MAX_SECONDS,
            POLL_BACKOFF_MAX_SECONDS,
            CRON_MAX_CHARS,
            TIME_ZONE_MAX_CHARS,
            SETTINGS_JSON_MAX_BYTES,
            PROFILE_TEXT_MAX_CHARS,
            PAGE_SIZE_MIN,
            PAGE_SIZE_MAX,
            PROFILE_ENTRIES_MAX,
            USERNAME_MAX_CHARS,
            SECRET_MAX_CHARS,
            UPDATE_MASK_MAX_ENTRIES,
            UPDATE_MASK_ENTRY_MAX_CHARS,
            RECORD_KEY_MAX_CHARS,
            LIST_MAX,
            TOKEN_MAX_CHARS,
            POLL_MAX_PAGES,
            POLL_MAX_ROWS,
        ]
    }

    /// docs/limits.md lists every constant here with its value, and nothing else; the list
    /// above names every `pub const` of this file.
    #[test]
    fn the_docs_table_matches_the_constants() {
        let source = include_str!("limits.rs");
        let declared: std::collections::BTreeSet<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("pub const ")?.split(':').next())
            .collect();
        let code: std::collections::BTreeMap<&str, i128> = constants().into_iter().collect();
        assert_eq!(declared, code.keys().copied().collect(), "constants() names every constant");
        let docs = include_str!("../../../docs/limits.md");
        let table: std::collections::BTreeMap<&str, i128> = docs
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((
                    name,
                    cells
                        .get(2)?
                        .parse()
                        .unwrap_or_else(|_| panic!("{name}: {:?} is not a number", cells[2])),
                ))
            })
            .collect();
        assert_eq!(table, code, "docs/limits.md against core::limits");
    }

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
