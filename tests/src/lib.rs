//! Helpers shared by the integration and end-to-end tests.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use ml_connector::clock::ManualClock;
use ml_connector::poller::Poller;
use ml_connector::qad::RetryPolicy;
use ml_connector::qad_sandbox::{QadSandbox, SandboxConfig};
use ml_connector::sandbox::{example_tenant, provision_example};
use ml_connector::secrets::{Keyring, generate_master_key};
use ml_connector::store::{Store, Tenant};

/// The fixed "today" most tests run at (a Friday, after the autumn DST change).
pub fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 27).unwrap()
}

/// 10:00 in Chicago on `today()`.
pub fn morning() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 16, 0, 0).unwrap()
}

pub fn init() {
    ml_connector::init_tls();
}

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("mlc-{tag}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which engines the suite runs store tests on: SQLite always, PostgreSQL when
/// `ML_CONNECTOR_TEST_DATABASE_URL` names one.
pub fn engines() -> Vec<&'static str> {
    let mut e = vec!["sqlite"];
    if std::env::var("ML_CONNECTOR_TEST_DATABASE_URL").is_ok_and(|u| u.starts_with("postgres")) {
        e.push("postgres");
    }
    e
}

/// A fresh, migrated database of the engine: a new SQLite file, or a new PostgreSQL schema.
pub struct TestDb {
    pub url: String,
    pub store: Store,
    pub dir: Option<TempDir>,
}

impl TestDb {
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.0.join("test.db"))
    }
}

pub async fn fresh_db(engine: &str) -> TestDb {
    let (url, dir) = empty_db(engine).await;
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    TestDb { url, store, dir }
}

/// A database of `engine` with nothing in it yet, not even migrations: its URL, and the
/// directory holding it (SQLite; removed when dropped).
pub async fn empty_db(engine: &str) -> (String, Option<TempDir>) {
    init();
    match engine {
        "sqlite" => {
            let dir = TempDir::new("db");
            (format!("sqlite://{}", dir.0.join("test.db").display()), Some(dir))
        }
        "postgres" => {
            let base = std::env::var("ML_CONNECTOR_TEST_DATABASE_URL").expect("postgres URL");
            let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
            let admin = Store::connect(&base)
                .await
                .expect("PostgreSQL is reachable at ML_CONNECTOR_TEST_DATABASE_URL");
            admin.execute_raw(&format!("CREATE SCHEMA {schema}")).await.unwrap();
            admin.close().await;
            let sep = if base.contains('?') { '&' } else { '?' };
            (format!("{base}{sep}options=-c%20search_path%3D{schema}"), None)
        }
        other => panic!("unknown engine {other}"),
    }
}

/// The migrations an earlier release shipped: `engine`'s up to `version`, to build a database
/// as that release left it.
pub async fn migrations_up_to(engine: &str, version: i64) -> sqlx::migrate::Migrator {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations").join(engine);
    let mut m = sqlx::migrate::Migrator::new(folder).await.unwrap();
    assert!(
        m.migrations.iter().any(|x| x.version == version),
        "{engine}: migration {version} exists"
    );
    m.migrations = m
        .migrations
        .iter()
        .filter(|x| x.version <= version)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    m
}

/// A running QAD sandbox with the example data as of `today()`.
pub struct Qad {
    pub sandbox: QadSandbox,
    pub base: String,
    pub control: String,
    pub config: SandboxConfig,
    _task: tokio::task::JoinHandle<()>,
}

impl Qad {
    pub async fn start() -> Qad {
        Self::start_with(QadSandbox::new(SandboxConfig::new(today()))).await
    }

    pub async fn start_with(sandbox: QadSandbox) -> Qad {
        init();
        let config = sandbox.config();
        let (base, task) = sandbox.clone().spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let control = base.trim_end_matches(&config.base_path).to_string();
        Qad {
            sandbox,
            base,
            control,
            config,
            _task: task,
        }
    }

    /// Log in with plain HTTP as `qad-api.md` describes (not the project's client):
    /// returns the access and refresh tokens.
    pub async fn plain_login(&self) -> (String, String) {
        let http = reqwest::Client::new();
        let sc: serde_json::Value = http
            .get(format!("{}/api/qracore/securityControl", self.base))
            .basic_auth(&self.config.user, Some(&self.config.password))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let client_id = sc["data"]["securityControls"][0]["clientId"].as_str().unwrap().to_string();
        let form = [
            ("client_id", client_id.as_str()),
            ("grant_type", "password"),
            ("username", &self.config.user),
            ("password", &self.config.password),
        ];
        let tok: serde_json::Value = http
            .post(format!("{}/oauth/token", self.base))
            .form(&form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            tok["access_token"].as_str().unwrap().to_string(),
            tok["refresh_token"].as_str().unwrap().to_string(),
        )
    }

    /// GET from the sandbox's control surface (`path` under `/_sandbox/`).
    pub async fn control_get(&self, path: &str) -> serde_json::Value {
        let resp = reqwest::get(format!("{}/_sandbox/{path}", self.control)).await.unwrap();
        assert!(resp.status().is_success(), "control {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// POST to the sandbox's control surface.
    pub async fn control(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let resp = reqwest::Client::new()
            .post(format!("{}/_sandbox/{path}", self.control))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "control {path}: {}", resp.status());
        resp.json().await.unwrap()
    }
}

/// Everything a poll needs, wired to a sandbox and a fresh database, at a manual clock.
pub struct Harness {
    pub qad: Qad,
    pub db: TestDb,
    pub keys: Arc<Keyring>,
    pub clock: Arc<ManualClock>,
    pub poller: Poller,
    pub tenant: Tenant,
}

pub async fn harness(engine: &str) -> Harness {
    harness_with(engine, Qad::start().await).await
}

pub async fn harness_with(engine: &str, qad: Qad) -> Harness {
    let db = fresh_db(engine).await;
    let keys = Arc::new(Keyring::new(&generate_master_key(), &[]).unwrap());
    let clock = Arc::new(ManualClock::new(morning()));
    let tenant = example_tenant(&qad.base, &qad.config, 60);
    provision_example(&db.store, &keys, &tenant, &qad.config, morning()).await.unwrap();
    let http = ml_connector::outbound::client(std::time::Duration::from_secs(30)).unwrap();
    let mut poller = Poller::new(db.store.clone(), keys.clone(), http, clock.clone(), plugins());
    poller.retry = RetryPolicy {
        attempts: 3,
        min_delay: std::time::Duration::from_millis(5),
        max_delay: std::time::Duration::from_millis(20),
    };
    Harness {
        qad,
        db,
        keys,
        clock,
        poller,
        tenant,
    }
}

/// One plugin runtime for the whole test binary: compiled plugins are shared, as in a host.
pub fn plugins() -> Arc<ml_connector::plugin::PluginRuntime> {
    static RUNTIME: std::sync::OnceLock<Arc<ml_connector::plugin::PluginRuntime>> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| Arc::new(ml_connector::plugin::PluginRuntime::new(None).unwrap()))
        .clone()
}

/// The path of the built `ml-connector` binary (built by cargo for this test run).
pub fn binary() -> PathBuf {
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("ml-connector")
}
