//! The `ml-connector` binary as a user runs it.

use std::process::Command;

use ml_connector_tests::{TempDir, binary};

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let bin = binary();
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo xtask test` does)",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("ML_CONNECTOR_MASTER_KEY")
        .env_remove("ML_CONNECTOR_DATABASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn keygen_prints_a_usable_master_key() {
    let (ok, out, _) = run(&["keygen"], &[]);
    assert!(ok);
    let key = out.trim();
    assert!(key.starts_with("mlk1.") && key.len() > 40, "{key}");
    assert!(ml_connector::secrets::Keyring::new(key, &[]).is_ok());
    assert_ne!(run(&["keygen"], &[]).1, out, "fresh each time");
}

#[test]
fn migrate_creates_and_migrates_the_database() {
    let dir = TempDir::new("cli");
    let url = format!("sqlite://{}", dir.0.join("m.db").display());
    let (ok, out, err) = run(&["migrate"], &[("ML_CONNECTOR_DATABASE_URL", &url)]);
    assert!(ok, "{err}");
    assert!(out.contains("migrations applied to sqlite database"), "{out}");
    assert!(dir.0.join("m.db").exists());
}

#[test]
fn serve_without_a_master_key_says_what_is_missing() {
    let dir = TempDir::new("cli");
    let url = format!("sqlite://{}", dir.0.join("s.db").display());
    let (ok, _, err) = run(&["serve"], &[("ML_CONNECTOR_DATABASE_URL", &url)]);
    assert!(!ok);
    assert!(
        err.contains("ML_CONNECTOR_MASTER_KEY or ML_CONNECTOR_MASTER_KEY_FILE is required"),
        "{err}"
    );
    let (ok, _, err) = run(
        &["serve"],
        &[("ML_CONNECTOR_DATABASE_URL", &url), ("ML_CONNECTOR_MASTER_KEY", "not-a-key")],
    );
    assert!(!ok);
    assert!(err.contains("master key is not valid"), "{err}");
    assert!(!err.contains("not-a-key"), "the key is not echoed: {err}");
}

#[test]
fn sandbox_once_runs_a_full_poll_cycle_and_summarises() {
    let dir = TempDir::new("cli");
    let url = format!("sqlite://{}", dir.0.join("demo.db").display());
    let (ok, out, err) = run(
        &["sandbox", "--once", "--database-url", &url, "--http-addr", "127.0.0.1:0"],
        &[("ML_CONNECTOR_LOG", "error")],
    );
    assert!(ok, "{out}\n{err}");
    let count = |prefix: &str| out.lines().filter(|l| l.starts_with(prefix)).count();
    let needs = count("needs attention");
    assert!(needs > 30, "{out}");
    // Every alert and every confirmation went out, was delivered, and every answer the
    // scripted people gave was recorded and written back to QAD.
    let (sent, delivered, answers) = (
        count("sent "),
        count("Twilio: delivered ") + count("Twilio: completed "),
        count("answer "),
    );
    assert!(sent > needs && delivered == sent, "{sent} sent, {delivered} delivered\n{out}");
    assert!(answers > 40, "{out}");
    let summary = out.lines().find(|l| l.starts_with("summary: ")).expect("a summary");
    assert!(
        summary.starts_with(&format!("summary: {needs} records need a person; ")),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("{delivered} delivered or completed, {answers} answered")),
        "{summary}"
    );
    assert!(
        summary.contains("0 failed for a recorded reason") && summary.contains("2 malformed rows recorded in the audit trail"),
        "{summary}"
    );
    assert!(count("QAD comment") > sent && count("QAD decision") == 7, "{out}");
    assert!(out.contains("malformed row            supplier invoice SI-79901"), "{out}");
    assert!(
        out.contains("✗ phone \"(515) 55-01\" for supplier S-1009 is not a valid number for US"),
        "{out}"
    );
}

#[tokio::test]
async fn serve_polls_the_tenants_in_its_database_and_stops_cleanly_on_sigterm() {
    use ml_connector::sandbox::{example_tenant, provision_example};
    use ml_connector::secrets::{Keyring, generate_master_key};
    use ml_connector::store::Store;

    let qad = ml_connector_tests::Qad::start().await;
    let dir = TempDir::new("serve");
    let url = format!("sqlite://{}", dir.0.join("serve.db").display());
    let key = generate_master_key();
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let tenant = example_tenant(&qad.base, &qad.config, 3600);
    provision_example(&store, &Keyring::new(&key, &[]).unwrap(), &tenant, &qad.config, chrono::Utc::now())
        .await
        .unwrap();
    let mut child = tokio::process::Command::new(binary())
        .arg("serve")
        .env("ML_CONNECTOR_DATABASE_URL", &url)
        .env("ML_CONNECTOR_MASTER_KEY", &key)
        .env("ML_CONNECTOR_HTTP_ADDR", "127.0.0.1:0")
        .env("ML_CONNECTOR_GRPC_ADDR", "127.0.0.1:0")
        .env("ML_CONNECTOR_METRICS_ADDR", "127.0.0.1:0")
        .env("ML_CONNECTOR_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut done = false;
    for _ in 0..400 {
        if store.polls(&tenant.id, 1).await.unwrap().first().is_some_and(|p| p.outcome == "ok") {
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(done, "serve polled the tenant");
    assert!(store.attention(&tenant.id, Some("open")).await.unwrap().len() > 30);
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(15), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn plugin_check_runs_a_plugin_on_the_samples_and_fails_clearly_on_a_fault() {
    let dir = TempDir::new("check");
    let default = dir.0.join("default.wasm");
    std::fs::write(&default, ml_connector::plugin::DEFAULT_PLUGIN).unwrap();
    let (ok, out, err) = run(&["plugin", "check", default.to_str().unwrap()], &[]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("world ml-connector:plugin@0.1.0"), "{out}");
    assert!(out.contains("call to plant_manager Robert Hale +13125550140"), "{out}");
    assert!(
        out.contains("answer Text(\"approve\") → Unknown \"To decide on PO10281, reply APPROVE K7QM2X or REJECT K7QM2X.\""),
        "{out}"
    );
    assert!(out.contains("ok: the plugin answered every sample within its budgets"), "{out}");

    let hostile = env!("HOSTILE_PLUGIN_WASM");
    let (ok, _, err) = run(&["plugin", "check", hostile, "--config", r#"{"mode": "loop"}"#], &[]);
    assert!(!ok);
    assert!(
        err.contains("invoice SI-70003: plugin BudgetExhausted in route: used up its CPU budget"),
        "{err}"
    );

    let (ok, _, err) = run(&["plugin", "check", env!("FUTURE_PLUGIN_WASM")], &[]);
    assert!(!ok);
    assert!(err.contains("cannot be used: built against ml-connector:plugin@0.2.0"), "{err}");

    let junk = dir.0.join("junk.wasm");
    std::fs::write(&junk, b"\0asm junk").unwrap();
    let (ok, _, err) = run(&["plugin", "check", junk.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(err.contains("not a WebAssembly component"), "{err}");
}

/// `serve --config FILE`: a key it does not know or a value of the wrong type stops it
/// before anything starts, naming the key; a good file is used, the environment winning.
#[tokio::test]
async fn serve_reads_a_config_file_checked_up_front_with_the_environment_winning() {
    let dir = TempDir::new("config");
    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "database_url = 'sqlite://x.db'\nhttp_adress = '127.0.0.1:8080'\n").unwrap();
    let (ok, _, err) = run(&["serve", "--config", bad.to_str().unwrap()], &[]);
    assert!(!ok && err.contains("http_adress") && err.contains("bad.toml"), "{err}");
    std::fs::write(&bad, "grpc_addr = 'nowhere'\n").unwrap();
    let (ok, _, err) = run(&["serve", "--config", bad.to_str().unwrap()], &[]);
    assert!(!ok && err.contains("grpc_addr"), "{err}");

    let key_file = dir.0.join("master.key");
    std::fs::write(&key_file, ml_connector::secrets::generate_master_key()).unwrap();
    let db = dir.0.join("from-config.db");
    let (file_port, env_port) = (free_port(), free_port());
    let good = dir.0.join("good.toml");
    std::fs::write(
        &good,
        format!(
            "database_url = 'sqlite://{}'\nmaster_key_file = '{}'\nhttp_addr = '127.0.0.1:{file_port}'\ngrpc_addr = '127.0.0.1:0'\nmetrics_addr = '127.0.0.1:0'\nlog = 'warn'\n",
            db.display(),
            key_file.display()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(binary())
        .args(["serve", "--config", good.to_str().unwrap()])
        .env_remove("ML_CONNECTOR_MASTER_KEY")
        .env_remove("ML_CONNECTOR_DATABASE_URL")
        .env("ML_CONNECTOR_HTTP_ADDR", format!("127.0.0.1:{env_port}"))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if reqwest::get(format!("http://127.0.0.1:{env_port}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(up, "serve listens where the environment says");
    assert!(
        reqwest::get(format!("http://127.0.0.1:{file_port}/readyz")).await.is_err(),
        "not where the file says"
    );
    assert!(db.exists(), "the database the file names is used");
    child.kill().await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
