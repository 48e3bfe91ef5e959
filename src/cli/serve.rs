//! `portcullis serve`: load the config, raise the open-file limit, build the runtime,
//! bind, start the state, and run until a signal has drained the listeners.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::{init_logging, load_config, LogFormat};
use crate::config::{self, redact::Redactor};

pub(super) fn run(path: PathBuf, format: LogFormat) -> ExitCode {
    let _log_guard = init_logging(format);
    let loaded = match load_config(&path) {
        Ok(loaded) => loaded,
        Err(code) => {
            eprintln!("portcullis: config refused; nothing started");
            return code;
        }
    };
    super::exit(serve(path, loaded))
}

fn serve(path: PathBuf, loaded: config::Loaded) -> anyhow::Result<()> {
    let redactor = Redactor::of_file(&path);
    for w in &loaded.warnings {
        tracing::warn!("{}", redactor.text(&w.to_string()));
    }
    let config = loaded.config;
    // Each connection is a file descriptor: raise the soft limit to the hard one so that
    // max_connections, not a default of 1024, is what caps them.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if (n as usize) < config.limits.max_connections + 64 => tracing::warn!(
            nofile = n,
            max_connections = config.limits.max_connections,
            "the open-file limit is below max_connections"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    match config.runtime.model {
        // The inbound workers run runtimes of their own (`run`): this one serves the
        // other listeners, reloads and signals.
        config::RuntimeModel::PerCore => {
            rt.worker_threads(1);
        }
        config::RuntimeModel::Shared => {
            if let Some(n) = config.runtime.worker_threads {
                rt.worker_threads(n);
            }
        }
    }
    let rt = rt.build().context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        let bound = crate::server::Bound::bind(&config)?;
        let state = crate::state::State::start(config)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // Signal handlers first: a signal sent as soon as "listening" shows must be handled.
        let (trigger, shutdown) = crate::server::shutdown::channel();
        let terminated = crate::server::shutdown::signal();
        tokio::spawn(crate::reload::watch(
            state.clone(),
            path.clone(),
            crate::reload::hangups(),
            shutdown.clone(),
        ));
        let draining = state.clone();
        tokio::spawn(async move {
            terminated.await;
            // Not ready any more, still serving: load balancers and Kubernetes stop
            // sending before the listeners close. A second signal cuts the delay short.
            draining.set_ready(false);
            let delay = draining.gateway().config.limits.drain_delay;
            tracing::info!(drain_delay = ?delay, "shutdown signal received; /readyz answers 503, then draining");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = crate::server::shutdown::signal() => {}
            }
            trigger.fire();
        });
        let gw = state.gateway();
        tracing::info!(
            listener = "inbound",
            address = %bound.inbound_addr(),
            tls = gw.config.listen.tls.is_some(),
            config = %path.display(),
            "listening"
        );
        if let Some(a) = bound.admin_addr() {
            tracing::info!(listener = "admin", address = %a, "listening");
        }
        if let Some(a) = bound.egress_addr() {
            tracing::info!(listener = "egress", address = %a, "listening");
        }
        if let Some(a) = bound.forward_auth_addr() {
            tracing::info!(listener = "forward_auth", address = %a, "listening");
        }
        crate::run::run(state, bound, shutdown).await;
        anyhow::Ok(())
    })?;
    Ok(())
}
