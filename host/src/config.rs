//! `ml-connector serve --config FILE`: a TOML file for everything the `ML_CONNECTOR_*`
//! environment variables set. Keys are the variables' names without the prefix, in lower
//! case (`database_url`, `http_addr`, …). The environment wins over the file, a flag over
//! both. The file is checked before anything starts: an unknown key or a value of the
//! wrong type is an error naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub database_url: Option<String>,
    pub master_key: Option<String>,
    pub master_key_file: Option<PathBuf>,
    pub previous_master_keys: Option<Vec<String>>,
    pub public_url: Option<url::Url>,
    pub http_addr: Option<SocketAddr>,
    pub http_header_timeout_seconds: Option<u64>,
    pub http_max_connections: Option<u64>,
    pub metrics_addr: Option<SocketAddr>,
    pub grpc_addr: Option<SocketAddr>,
    pub admin_token: Option<String>,
    pub grpc_tls_cert: Option<PathBuf>,
    pub grpc_tls_key: Option<PathBuf>,
    pub watch_buffer: Option<usize>,
    pub watch_max_streams: Option<u64>,
    pub grpc_allow_plaintext: Option<bool>,
    pub grpc_header_timeout_seconds: Option<u64>,
    pub grpc_idle_timeout_seconds: Option<u64>,
    pub grpc_max_connections: Option<u64>,
    pub grpc_max_streams: Option<u32>,
    pub job_lease_seconds: Option<u64>,
    pub poll_lease_seconds: Option<u64>,
    pub twilio_concurrency: Option<usize>,
    pub plugin_cache_dir: Option<PathBuf>,
    pub log: Option<String>,
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        Self::parse(&text).map_err(|e| ConfigError::Invalid(path.into(), e))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// The `ML_CONNECTOR_*` variables this file sets, with their values.
    pub fn variables(&self) -> Vec<(&'static str, String)> {
        let path = |p: &PathBuf| p.display().to_string();
        let mut v: Vec<(&'static str, Option<String>)> = vec![
            ("ML_CONNECTOR_DATABASE_URL", self.database_url.clone()),
            ("ML_CONNECTOR_MASTER_KEY", self.master_key.clone()),
            ("ML_CONNECTOR_MASTER_KEY_FILE", self.master_key_file.as_ref().map(path)),
            (
                "ML_CONNECTOR_PREVIOUS_MASTER_KEYS",
                self.previous_master_keys.as_ref().map(|k| k.join(",")),
            ),
            (
                "ML_CONNECTOR_PUBLIC_URL",
                self.public_url.as_ref().map(|u| u.as_str().trim_end_matches('/').to_string()),
            ),
            ("ML_CONNECTOR_HTTP_ADDR", self.http_addr.map(|a| a.to_string())),
            (
                "ML_CONNECTOR_HTTP_HEADER_TIMEOUT_SECONDS",
                self.http_header_timeout_seconds.map(|n| n.to_string()),
            ),
            (
                "ML_CONNECTOR_HTTP_MAX_CONNECTIONS",
                self.http_max_connections.map(|n| n.to_string()),
            ),
            ("ML_CONNECTOR_METRICS_ADDR", self.metrics_addr.map(|a| a.to_string())),
            ("ML_CONNECTOR_GRPC_ADDR", self.grpc_addr.map(|a| a.to_string())),
            ("ML_CONNECTOR_ADMIN_TOKEN", self.admin_token.clone()),
            ("ML_CONNECTOR_GRPC_TLS_CERT", self.grpc_tls_cert.as_ref().map(path)),
            ("ML_CONNECTOR_GRPC_TLS_KEY", self.grpc_tls_key.as_ref().map(path)),
            ("ML_CONNECTOR_WATCH_BUFFER", self.watch_buffer.map(|n| n.to_string())),
            ("ML_CONNECTOR_WATCH_MAX_STREAMS", self.watch_max_streams.map(|n| n.to_string())),
            (
                "ML_CONNECTOR_GRPC_ALLOW_PLAINTEXT",
                self.grpc_allow_plaintext.map(|b| b.to_string()),
            ),
            (
                "ML_CONNECTOR_GRPC_HEADER_TIMEOUT_SECONDS",
                self.grpc_header_timeout_seconds.map(|n| n.to_string()),
            ),
            (
                "ML_CONNECTOR_GRPC_IDLE_TIMEOUT_SECONDS",
                self.grpc_idle_timeout_seconds.map(|n| n.to_string()),
            ),
            (
                "ML_CONNECTOR_GRPC_MAX_CONNECTIONS",
                self.grpc_max_connections.map(|n| n.to_string()),
            ),
            ("ML_CONNECTOR_GRPC_MAX_STREAMS", self.grpc_max_streams.map(|n| n.to_string())),
            ("ML_CONNECTOR_JOB_LEASE_SECONDS", self.job_lease_seconds.map(|n| n.to_string())),
            ("ML_CONNECTOR_POLL_LEASE_SECONDS", self.poll_lease_seconds.map(|n| n.to_string())),
            ("ML_CONNECTOR_TWILIO_CONCURRENCY", self.twilio_concurrency.map(|n| n.to_string())),
            ("ML_CONNECTOR_PLUGIN_CACHE_DIR", self.plugin_cache_dir.as_ref().map(path)),
            ("ML_CONNECTOR_LOG", self.log.clone()),
        ];
        v.push((
            "ML_CONNECTOR_LOG_FORMAT",
            self.log_format.map(|f| match f {
                LogFormat::Text => "text".into(),
                LogFormat::Json => "json".into(),
            }),
        ));
        v.into_iter().filter_map(|(k, val)| val.map(|val| (k, val))).collect()
    }
}

/// The `--config` value of a `serve` command line, if any (other subcommands have flags of
/// that name with other meanings: `plugin check --config JSON`).
pub fn config_arg(args: &[String]) -> Option<PathBuf> {
    // Skip the program and the global flags (`--log X`, `--log-format X`, `--log=X`).
    let mut i = 1;
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "--log" | "--log-format" => i += 2,
            a if a.starts_with("--log=") || a.starts_with("--log-format=") => i += 1,
            _ => break,
        }
    }
    if args.get(i).map(String::as_str) != Some("serve") {
        return None;
    }
    let rest = &args[i + 1..];
    rest.iter().enumerate().find_map(|(j, a)| match a.strip_prefix("--config") {
        Some("") => rest.get(j + 1).map(PathBuf::from),
        Some(r) => r.strip_prefix('=').map(PathBuf::from),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("database_url = 'sqlite://x.db'\nhttp_adr = '127.0.0.1:1'", "http_adr"),
            ("grpc_addr = 'nowhere'", "grpc_addr"),
            ("job_lease_seconds = 'sixty'", "job_lease_seconds"),
            ("public_url = 'not a url'", "public_url"),
            ("log_format = 'xml'", "log_format"),
            ("grpc_allow_plaintext = 'yes'", "grpc_allow_plaintext"),
            ("grpc_max_streams = -1", "grpc_max_streams"),
        ];
        for (text, key) in cases {
            let err = ConfigFile::parse(text).unwrap_err();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn a_file_becomes_the_variables_it_sets() {
        let f = ConfigFile::parse(
            "database_url = 'postgres://db/ml'\nhttp_addr = '0.0.0.0:8080'\nprevious_master_keys = ['a', 'b']\nlog_format = 'json'\njob_lease_seconds = 30",
        )
        .unwrap();
        let mut v = f.variables();
        v.sort();
        assert_eq!(
            v,
            [
                ("ML_CONNECTOR_DATABASE_URL", "postgres://db/ml".to_string()),
                ("ML_CONNECTOR_HTTP_ADDR", "0.0.0.0:8080".into()),
                ("ML_CONNECTOR_JOB_LEASE_SECONDS", "30".into()),
                ("ML_CONNECTOR_LOG_FORMAT", "json".into()),
                ("ML_CONNECTOR_PREVIOUS_MASTER_KEYS", "a,b".into()),
            ]
        );
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(config_arg(&args(&["mlc", "serve", "--config", "a.toml"])), Some("a.toml".into()));
        assert_eq!(
            config_arg(&args(&["mlc", "--log", "debug", "serve", "--config=b.toml"])),
            Some("b.toml".into())
        );
        assert_eq!(config_arg(&args(&["mlc", "serve"])), None);
        assert_eq!(config_arg(&args(&["mlc", "plugin", "check", "p.wasm", "--config", "{}"])), None);
    }
}
