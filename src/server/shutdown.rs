//! Shutdown: one signal that every listener and connection watches.
//!
//! On SIGTERM or SIGINT the listeners stop accepting, each connection finishes the
//! requests it has (HTTP/1 closes after the current response, HTTP/2 sends GOAWAY), and
//! the process exits once they are done or `shutdown_timeout` has passed.

use tokio::sync::watch;

/// The sending side: trigger once.
#[derive(Debug, Clone)]
pub struct Trigger(watch::Sender<bool>);

/// The watching side, cheap to clone into every task.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the trigger fired (or was dropped).
    pub async fn fired(&mut self) {
        // An error means the trigger is gone, which also means: stop.
        let _ = self.0.wait_for(|v| *v).await;
    }
}

/// Installs the SIGTERM and SIGINT handlers now (so a signal that arrives before the
/// returned future is polled is not lost, nor fatal) and resolves on the first of them.
pub fn signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
