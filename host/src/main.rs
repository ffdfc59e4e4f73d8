use std::process::ExitCode;

use clap::Parser;

/// The allocator the host runs with (see `ml_connector::HostAllocator`).
#[global_allocator]
static ALLOCATOR: ml_connector::HostAllocator = ml_connector::HostAllocator;

fn main() -> ExitCode {
    // `--config FILE`: its values become the environment variables not already set, before
    // anything else runs (no other thread exists yet), so the environment wins over the file.
    let args: Vec<String> = std::env::args().collect();
    if let Some(path) = ml_connector::config::config_arg(&args) {
        match ml_connector::config::ConfigFile::load(&path) {
            Ok(file) => {
                for (key, value) in file.variables() {
                    if std::env::var_os(key).is_none() {
                        // SAFETY: single-threaded: the runtime is built below.
                        unsafe { std::env::set_var(key, value) };
                    }
                }
            }
            Err(e) => {
                eprintln!("error: config file {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let cli = ml_connector::cli::Cli::parse();
    ml_connector::cli::init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(ml_connector::cli::run(cli));
    // Tasks still running are dropped; a blocking one (a plugin compiling, a file write) is
    // not waited for past a second, so a stop keeps its deadline.
    runtime.shutdown_timeout(ml_connector::cli::RUNTIME_GRACE);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
