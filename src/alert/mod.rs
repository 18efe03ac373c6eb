//! Alerts: turning drift events into notifications that reach people, once, even when a mail
//! server is down for an hour.
//!
//! - `crate::config::alerts`: `[alerts]`, `[receivers.NAME]` and `[[rules]]`, raw and validated.
//! - [`rule`]: the pure state machine (inactive → pending → firing → resolved) per rule.
//! - [`notification`]: the notification document and its renderings (subject, text, HTML).
//! - [`receiver`]: email, webhook, Alertmanager and command delivery.
//!
//! Their tables (rule state, the outbox, requested actions) are `crate::store::alerts`.
//!
//! The alert task runs in the daemon. Every `evaluation_interval` it reads the drift events it
//! has not seen (and every open one), runs each rule's state machine and, in one transaction,
//! writes the new states, the notifications they made (one outbox row per receiver) and the
//! actions they requested. One delivery worker per receiver sends that receiver's outbox rows in
//! order, each attempt bounded by a timeout, retrying with exponential backoff (capped) for as
//! long as it takes; undelivered rows stay visible ([`outbox_summary`]).

pub mod notification;
pub mod receiver;
pub mod rule;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use crate::config::alerts::AlertConfig;
pub use crate::store::{OutboxSummary, ReceiverOutbox, outbox_summary};

use crate::config::alerts::{Rule, Severity};
use crate::store::{
    ActionNote, AlertDb, AlertTables, DriftEvent, EvaluationCommit, NewAction, NewNotification,
};
use crate::time::now_ms;
use notification::{Notification, VERSION, summarize};
use receiver::Sender;
use rule::{Drift, GroupState, Kind, Policy};

/// The running alert task; [`AlertTask::stop`] ends it.
pub struct AlertTask {
    stop: watch::Sender<bool>,
    handle: Option<JoinHandle<()>>,
    config: AlertConfig,
    db: PathBuf,
}

impl AlertTask {
    /// Starts evaluating rules and delivering the outbox of the database at `db`. With no
    /// rules and no receivers there is nothing to do and nothing is started.
    pub fn start(alerts: &AlertConfig, db: &Path) -> AlertTask {
        let (stop, stopped) = watch::channel(false);
        let handle = if alerts.rules.is_empty() && alerts.receivers.is_empty() {
            None
        } else {
            tracing::info!(
                rules = alerts.rules.len(),
                receivers = alerts.receivers.len(),
                interval_seconds = alerts.evaluation_interval.as_secs_f64(),
                "Alerting started."
            );
            Some(tokio::spawn(run(alerts.clone(), db.to_path_buf(), stopped)))
        };
        AlertTask {
            stop,
            handle,
            config: alerts.clone(),
            db: db.to_path_buf(),
        }
    }

    /// Applies a reloaded config: restarts the task when `[alerts]`, a receiver, a rule or the
    /// database changed. Nothing is lost in between: state and outbox are in the database.
    pub async fn apply(self, alerts: &AlertConfig, db: &Path) -> AlertTask {
        if *alerts == self.config && db == self.db {
            return self;
        }
        tracing::info!("Alert rules or receivers changed; restarting alerting.");
        self.stop().await;
        AlertTask::start(alerts, db)
    }

    /// Stops the task; a delivery in progress may finish within a few seconds (or is retried
    /// at the next start, with the same dedup key).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Some(handle) = self.handle {
            let abort = handle.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), handle)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

/// How long an alert posted to Alertmanager stays active unless posted again.
fn alertmanager_lifetime(alerts: &AlertConfig) -> Duration {
    (alerts.evaluation_interval * 4).max(Duration::from_secs(300))
}

// A std mutex, not tokio's: it is only ever locked inside `spawn_blocking`, around short SQLite
// calls, never across an await. One connection serves the evaluator and every delivery worker.
type Db = Arc<Mutex<AlertDb>>;

/// Runs blocking database work off the async threads.
async fn with_db<T: Send + 'static, E: Into<anyhow::Error> + Send + 'static>(
    db: &Db,
    f: impl FnOnce(&mut AlertDb) -> Result<T, E> + Send + 'static,
) -> anyhow::Result<T> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = db.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    })
    .await?
    .map_err(Into::into)
}

async fn run(alerts: AlertConfig, path: PathBuf, mut stopped: watch::Receiver<bool>) {
    let alerts = Arc::new(alerts);
    let db = loop {
        let p = path.clone();
        match tokio::task::spawn_blocking(move || AlertDb::open(&p)).await {
            Ok(Ok(db)) => break Arc::new(Mutex::new(db)),
            Ok(Err(e)) => {
                tracing::error!(error = %e, db = %path.display(), "Alerting cannot open the database; retrying.")
            }
            Err(e) => tracing::error!(error = %e, "Alerting cannot open the database; retrying."),
        }
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(alerts.evaluation_interval) => {}
        }
    };
    let lifetime = alertmanager_lifetime(&alerts);
    let mut wakers: BTreeMap<String, Arc<Notify>> = BTreeMap::new();
    let mut workers = Vec::new();
    for receiver in alerts.receivers.values() {
        let sender = match Sender::new(receiver, lifetime) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(receiver = %receiver.name, error = %e, "Receiver cannot be set up; its notifications wait in the outbox.");
                continue;
            }
        };
        let wake = Arc::new(Notify::new());
        wakers.insert(receiver.name.clone(), wake.clone());
        workers.push(tokio::spawn(deliver(
            sender,
            alerts.clone(),
            db.clone(),
            wake,
            stopped.clone(),
        )));
    }
    loop {
        let (a, now) = (alerts.clone(), now_ms());
        match with_db(&db, move |db| evaluate(db, &a, now)).await {
            Ok(enqueued) => {
                for r in enqueued {
                    if let Some(w) = wakers.get(&r) {
                        w.notify_one();
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "Alert evaluation failed; retrying."),
        }
        // Notifications other parts of sensei wrote (re-distillation that keeps failing).
        let now = now_ms();
        match with_db(&db, move |db| db.tables().due_receivers(now)).await {
            Ok(due) => {
                for r in due {
                    if let Some(w) = wakers.get(&r) {
                        w.notify_one();
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "Cannot read the outbox."),
        }
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tokio::time::sleep(alerts.evaluation_interval) => {}
        }
    }
    for w in workers {
        let abort = w.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// One evaluation of every rule, committed in one transaction. Returns the receivers that got
/// new notifications.
pub fn evaluate(db: &mut AlertDb, alerts: &AlertConfig, now: i64) -> anyhow::Result<Vec<String>> {
    let tx = db.transaction()?;
    let q = tx.tables();
    let cursor = q.cursor()?.map(|(last, _)| last);
    // On the very first evaluation, drifts that are already over are history: only open ones.
    let max_before = q.max_event_id()?;
    let events = q.events(cursor.unwrap_or(max_before))?;
    // `now` was read before the snapshot, and a file committed in between brings drift events
    // stamped later. An evaluation cannot precede what it reads: were such an event judged by
    // the earlier time, it would not yet count as open (its `for` not met), its episode would
    // end, and if it closed before the next evaluation nobody would hear of it.
    let now = events
        .iter()
        .flat_map(|e| [Some(e.detected_at), e.resolved_at])
        .flatten()
        .fold(now, i64::max);
    let new_cursor = events
        .iter()
        .map(|e| e.id)
        .chain([cursor.unwrap_or(max_before)])
        .max()
        .unwrap_or(0);
    let mut commit = EvaluationCommit {
        cursor: new_cursor,
        ..EvaluationCommit::default()
    };
    let mut documents: Vec<(&Rule, Notification)> = Vec::new();
    for rule in &alerts.rules {
        let state = rule_state(q, &rule.name)?;
        let members = rule::members(rule, &events, cursor);
        let policy = Policy::new(rule, alerts.group_interval);
        let (next, notice) = rule::evaluate(&policy, &state, &members, now);
        if let Some(notice) = notice {
            let alert_id = alert_id(&rule.name, notice.fired_at);
            if notice.kind == Kind::Firing
                && let Some(action) = rule.action
            {
                let drifts_json = serde_json::to_string(&notice.members)?;
                let id = q.request_action(
                    &NewAction {
                        action: action.as_str(),
                        rule: &rule.name,
                        alert_id: &alert_id,
                        drifts_json,
                    },
                    now,
                )?;
                tracing::warn!(rule = %rule.name, action = action.as_str(), id, "Alert action requested.");
            }
            let action = q.action_of(&alert_id)?;
            let doc = document(
                alerts,
                rule,
                &next,
                notice.kind,
                notice.dedup_key(&rule.name),
                notice.members,
                action,
                now,
            );
            tracing::warn!(
                rule = %rule.name,
                kind = notice.kind.as_str(),
                dedup_key = %doc.dedup_key,
                "Alert {}: {}.",
                doc.status,
                doc.summary
            );
            documents.push((rule, doc));
        }
        if next != state {
            commit.states.push((&rule.name, next.to_row()?));
        }
    }
    for (rule, doc) in &documents {
        commit.notifications.push(NewNotification {
            receivers: &rule.receivers,
            dedup_key: &doc.dedup_key,
            alert_id: &doc.alert_id,
            rule: &doc.rule,
            kind: doc.kind.as_str(),
            payload: serde_json::to_string(doc)?,
        });
    }
    let configured: Vec<&str> = alerts.rules.iter().map(|r| r.name.as_str()).collect();
    let retired = q.retire_unconfigured(&configured, now)?;
    if retired > 0 {
        tracing::info!(
            alerts = retired,
            "Alerts of rules no longer in the config were retired (no notification)."
        );
    }
    q.write_evaluation(&commit, now)?;
    tx.commit()?;
    let receivers: BTreeSet<String> = documents
        .iter()
        .flat_map(|(r, _)| r.receivers.iter().cloned())
        .collect();
    Ok(receivers.into_iter().collect())
}

fn alert_id(rule: &str, fired_at: i64) -> String {
    format!("{rule}.{fired_at}")
}

/// A rule's persisted state ([`GroupState::default`] before its first evaluation).
fn rule_state(q: AlertTables<'_>, rule: &str) -> crate::store::Result<GroupState> {
    Ok(q.rule_state(rule)?
        .map(|row| GroupState::from_row(&row))
        .unwrap_or_default())
}

/// An outbox row due for `receiver` and its notification.
struct OutboxHead {
    id: i64,
    attempts: i64,
    next_attempt_at: i64,
    notification: Notification,
}

/// The oldest unsent notification of `receiver`; a payload that does not parse is an error.
fn outbox_head(db: &AlertDb, receiver: &str) -> anyhow::Result<Option<OutboxHead>> {
    let Some(row) = db.head(receiver)? else {
        return Ok(None);
    };
    let notification = serde_json::from_str(&row.payload)
        .map_err(|e| anyhow::anyhow!("outbox row {} does not parse: {e}", row.id))?;
    Ok(Some(OutboxHead {
        id: row.id,
        attempts: row.attempts,
        next_attempt_at: row.next_attempt_at,
        notification,
    }))
}

/// The notification document for a rule's state.
#[allow(clippy::too_many_arguments)]
fn document(
    alerts: &AlertConfig,
    rule: &Rule,
    state: &GroupState,
    kind: Kind,
    dedup_key: String,
    drifts: Vec<Drift>,
    action: Option<ActionNote>,
    now: i64,
) -> Notification {
    let fired_at = state.fired_at.unwrap_or(now);
    Notification {
        version: VERSION,
        dedup_key,
        alert_id: alert_id(&rule.name, fired_at),
        status: if kind == Kind::Resolved {
            "resolved"
        } else {
            "firing"
        }
        .to_owned(),
        kind,
        rule: rule.name.clone(),
        severity: rule.severity,
        instance: alerts.instance.clone(),
        summary: summarize(&drifts),
        fired_at,
        resolved_at: (kind == Kind::Resolved).then_some(state.resolved_at.unwrap_or(now)),
        created_at: now,
        dashboard_url: alerts.dashboard_url.clone(),
        action,
        drifts,
        redistill: None,
    }
}

/// The delivery worker of one receiver: sends its outbox rows in order, retrying failures with
/// exponential backoff; for Alertmanager, also re-posts firing alerts so they stay active.
async fn deliver(
    sender: Sender,
    alerts: Arc<AlertConfig>,
    db: Db,
    wake: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
) {
    let name = sender.name().to_owned();
    let refresh_every = sender.alert_lifetime / 4;
    let mut last_refresh = now_ms();
    loop {
        if *stopped.borrow() {
            return;
        }
        let n = name.clone();
        let head = match with_db(&db, move |db| outbox_head(db, &n)).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(receiver = %name, error = %e, "Cannot read the outbox.");
                None
            }
        };
        let now = now_ms();
        let wait = match head {
            Some(p) if p.next_attempt_at <= now => {
                // Say what sensei did as it stands now (the re-distillation loop may have
                // started or skipped the requested job since the notification was made).
                let mut doc = p.notification.clone();
                if doc.action.is_some() {
                    let alert = doc.alert_id.clone();
                    if let Ok(Some(now)) =
                        with_db(&db, move |db| db.tables().action_of(&alert)).await
                    {
                        doc.action = Some(now);
                    }
                }
                // Not raced against shutdown: a delivery that started completes (within its
                // timeout) and is recorded, so a stop never turns into a duplicate.
                let result = sender.send(&doc).await;
                let done = now_ms();
                let (id, attempts) = (p.id, p.attempts);
                match result {
                    Ok(()) => {
                        tracing::info!(receiver = %name, dedup_key = %p.notification.dedup_key, attempts = attempts + 1, "Notification delivered.");
                        if let Err(e) = with_db(&db, move |db| db.mark_sent(id, done)).await {
                            tracing::error!(receiver = %name, error = %e, "Delivered, but cannot record it; it may be sent again with the same dedup key.");
                        }
                    }
                    Err(error) => {
                        let delay = backoff(&alerts, attempts);
                        let next = done + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                        tracing::warn!(
                            receiver = %name,
                            dedup_key = %p.notification.dedup_key,
                            attempts = attempts + 1,
                            retry_in_seconds = delay.as_secs_f64(),
                            error = %error,
                            "Notification not delivered; it stays in the outbox and is retried."
                        );
                        let message = error.to_string();
                        if let Err(e) =
                            with_db(&db, move |db| db.mark_failed(id, done, &message, next)).await
                        {
                            tracing::error!(receiver = %name, error = %e, "Cannot record the failed attempt.");
                        }
                    }
                }
                continue;
            }
            Some(p) => Duration::from_millis(u64::try_from(p.next_attempt_at - now).unwrap_or(0)),
            None if sender.is_alertmanager() => {
                if now - last_refresh >= i64::try_from(refresh_every.as_millis()).unwrap_or(0) {
                    refresh_alertmanager(&sender, &alerts, &db).await;
                    last_refresh = now_ms();
                }
                refresh_every
            }
            None => Duration::from_secs(60),
        };
        tokio::select! {
            _ = stopped.changed() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Exponential backoff: `retry_initial × 2^attempts`, at most `retry_max`.
pub fn backoff(alerts: &AlertConfig, attempts: i64) -> Duration {
    let factor = 2u32.saturating_pow(u32::try_from(attempts.clamp(0, 30)).unwrap_or(30));
    alerts
        .retry_initial
        .checked_mul(factor)
        .unwrap_or(alerts.retry_max)
        .min(alerts.retry_max)
}

/// Posts the firing alerts routed to this Alertmanager again, so that they stay active there
/// while the drift lasts (Alertmanager resolves an alert that is not re-posted).
async fn refresh_alertmanager(sender: &Sender, alerts: &Arc<AlertConfig>, db: &Db) {
    let a = alerts.clone();
    let name = sender.name().to_owned();
    let docs = with_db(db, move |db| {
        let q = db.tables();
        let mut docs = Vec::new();
        for rule_name in q.firing()? {
            let Some(rule) = a
                .rules
                .iter()
                .find(|r| r.name == rule_name && r.receivers.contains(&name))
            else {
                continue;
            };
            let state = rule_state(q, &rule.name)?;
            let fired_at = state.fired_at.unwrap_or(0);
            let action = q.action_of(&alert_id(&rule.name, fired_at))?;
            let key = format!("{}.{fired_at}.{}", rule.name, state.sent);
            let members = state.members.clone();
            docs.push(document(
                &a,
                rule,
                &state,
                Kind::Repeat,
                key,
                members,
                action,
                now_ms(),
            ));
        }
        for payload in q.open_redistill_failures(&name)? {
            match serde_json::from_str(&payload) {
                Ok(doc) => docs.push(doc),
                Err(e) => tracing::debug!(receiver = %name, error = %e, "An outbox payload does not parse."),
            }
        }
        Ok::<_, anyhow::Error>(docs)
    })
    .await;
    match docs {
        Ok(docs) => {
            for doc in docs {
                if let Err(e) = sender.send(&doc).await {
                    tracing::debug!(receiver = %sender.name(), error = %e, "Alertmanager refresh failed.");
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "Alertmanager refresh: cannot read the state."),
    }
}

/// Sends a test notification to one receiver now (not through the outbox), for
/// `sensei alert test --receiver NAME`.
pub async fn send_test(alerts: &AlertConfig, receiver: &str) -> anyhow::Result<Notification> {
    let Some(r) = alerts.receivers.get(receiver) else {
        let known: Vec<&str> = alerts.receivers.keys().map(String::as_str).collect();
        anyhow::bail!(
            "no receiver \"{receiver}\" in the config (receivers: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
    };
    let sender = Sender::new(r, alertmanager_lifetime(alerts))?;
    let now = now_ms();
    let drift = Drift {
        since: now - 15 * 60_000,
        event: DriftEvent {
            id: 0,
            signal: "disagreement".into(),
            segment: "*".into(),
            detector: "bernoulli_cusum".into(),
            detected_at: now - 5 * 60_000,
            detected_at_record: 0,
            estimated_change_record: None,
            estimated_change_at: None,
            statistic: 9.3,
            threshold: 8.0,
            baseline_value: Some(0.034),
            current_value: Some(0.224),
            current_low: Some(0.149),
            current_high: Some(0.315),
            p_value: None,
            effect_size: None,
            baseline_version: None,
            resolved_at: None,
            alarms: 1,
            last_alarm_record: None,
        },
    };
    let doc = Notification {
        version: VERSION,
        dedup_key: format!("test.{now}"),
        alert_id: format!("test.{now}"),
        status: "firing".into(),
        kind: Kind::Test,
        rule: "test".into(),
        severity: Severity::Info,
        instance: alerts.instance.clone(),
        summary: format!("test notification to {receiver}"),
        fired_at: now,
        resolved_at: None,
        created_at: now,
        dashboard_url: alerts.dashboard_url.clone(),
        action: None,
        drifts: vec![drift],
        redistill: None,
    };
    sender
        .send(&doc)
        .await
        .map_err(|e| anyhow::anyhow!("{} ({}): {e}", receiver, r.kind.type_name()))?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rule::Status;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let alerts = AlertConfig {
            retry_initial: Duration::from_secs(10),
            retry_max: Duration::from_secs(300),
            ..AlertConfig::default()
        };
        let delays: Vec<u64> = (0..7).map(|a| backoff(&alerts, a).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(&alerts, 1000).as_secs(), 300);
    }

    fn alerts_with_rule() -> AlertConfig {
        let text = "[receivers.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n\
                    [[rules]]\nname = \"lines\"\nsegment = \"line=*\"\nreceivers = [\"hook\"]\naction = \"redistill\"\n";
        #[derive(serde::Deserialize)]
        struct Doc {
            receivers: BTreeMap<String, crate::config::alerts::RawReceiver>,
            rules: Vec<crate::config::alerts::RawRule>,
        }
        let doc: Doc = toml::from_str(text).expect("toml");
        let mut problems = Vec::new();
        let alerts = crate::config::alerts::validate(
            crate::config::alerts::RawAlerts::default(),
            doc.receivers,
            doc.rules,
            Path::new("/"),
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        alerts
    }

    fn insert_event(conn: &rusqlite::Connection, segment: &str, at: i64) {
        conn.execute(
            "INSERT INTO drift_events (signal, segment, detector, detected_at, detected_at_record,
                 statistic, threshold) VALUES ('kl', ?1, 'cusum', ?2, 1, 5.0, 4.0)",
            rusqlite::params![segment, at],
        )
        .expect("insert");
    }

    /// A database with sensei's schema in a temporary directory (kept while the first value
    /// lives), its path, and the alert evaluator's connection to it.
    fn migrated_db() -> (tempfile::TempDir, std::path::PathBuf, AlertDb) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sensei.db");
        drop(crate::store::Store::open(&path).expect("store"));
        let db = AlertDb::open(&path).expect("alert db");
        (dir, path, db)
    }

    /// A second connection for the tests' own rows and counts (drift events the pipeline would
    /// have written).
    fn fixture(path: &Path) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(path).expect("fixture connection");
        conn.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        conn
    }

    #[test]
    fn evaluations_persist_state_outbox_and_actions_once() {
        let (_dir, path, mut db) = migrated_db();
        let sql = fixture(&path);
        let alerts = alerts_with_rule();
        // History before the first evaluation: a closed drift is not news.
        insert_event(&sql, "line=A", 1_000);
        sql.execute("UPDATE drift_events SET resolved_at = 2000", [])
            .unwrap();
        assert!(evaluate(&mut db, &alerts, 10_000).unwrap().is_empty());

        for segment in ["line=A", "line=B", "*"] {
            insert_event(&sql, segment, 11_000);
        }
        assert_eq!(evaluate(&mut db, &alerts, 12_000).unwrap(), ["hook"]);
        // A fresh connection (as after a restart) sees the same: nothing new to send.
        let mut db = AlertDb::open(&path).expect("reopen");
        assert!(evaluate(&mut db, &alerts, 13_000).unwrap().is_empty());
        let count =
            |_: &AlertDb, query: &str| -> i64 { sql.query_row(query, [], |r| r.get(0)).unwrap() };
        assert_eq!(count(&db, "SELECT COUNT(*) FROM alert_outbox"), 1);
        assert_eq!(
            count(
                &db,
                "SELECT COUNT(*) FROM alert_actions WHERE action = 'redistill'"
            ),
            1
        );
        let head = outbox_head(&db, "hook").unwrap().expect("pending");
        assert_eq!(
            head.notification.drifts.len(),
            2,
            "the aggregate is not a line"
        );
        assert_eq!(head.notification.action.as_ref().map(|a| a.id), Some(1));
        assert_eq!(head.notification.dedup_key, "lines.12000.1");

        let summary = outbox_summary(&path).unwrap();
        assert_eq!(
            (summary.receivers[0].pending, summary.receivers[0].sent),
            (1, 0)
        );
        db.mark_failed(head.id, 14_000, "connection refused", 15_000)
            .unwrap();
        let summary = outbox_summary(&path).unwrap();
        assert_eq!(summary.receivers[0].failing, 1);
        assert!(summary.text(20_000).contains("UNDELIVERED"));
        db.mark_sent(head.id, 16_000).unwrap();
        assert!(db.head("hook").unwrap().is_none());

        // The rule is removed from the config: its alert no longer counts as firing.
        let none = AlertConfig {
            rules: Vec::new(),
            ..alerts.clone()
        };
        evaluate(&mut db, &none, 17_000).unwrap();
        assert_eq!(
            count(
                &db,
                "SELECT COUNT(*) FROM alert_state WHERE status = 'firing'"
            ),
            0
        );
    }

    #[test]
    fn an_event_stamped_after_the_evaluation_clock_neither_ends_the_episode_nor_goes_unheard() {
        let (_dir, path, mut db) = migrated_db();
        let sql = fixture(&path);
        let alerts = alerts_with_rule();
        evaluate(&mut db, &alerts, 500).unwrap();
        insert_event(&sql, "line=A", 1_000);
        assert_eq!(evaluate(&mut db, &alerts, 2_000).unwrap(), ["hook"]);
        // One file's commit closes the drift and opens it again, its events stamped at 3500;
        // the evaluation read its clock (3400) before that commit and its snapshot after it.
        sql.execute("UPDATE drift_events SET resolved_at = 3500", [])
            .unwrap();
        insert_event(&sql, "line=A", 3_500);
        assert!(evaluate(&mut db, &alerts, 3_400).unwrap().is_empty());
        let status = |_: &AlertDb| -> String {
            sql.query_row(
                "SELECT status FROM alert_state WHERE rule = 'lines'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(status(&db), "firing", "the drift goes on");
        // It closes before the next evaluation, which resolves the episode: the drift was
        // part of it all along.
        sql.execute(
            "UPDATE drift_events SET resolved_at = 3600 WHERE resolved_at IS NULL",
            [],
        )
        .unwrap();
        assert_eq!(evaluate(&mut db, &alerts, 3_800).unwrap(), ["hook"]);
        assert_eq!(status(&db), "resolved");
        let mut stmt = sql
            .prepare("SELECT kind, created_at FROM alert_outbox ORDER BY id")
            .unwrap();
        let sent: Vec<(String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            sent,
            [
                ("firing".to_string(), 2_000),
                ("resolved".to_string(), 3_800)
            ]
        );
    }

    #[test]
    fn state_status_survives_its_text() {
        for s in [
            Status::Inactive,
            Status::Pending,
            Status::Firing,
            Status::Resolved,
        ] {
            assert_eq!(Status::parse(s.as_str()), s);
        }
    }
}
