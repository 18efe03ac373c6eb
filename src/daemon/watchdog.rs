//! The systemd watchdog: pinged only while the pipeline makes progress.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::pipeline::InFlightPaths;

/// Pings the systemd watchdog at half its interval while the pipeline makes progress: its
/// heartbeat advanced within the last interval, or it holds no file (idle is healthy). A
/// pipeline stuck with work in hand stops the pings, and systemd restarts the daemon.
pub(super) async fn watchdog(
    interval: Duration,
    metrics: Arc<Metrics>,
    in_flight: Arc<std::sync::Mutex<InFlightPaths>>,
) {
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_beat = metrics.heartbeat();
    let mut last_progress = tokio::time::Instant::now();
    let mut stalled = false;
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        let beat = metrics.heartbeat();
        let idle = in_flight
            .lock()
            .map(|set| set.lock().map(|files| files.is_empty()).unwrap_or(false))
            .unwrap_or(false);
        if beat != last_beat || idle {
            last_beat = beat;
            last_progress = now;
        }
        if now.duration_since(last_progress) < interval {
            if stalled {
                tracing::info!("The pipeline progresses again; watchdog pings resumed.");
                stalled = false;
            }
            crate::notify::watchdog_ping();
        } else if !stalled {
            stalled = true;
            tracing::error!(
                seconds = now.duration_since(last_progress).as_secs(),
                "The pipeline holds files but has made no progress; watchdog pings stopped."
            );
        }
    }
}
