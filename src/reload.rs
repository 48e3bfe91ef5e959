//! Reload without restart: on SIGHUP, and when the config file (or a TLS certificate or
//! key, the client CA or CRL, a `{ file = ... }` secret or a JWKS file it names) changes,
//! polled every second and debounced. Polling and reloading run on blocking threads, and
//! read each file only when it is a plain file within its kind's size limit
//! (`config::FileKind`): a file replaced by a huge one, a FIFO or a device is a refused
//! reload, never a stalled runtime or a swollen process. A new config is checked
//! like `portcullis check` and built completely before it is swapped in atomically; one
//! that fails is refused, logged and counted, and the running one stays. Requests in
//! flight finish with the generation they started with.
//!
//! Listener addresses cannot move under a running process: a reload that changes one is
//! refused with a log line saying so (restart to re-bind).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::{self, Config};
use crate::server::Shutdown;
use crate::state::{State, Status};
use crate::util::unix_now;

fn listeners_moved(old: &Config, new: &Config) -> Option<String> {
    let mut moved = Vec::new();
    if old.listen.address != new.listen.address {
        moved.push(format!(
            "listen.address {} -> {}",
            old.listen.address, new.listen.address
        ));
    }
    if old.admin != new.admin {
        moved.push(format!("admin.address {:?} -> {:?}", old.admin, new.admin));
    }
    if old.egress != new.egress {
        moved.push(format!("egress.address {:?} -> {:?}", old.egress, new.egress));
    }
    if old.forward_auth != new.forward_auth {
        moved.push(format!(
            "forward_auth.address {:?} -> {:?}",
            old.forward_auth, new.forward_auth
        ));
    }
    (!moved.is_empty()).then(|| format!("{}: restart Portcullis to re-bind listeners", moved.join(", ")))
}

/// The shared store is chosen at start: a reload may not switch it.
fn shared_changed(old: &Config, new: &Config) -> Option<String> {
    use crate::config::SharedBackend;
    let same = match (&old.shared, &new.shared) {
        (SharedBackend::Memory, SharedBackend::Memory) => true,
        (SharedBackend::Redis(a), SharedBackend::Redis(b)) => a.same_store(b),
        _ => false,
    };
    (!same).then(|| "[shared] changed (backend, where Redis is, its credentials, secret or key_prefix): restart Portcullis to use it".to_string())
}

/// Tells every replica (through `[shared]`) which credentials this reload withdrew (and
/// put back), so that they refuse them before their own files change. Runs on the
/// runtime this blocking reload was started from.
fn announce_credentials(state: &State, change: crate::shared::CredentialChange) {
    if change.is_empty() {
        return;
    }
    let withdrawals = state.withdrawals();
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move { withdrawals.announce(change).await });
        }
        Err(_) => tracing::warn!("reload outside the runtime: withdrawn credentials not announced"),
    }
}

/// Why a reload was refused (the running config stays). The texts quote the file's
/// values without its secrets, and without the user info and query values of its URLs.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file did not load or check.
    #[error("{0}")]
    Invalid(String),
    /// It changes what only a restart changes (a listener's address, the shared store).
    #[error("{0}")]
    NeedsRestart(String),
    /// It checked, but could not become a running gateway.
    #[error("{0}")]
    Build(String),
}

/// Loads `path`, checks it, builds it and swaps it in; or says why not.
pub fn reload(state: &State, path: &Path, trigger: &'static str) -> Result<(), ReloadError> {
    // What is said about a refused file (log, admin page) quotes its values: without
    // the secrets it writes and the user info and query values of its URLs.
    let redacted = |e: String| config::redact::Redactor::of_file(path).text(&e);
    let result = config::load(path)
        .map_err(|e| ReloadError::Invalid(redacted(e.to_string())))
        .and_then(|loaded| {
            let current = state.gateway();
            if let Some(m) = listeners_moved(&current.config, &loaded.config)
                .or_else(|| shared_changed(&current.config, &loaded.config))
            {
                return Err(ReloadError::NeedsRestart(m));
            }
            if current.config.runtime.worker_threads != loaded.config.runtime.worker_threads
                || current.config.runtime.model != loaded.config.runtime.model
            {
                tracing::warn!("[runtime] changed: takes effect at the next restart");
            }
            if current.config.tracing != loaded.config.tracing {
                tracing::warn!("[tracing] changed: takes effect at the next restart");
            }
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            let change = crate::shared::credential_change(&current.config, &loaded.config);
            state
                .replace(loaded.config)
                .map_err(|e| ReloadError::Build(redacted(e.to_string())))?;
            announce_credentials(state, change);
            Ok(())
        });
    let m = &state.metrics;
    match &result {
        Ok(()) => {
            m.config_reloads.with_label_values(&["success"]).inc();
            m.config_last_reload_success.set(unix_now() as i64);
            m.config_last_reload_successful.set(1);
            tracing::info!(trigger, config = ?path, "config reloaded");
        }
        Err(e) => {
            m.config_reloads.with_label_values(&["failure"]).inc();
            m.config_last_reload_successful.set(0);
            tracing::error!(trigger, config = ?path, error = %crate::util::Escaped(e), "config reload refused; the running config stays");
        }
    }
    state.set_reload_status(Status {
        at: unix_now(),
        ok: result.is_ok(),
        trigger,
        message: match &result {
            Ok(()) => "config reloaded".into(),
            Err(e) => e.to_string(),
        },
    });
    result
}

/// A digest of the config file and the files it names (TLS certificate and key, client
/// CA and CRL, secret files, a JWKS file): what a change is. Each file is opened by
/// [`config::secret::open`] (a plain file within its kind's limit, checked by metadata
/// first) and streamed through the hash, never held whole; a file that cannot be read
/// adds why not instead, so becoming readable, or unreadable, is a change too; but a
/// config file that cannot be opened at all (being replaced) is no change yet. Blocking:
/// it runs on a blocking thread, never on the runtime's.
fn fingerprint(path: &Path, state: &State) -> Option<[u8; 32]> {
    use config::FileKind;
    let mut h = Sha256::new();
    let gw = state.gateway();
    let tls = gw.config.listen.tls.iter().flat_map(|t| [&t.cert, &t.key]);
    let files = std::iter::once((path, FileKind::Config))
        .chain(tls.map(|f| (f.as_path(), FileKind::Tls)))
        .chain(gw.config.watched.iter().map(|(f, kind)| (f.as_path(), *kind)));
    for (f, kind) in files {
        h.update((f.as_os_str().len() as u64).to_be_bytes());
        h.update(f.as_os_str().as_encoded_bytes());
        match config::secret::open(f, kind) {
            Ok((file, _)) => {
                use std::io::Read;
                h.update(b"file");
                let mut content = Sha256::new();
                let read = std::io::copy(&mut file.take(kind.limit() + 1), &mut content);
                h.update(format!("{read:?}").as_bytes());
                h.update(content.finalize());
            }
            Err(config::secret::FileError::Io(_)) if f == path => return None,
            Err(e) => {
                h.update(b"error");
                h.update(e.to_string().as_bytes());
            }
        }
    }
    Some(h.finalize().into())
}

/// [`fingerprint`] on a blocking thread.
async fn fingerprint_off(path: &Path, state: &Arc<State>) -> Option<[u8; 32]> {
    let (path, state) = (path.to_path_buf(), state.clone());
    tokio::task::spawn_blocking(move || fingerprint(&path, &state))
        .await
        .ok()
        .flatten()
}

/// [`reload`] on a blocking thread: it reads and parses files, and builds a generation.
async fn reload_off(state: &Arc<State>, path: &Path, trigger: &'static str) {
    let (path, state) = (path.to_path_buf(), state.clone());
    let _ = tokio::task::spawn_blocking(move || reload(&state, &path, trigger)).await;
}

/// The SIGHUP stream, installed before the process says it is listening, so an early
/// SIGHUP reloads instead of killing the process.
#[cfg(unix)]
pub type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
pub type Hangups = Option<()>;

pub fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Reloads on SIGHUP and on file changes until shutdown.
pub async fn watch(state: Arc<State>, path: PathBuf, hangups: Hangups, mut shutdown: Shutdown) {
    const POLL: Duration = Duration::from_secs(1);
    #[cfg(unix)]
    let mut hup = hangups;
    #[cfg(not(unix))]
    let _ = hangups;
    let mut last = fingerprint_off(&path, &state).await;
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        tokio::select! {
            _ = shutdown.fired() => return,
            _ = hangup => {
                reload_off(&state, &path, "sighup").await;
                last = fingerprint_off(&path, &state).await;
            }
            _ = tokio::time::sleep(POLL) => {
                let seen = fingerprint_off(&path, &state).await;
                if seen.is_some() && seen != last {
                    // Debounce: editors and ConfigMap updates write in several steps.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let settled = fingerprint_off(&path, &state).await;
                    if settled == seen {
                        reload_off(&state, &path, "file_change").await;
                        last = fingerprint_off(&path, &state).await;
                    }
                }
            }
        }
    }
}
