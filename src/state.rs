//! Process state: the config generation serving new requests, and everything that
//! outlives a generation (metrics, the upstream client, the refusal ring, authentication
//! caches and the builtin issuer's state, the reload status, readiness).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth;
use crate::config::Config;
use crate::gateway::{BuildError, Env, Gateway, RefusalRecord};
use crate::metrics::Metrics;
use crate::upstream;
use crate::util::unix_now;

/// The outcome of the last config load, for the admin page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// Unix seconds.
    pub at: u64,
    pub ok: bool,
    pub trigger: &'static str,
    pub message: String,
}

/// Process-wide state: the current config generation and what outlives reloads.
pub struct State {
    current: ArcSwap<Gateway>,
    pub metrics: Metrics,
    pub client: upstream::Client,
    /// What requests share: metrics, client, refusal ring.
    pub env: Arc<Env>,
    /// Assertion key used when the config sets none.
    random_assertion_key: [u8; 32],
    /// Authentication state that outlives a config generation: credential caches, the
    /// lockout table, the builtin issuer's key and refresh tokens.
    lasting: auth::Lasting,
    reload_status: std::sync::Mutex<Option<Status>>,
    ready: AtomicBool,
}

impl State {
    /// The process state for `config`, with its shared store when `[shared]` names one:
    /// connected lazily (a replica starts while Redis is down), and, for the builtin
    /// issuer without a `signing_key`, the signing key agreed by every replica.
    pub async fn start(config: Config) -> Result<Arc<Self>, BuildError> {
        let metrics = Metrics::new();
        let shared = crate::shared::Backend::start(&config.shared, &metrics).await?;
        let lasting = auth::Lasting::with_backend(shared);
        if let Some(b) = config.builtin_issuer().filter(|o| o.signing_keys.is_empty()) {
            lasting.oauth.agree_signing_key(b.signing_key_rotation).await?;
        }
        Self::build(config, metrics, lasting)
    }

    /// The process state with in-process shared state only (`[shared]` is not consulted).
    pub fn new(config: Config) -> Result<Arc<Self>, BuildError> {
        let metrics = Metrics::new();
        let lasting = auth::Lasting::with_backend(crate::shared::Backend::memory(&metrics));
        Self::build(config, metrics, lasting)
    }

    fn build(config: Config, metrics: Metrics, lasting: auth::Lasting) -> Result<Arc<Self>, BuildError> {
        let random_assertion_key = rand::random();
        let client = upstream::client();
        let telemetry = match &config.tracing.otlp_endpoint {
            Some(endpoint) => Some(Arc::new(
                crate::telemetry::Telemetry::start(&config.tracing, endpoint).map_err(BuildError::Tracing)?,
            )),
            None => None,
        };
        let gw = Gateway::build(config, &metrics, &random_assertion_key, &lasting, &client)?;
        metrics.config_last_reload_success.set(unix_now() as i64);
        metrics.config_last_reload_successful.set(1);
        let loaded = Status {
            at: unix_now(),
            ok: true,
            trigger: "start",
            message: "config loaded".into(),
        };
        Ok(Arc::new(State {
            current: ArcSwap::from_pointee(gw),
            metrics: metrics.clone(),
            client: client.clone(),
            random_assertion_key,
            lasting,
            env: Arc::new(Env {
                telemetry,
                metrics: metrics.clone(),
                client: client.clone(),
                h2c: upstream::h2c_client(),
                h1: upstream::h1_client(),
                in_task: false,
                refusals: Arc::default(),
            }),
            reload_status: std::sync::Mutex::new(Some(loaded)),
            ready: AtomicBool::new(false),
        }))
    }

    /// The clock of lockouts and token lifetimes: a test moves it forward instead of
    /// waiting.
    pub fn clock(&self) -> &crate::util::Clock {
        &self.lasting.clock
    }

    /// The config generation serving new requests.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Builds a new generation from `config` and swaps it in; requests in flight keep
    /// the generation they started with.
    pub fn replace(&self, config: Config) -> Result<(), BuildError> {
        let gw = Gateway::build(
            config,
            &self.metrics,
            &self.random_assertion_key,
            &self.lasting,
            &self.client,
        )?;
        self.current.store(Arc::new(gw));
        Ok(())
    }

    /// Where a reload announces the credentials it withdrew.
    pub fn withdrawals(&self) -> Arc<dyn crate::shared::Withdrawals> {
        self.lasting.shared.withdrawals.clone()
    }

    pub fn set_reload_status(&self, s: Status) {
        if let Ok(mut r) = self.reload_status.lock() {
            *r = Some(s);
        }
    }

    pub fn reload_status(&self) -> Option<Status> {
        self.reload_status.lock().ok().and_then(|r| r.clone())
    }

    /// The last refusals, oldest first.
    pub fn refusals(&self) -> Vec<RefusalRecord> {
        self.env.refusals.list()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
