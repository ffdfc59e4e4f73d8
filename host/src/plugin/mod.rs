//! The plugin runtime: per-customer WebAssembly components, run sandboxed.
//!
//! One `Engine` for the process. Each plugin is compiled once, off the async runtime within
//! a size cap and a time limit (`compile`), kept in memory by content hash and in an
//! authenticated on-disk cache (`cache`) so a restart does not recompile. Each plugin has an
//! `InstancePre`; every record gets a fresh `Store` (route and render share it), with a fuel
//! budget and a wall-clock limit per call and a memory cap per store; a store whose call was
//! cut is dropped with its instance. The guest's WASI is linked with fixed clocks and random
//! sources, no directories, no sockets, no environment.
//!
//! Architecture invariant: nothing a plugin returns is used before `core::routing` checked it.

pub mod cache;
pub mod compile;
pub mod v0_1;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand_wasi::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

pub use self::cache::{CacheDirError, DiskCache};
pub use self::compile::{CompileLimits, Compiler};
use crate::core::limits::{PLUGIN_CALL_SECONDS, PLUGIN_FUEL_MAX, PLUGIN_MEMORY_MAX_BYTES, PLUGIN_TEXT_BYTES};
use crate::core::routing::{self, AlertInput, Answer, PluginContext, Reply, Routed};
use crate::core::text::capped;

/// The default plugin, embedded so `ml-connector sandbox` needs nothing else.
pub const DEFAULT_PLUGIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default_plugin.wasm"));
/// The example customer plugin (plugins/lakeshore), used by the sandbox's example tenant.
pub const LAKESHORE_PLUGIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lakeshore_plugin.wasm"));

/// Budgets per tenant. Defaults: 10 million fuel per call (about Shopify Functions' 11
/// million instructions) and 32 MiB of memory per record; at most [`PLUGIN_FUEL_MAX`] and
/// [`MAX_MEMORY_BYTES`] (`check` refuses more, and the runtime never gives more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub fuel: u64,
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 10_000_000,
            memory_bytes: 32 << 20,
        }
    }
}

impl Limits {
    /// Whether an operator's setting is within the host's ceilings; the refusal names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.fuel == 0 || self.fuel > PLUGIN_FUEL_MAX {
            return Err(format!("limits.fuel is {}; it must be 1 to {PLUGIN_FUEL_MAX}", self.fuel));
        }
        if self.memory_bytes == 0 || self.memory_bytes > MAX_MEMORY_BYTES {
            return Err(format!(
                "limits.memory_bytes is {}; it must be 1 to {MAX_MEMORY_BYTES} ({} MiB)",
                self.memory_bytes,
                MAX_MEMORY_BYTES >> 20
            ));
        }
        Ok(())
    }

    /// Within the ceilings whatever was stored (a setting from before they existed).
    fn bounded(self) -> Limits {
        Limits {
            fuel: self.fuel.min(PLUGIN_FUEL_MAX),
            memory_bytes: self.memory_bytes.min(MAX_MEMORY_BYTES),
        }
    }
}

/// A tenant's plugin settings: the configuration its plugin reads, whether a faulty
/// plugin falls back to the default plugin's decision, and the host's budgets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginSettings {
    /// Given to the plugin as JSON text (`context.config`).
    pub config: serde_json::Value,
    pub fallback_to_default: bool,
    pub limits: Limits,
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            config: serde_json::json!({}),
            fallback_to_default: false,
            limits: Limits::default(),
        }
    }
}

/// The largest memory any tenant may be given (the pooling allocator's slot size).
pub const MAX_MEMORY_BYTES: usize = PLUGIN_MEMORY_MAX_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The bytes are not a component of a world this host runs.
    WrongWorld,
    /// The guest trapped (a panic, an unreachable, a bad memory access).
    Trap,
    /// The call used up its fuel.
    BudgetExhausted,
    /// The guest asked for more memory than its cap.
    MemoryCap,
    /// The plugin returned something the host refuses (not E.164, too long, …).
    InvalidOutput,
    /// The plugin returned an error of its own.
    PluginError,
    /// The plugin is over the size cap, or did not compile within the time limit.
    CompileLimit,
    /// A call ran past its wall-clock limit (e.g. a WASI sleep, which uses no fuel).
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[error("plugin {kind:?} in {call}: {message}")]
pub struct PluginFault {
    pub kind: FaultKind,
    /// Which export, or "load".
    pub call: String,
    pub message: String,
}

impl PluginFault {
    /// The message is capped where it is made, so no log line or audit entry carries more
    /// than [`PLUGIN_TEXT_BYTES`] of what a plugin wrote.
    fn new(kind: FaultKind, call: &str, message: impl Into<String>) -> Self {
        PluginFault {
            kind,
            call: call.into(),
            message: capped(&message.into(), PLUGIN_TEXT_BYTES),
        }
    }
}

/// A log line a plugin wrote through the `log` import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginLog {
    pub level: String,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

const LOG_LINES_PER_RECORD: usize = 50;

/// Refuses growth past the cap and remembers that it did, so a guest that aborts because
/// it could not grow is reported as "memory cap", not as a bare trap.
struct Limiter {
    max_memory: usize,
    refused: Option<usize>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }
    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

struct FixedClock;

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    logs: Vec<PluginLog>,
    dropped_logs: usize,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl v0_1::ml_connector::plugin::types::Host for HostState {}

impl v0_1::ml_connector::plugin::log::Host for HostState {
    async fn log(&mut self, level: v0_1::ml_connector::plugin::log::Level, message: String, fields: Vec<(String, String)>) {
        if self.logs.len() >= LOG_LINES_PER_RECORD {
            self.dropped_logs += 1;
            return;
        }
        let cut = |s: String| capped(&s, PLUGIN_TEXT_BYTES);
        self.logs.push(PluginLog {
            level: format!("{level:?}").to_lowercase(),
            message: cut(message),
            fields: fields.into_iter().take(20).map(|(k, v)| (cut(k), cut(v))).collect(),
        });
    }
}

fn new_state(limits: Limits) -> HostState {
    // Deterministic WASI: no files, sockets or environment; fixed clocks and seeds.
    let wasi = WasiCtxBuilder::new()
        .wall_clock(FixedClock)
        .monotonic_clock(FixedClock)
        .secure_random(rand_wasi::rngs::StdRng::seed_from_u64(0))
        .insecure_random(rand_wasi::rngs::StdRng::seed_from_u64(0))
        .insecure_random_seed(0)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .build();
    HostState {
        wasi,
        table: ResourceTable::new(),
        limiter: Limiter {
            max_memory: limits.memory_bytes.min(MAX_MEMORY_BYTES),
            refused: None,
        },
        logs: Vec::new(),
        dropped_logs: 0,
    }
}

/// A plugin ready to run: compiled, linked, checked against the world.
pub struct LoadedPlugin {
    pub sha256: String,
    pub world: &'static str,
    pre: v0_1::PluginPre<HostState>,
}

/// What a record's route + render produced, with the plugin's log lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteOutcome {
    pub routed: Vec<Routed>,
    pub logs: Vec<PluginLog>,
}

pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<Arc<DiskCache>>,
    compiler: Compiler,
    compile_limits: CompileLimits,
    call_timeout: Duration,
    /// One compilation at a time on this host: a compile takes every core it can.
    compiling: tokio::sync::Semaphore,
    loaded: Mutex<HashMap<String, Arc<LoadedPlugin>>>,
    /// Plugins that failed to compile, by hash, so a poll does not compile one again and again.
    refused: Mutex<HashMap<String, PluginFault>>,
}

/// How many refused plugins are remembered (then forgotten all at once).
const REFUSED_REMEMBERED: usize = 1024;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The engine's settings: the host's and the compiler process's must be the same, or the
/// host cannot load what its compiler wrote.
pub(crate) fn engine_config() -> Config {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(256)
        .total_core_instances(512)
        .total_memories(512)
        .total_tables(512)
        .max_memory_size(MAX_MEMORY_BYTES)
        // Reset the small prefix a plugin touches by rewriting it rather than handing the
        // pages back to the kernel and faulting them in again on the next record; the
        // same for its tables (a few KiB), whose `madvise` per record was a third of the
        // call (`benches/plugin_call.rs`: 28.5 → 18.6 µs per record).
        .linear_memory_keep_resident(256 << 10)
        .table_keep_resident(64 << 10);
    let mut config = Config::new();
    config
        .consume_fuel(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

impl PluginRuntime {
    /// `cache`: where compiled plugins are kept between runs (None: memory only). Compiles
    /// in process ([`Compiler::InProcess`]) until told otherwise ([`Self::with_compiler`]).
    pub fn new(cache: Option<DiskCache>) -> Result<Self, PluginFault> {
        let load_err = |e: wasmtime::Error| PluginFault::new(FaultKind::WrongWorld, "engine", e.to_string());
        let engine = Engine::new(&engine_config()).map_err(load_err)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(load_err)?;
        v0_1::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(load_err)?;
        Ok(PluginRuntime {
            engine,
            linker,
            cache: cache.map(Arc::new),
            compiler: Compiler::InProcess,
            compile_limits: CompileLimits::default(),
            call_timeout: Duration::from_secs(PLUGIN_CALL_SECONDS),
            compiling: tokio::sync::Semaphore::new(1),
            loaded: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
        })
    }

    /// `serve`'s runtime: compiled plugins kept in `dir` (else [`cache::default_dir`]),
    /// checked and authenticated under a key derived from the master key; compiled in a child
    /// process of this executable.
    pub fn serving(dir: Option<std::path::PathBuf>, keys: &crate::secrets::Keyring) -> anyhow::Result<Self> {
        let cache = match dir.or_else(cache::default_dir) {
            Some(dir) => Some(DiskCache::open(&dir, keys)?),
            None => {
                tracing::warn!(
                    "neither ML_CONNECTOR_PLUGIN_CACHE_DIR, XDG_CACHE_HOME nor HOME is set: compiled plugins are kept in memory only"
                );
                None
            }
        };
        if let Some(c) = &cache {
            tracing::info!(dir = %c.dir().display(), "compiled plugins cached on disk");
        }
        let compiler = Compiler::this_executable().map_err(|e| anyhow::anyhow!("finding this executable to compile plugins with: {e}"))?;
        Ok(PluginRuntime::new(cache)?.with_compiler(compiler))
    }

    /// Where plugins are compiled (`serve`: a child process of its own executable).
    pub fn with_compiler(mut self, compiler: Compiler) -> Self {
        self.compiler = compiler;
        self
    }

    pub fn with_compile_limits(mut self, limits: CompileLimits) -> Self {
        self.compile_limits = limits;
        self
    }

    /// The wall-clock limit of each plugin call (default [`PLUGIN_CALL_SECONDS`]).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// A plugin already compiled and checked, by content hash.
    pub fn cached(&self, sha256: &str) -> Option<Arc<LoadedPlugin>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(sha256).cloned()
    }

    /// Compile (or take from the caches) and check a plugin. The bytes are untrusted: over
    /// the size cap they are refused unread; the compiler runs off the async runtime and is
    /// stopped at the time limit.
    pub async fn load(&self, wasm: &[u8]) -> Result<Arc<LoadedPlugin>, PluginFault> {
        let sha = sha256_hex(wasm);
        if let Some(p) = self.cached(&sha) {
            return Ok(p);
        }
        compile::check_size(wasm, &self.compile_limits)?;
        let _turn = self.compiling.acquire().await.expect("the compile semaphore is never closed");
        // Compiled by whoever held the turn before us?
        if let Some(p) = self.cached(&sha) {
            return Ok(p);
        }
        if let Some(f) = self.refused.lock().unwrap_or_else(|p| p.into_inner()).get(&sha) {
            return Err(f.clone());
        }
        let component = match self.read_disk(&sha).await {
            Some(c) => c,
            None => self.compile(&sha, wasm).await.inspect_err(|f| self.remember_refusal(&sha, f))?,
        };
        let loaded = self.link(sha.clone(), component).inspect_err(|f| self.remember_refusal(&sha, f))?;
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).insert(sha, loaded.clone());
        Ok(loaded)
    }

    fn remember_refusal(&self, sha: &str, fault: &PluginFault) {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.len() >= REFUSED_REMEMBERED {
            refused.clear();
        }
        refused.insert(sha.to_string(), fault.clone());
    }

    /// Compile, then keep the artifact on disk (authenticated) for the next start.
    async fn compile(&self, sha: &str, wasm: &[u8]) -> Result<Component, PluginFault> {
        let artifact = compile::compile(&self.compiler, &self.engine, wasm, &self.compile_limits).await?;
        let (engine, cache, sha) = (self.engine.clone(), self.cache.clone(), sha.to_string());
        let job = tokio::task::spawn_blocking(move || {
            if let Some(cache) = &cache
                && let Err(e) = cache.write(&sha, &artifact)
            {
                tracing::warn!(plugin = %&sha[..12], dir = %cache.dir().display(), error = %e, "could not keep a compiled plugin on disk");
            }
            // SAFETY: the artifact was made just now by this host's compiler (this process,
            // or its own executable in a child process with the same engine settings).
            unsafe { Component::deserialize(&engine, &artifact) }
        });
        job.await
            .map_err(|e| PluginFault::new(FaultKind::CompileLimit, "load", format!("the compiled plugin was lost: {e}")))?
            .map_err(|e| {
                PluginFault::new(
                    FaultKind::WrongWorld,
                    "load",
                    format!("not a WebAssembly component this host can compile: {e}"),
                )
            })
    }

    /// The authenticated artifact on disk, if there is one; a refused one is logged.
    async fn read_disk(&self, sha: &str) -> Option<Component> {
        let (engine, cache, sha) = (self.engine.clone(), self.cache.clone()?, sha.to_string());
        let job = tokio::task::spawn_blocking(move || {
            let artifact = match cache.read(&sha) {
                Ok(a) => a,
                Err(cache::EntryRefusal::Missing) => return None,
                Err(why) => {
                    tracing::warn!(plugin = %&sha[..12], dir = %cache.dir().display(), %why, "compiled plugin on disk not used; compiling it again");
                    return None;
                }
            };
            // SAFETY: its MAC proves this host wrote it (under a key derived from the master
            // key); wasmtime still checks the header and refuses one made by an incompatible
            // engine, which is then compiled again.
            match unsafe { Component::deserialize(&engine, &artifact) } {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::info!(plugin = %&sha[..12], error = %e, "compiled plugin on disk is for another engine; compiling it again");
                    None
                }
            }
        });
        job.await.ok().flatten()
    }

    /// Check the world and link.
    fn link(&self, sha: String, component: Component) -> Result<Arc<LoadedPlugin>, PluginFault> {
        let wrong = |m: String| PluginFault::new(FaultKind::WrongWorld, "load", m);
        let world = check_world(&self.engine, &component).map_err(wrong)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            wrong(format!(
                "imports something a plugin may not have (only `log` and deterministic WASI): {e}"
            ))
        })?;
        let pre = v0_1::PluginPre::new(pre).map_err(|e| wrong(format!("does not export the {} functions: {e}", v0_1::WORLD)))?;
        Ok(Arc::new(LoadedPlugin { sha256: sha, world, pre }))
    }

    /// One call of a plugin, under the wall-clock limit. On a timeout the call's future is
    /// dropped; the caller returns at once, dropping the store and its instance with it.
    async fn timed<T>(&self, call: &str, fut: impl Future<Output = wasmtime::Result<T>>) -> Result<wasmtime::Result<T>, PluginFault> {
        tokio::time::timeout(self.call_timeout, fut).await.map_err(|_| {
            PluginFault::new(
                FaultKind::Timeout,
                call,
                format!(
                    "ran past its wall-clock limit of {} s and was stopped",
                    self.call_timeout.as_secs_f64()
                ),
            )
        })
    }

    async fn store(&self, limits: Limits) -> Store<HostState> {
        let mut store = Store::new(&self.engine, new_state(limits));
        store.limiter(|s| &mut s.limiter);
        // Yield to the executor regularly so a busy plugin never holds a runtime thread.
        let _ = store.fuel_async_yield_interval(Some(100_000));
        store
    }

    /// Route one record and render every delivery, in one fresh store.
    pub async fn route_and_render(
        &self,
        plugin: &LoadedPlugin,
        limits: Limits,
        ctx: &PluginContext,
        alert: &AlertInput,
    ) -> Result<RouteOutcome, PluginFault> {
        let limits = limits.bounded();
        let mut store = self.store(limits).await;
        let wctx = v0_1::t::Context::from(ctx);
        let walert = v0_1::t::AlertRecord::from(alert);
        let inst = self.instantiate(&plugin.pre, &mut store, limits).await?;
        refuel(&mut store, limits, "route")?;
        let out = self.timed("route", inst.call_route(&mut store, &wctx, &walert)).await?;
        let deliveries = classify(&store, "route", out)?.map_err(|e| PluginFault::new(FaultKind::PluginError, "route", e))?;
        let deliveries: Vec<routing::Delivery> = deliveries.iter().map(|d| v0_1::delivery(alert, d)).collect();
        routing::check_deliveries(alert, &deliveries).map_err(|e| PluginFault::new(FaultKind::InvalidOutput, "route", e))?;
        let mut routed = Vec::new();
        for (i, d) in deliveries.into_iter().enumerate() {
            let call = format!("render (delivery {})", i + 1);
            refuel(&mut store, limits, &call)?;
            let out = self
                .timed(&call, inst.call_render(&mut store, &wctx, &walert, &v0_1::to_delivery(&d)))
                .await?;
            let m = classify(&store, &call, out)?.map_err(|e| PluginFault::new(FaultKind::PluginError, &call, e))?;
            let message = v0_1::message(m);
            routing::check_message(d.channel, &message).map_err(|e| PluginFault::new(FaultKind::InvalidOutput, &call, e))?;
            routed.push(Routed { delivery: d, message });
        }
        let data = store.into_data();
        let mut logs = data.logs;
        if data.dropped_logs > 0 {
            logs.push(PluginLog {
                level: "warn".into(),
                message: format!("{} more log lines dropped", data.dropped_logs),
                fields: vec![],
            });
        }
        Ok(RouteOutcome { routed, logs })
    }

    /// Read a person's answer to one delivery.
    pub async fn interpret_reply(
        &self,
        plugin: &LoadedPlugin,
        limits: Limits,
        ctx: &PluginContext,
        alert: &AlertInput,
        delivery: &routing::Delivery,
        answer: &Answer,
    ) -> Result<Reply, PluginFault> {
        let limits = limits.bounded();
        let mut store = self.store(limits).await;
        let inst = self.instantiate(&plugin.pre, &mut store, limits).await?;
        refuel(&mut store, limits, "interpret-reply")?;
        let (wctx, walert) = (ctx.into(), alert.into());
        let (wdelivery, wanswer) = (v0_1::to_delivery(delivery), v0_1::answer(answer));
        let out = self
            .timed(
                "interpret-reply",
                inst.call_interpret_reply(&mut store, &wctx, &walert, &wdelivery, &wanswer),
            )
            .await?;
        let r = classify(&store, "interpret-reply", out)?.map_err(|e| PluginFault::new(FaultKind::PluginError, "interpret-reply", e))?;
        let reply = Reply {
            action: v0_1::action(r.action),
            confirmation: r.confirmation,
        };
        routing::check_reply(&reply).map_err(|e| PluginFault::new(FaultKind::InvalidOutput, "interpret-reply", e))?;
        Ok(reply)
    }

    async fn instantiate(
        &self,
        pre: &v0_1::PluginPre<HostState>,
        store: &mut Store<HostState>,
        limits: Limits,
    ) -> Result<v0_1::Plugin, PluginFault> {
        refuel(store, limits, "instantiate")?;
        let out = self.timed("instantiate", pre.instantiate_async(&mut *store)).await?;
        classify(store, "instantiate", out)
    }
}

fn refuel(store: &mut Store<HostState>, limits: Limits, call: &str) -> Result<(), PluginFault> {
    store
        .set_fuel(limits.fuel)
        .map_err(|e| PluginFault::new(FaultKind::Trap, call, e.to_string()))
}

/// Name what went wrong in a call, in words an operator can act on.
fn classify<T>(store: &Store<HostState>, call: &str, out: wasmtime::Result<T>) -> Result<T, PluginFault> {
    let err = match out {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    if let Some(desired) = store.data().limiter.refused {
        let cap = store.data().limiter.max_memory;
        return Err(PluginFault::new(
            FaultKind::MemoryCap,
            call,
            format!(
                "asked for {} MiB of memory; its cap is {} MiB",
                desired.div_ceil(1 << 20),
                cap >> 20
            ),
        ));
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Err(PluginFault::new(
            FaultKind::BudgetExhausted,
            call,
            "used up its CPU budget (fuel) and was stopped",
        )),
        Some(trap) => Err(PluginFault::new(FaultKind::Trap, call, format!("trapped: {trap}"))),
        None => Err(PluginFault::new(FaultKind::Trap, call, format!("failed: {err:#}"))),
    }
}

/// The world versions this host runs, each by its own bindings module.
const KNOWN_WORLD_VERSIONS: [&str; 1] = ["0.1.0"];

/// Which world a component was built against, from the versioned names it imports.
fn check_world(engine: &Engine, c: &Component) -> Result<&'static str, String> {
    let ty = c.component_type();
    let ours: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .filter(|n| n.starts_with("ml-connector:plugin/"))
        .collect();
    for name in &ours {
        let version = name.rsplit_once('@').map(|(_, v)| v).unwrap_or("");
        // Exactly a version this host has shipped: a later patch or minor may import what
        // this host does not know, and must not be run labelled as an older one.
        if !KNOWN_WORLD_VERSIONS.contains(&version) {
            return Err(format!(
                "built against ml-connector:plugin@{version}; this host runs {} (import {name})",
                v0_1::WORLD
            ));
        }
    }
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    for f in ["route", "render", "interpret-reply"] {
        if !exports.iter().any(|e| e == f) {
            return Err(format!(
                "does not export `{f}` of {}; its exports are [{}]",
                v0_1::WORLD,
                exports.join(", ")
            ));
        }
    }
    Ok(v0_1::WORLD)
}
