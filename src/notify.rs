//! systemd service notifications (`sd_notify`): READY, RELOADING, STOPPING, STATUS and the
//! watchdog. Every call is a no-op when the daemon is not run by systemd (no `NOTIFY_SOCKET`),
//! and a failed send is logged, never fatal: the service manager's view is not worth stopping
//! the pipeline for.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "Cannot notify the service manager.");
    }
}

/// The daemon is up: the pipeline runs (after start or after a reload).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload began; `ready` ends it. systemd wants the monotonic time with it (since v253).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading the config"),
        ]),
        Err(_) => send(&[
            NotifyState::Reloading,
            NotifyState::Status("reloading the config"),
        ]),
    }
}

/// Shutdown began.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// A free-form status line (`systemctl status` shows it).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// "Still alive" to the watchdog.
pub fn watchdog_ping() {
    send(&[NotifyState::Watchdog]);
}
