//! The alert state machine: which drift events a rule sees, and when its group goes
//! inactive → pending → firing → resolved and what it sends on the way.
//!
//! Everything here is pure: time (unix ms) and the drift events are arguments, the state is a
//! plain value the caller persists. One rule is one *group*: every drift the rule matches (any
//! number of signals × segments) is a *member* of that rule's single alert, so a drift across 50
//! segments is one notification that lists them, not 50.
//!
//! A member is *active* while it has an open drift event (`resolved_at IS NULL`), and also for
//! one evaluation when an event opened and resolved between two evaluations (it is *fresh*: its
//! id is above the cursor), so that a short drift still reaches someone. `for` is measured from
//! the member's `detected_at`, not from when sensei noticed it, so a late or restarted evaluator
//! does not delay an alert.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::alerts::Rule;
use crate::store::{DriftEvent, RuleStateRow};
use crate::time::rfc3339_ms;

/// One member of an alert: a (signal, segment, detector) with its latest event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// Start of the open episode: the earliest `detected_at` among its active events.
    #[serde(with = "rfc3339_ms")]
    pub since: i64,
    #[serde(flatten)]
    pub event: DriftEvent,
}

pub type MemberKey = (String, String, String);

impl Drift {
    pub fn key(&self) -> MemberKey {
        (
            self.event.signal.clone(),
            self.event.segment.clone(),
            self.event.detector.clone(),
        )
    }
}

/// Whether a rule looks at this event.
pub fn matches(rule: &Rule, event: &DriftEvent) -> bool {
    rule.signal.as_ref().is_none_or(|s| *s == event.signal)
        && rule.detector.as_ref().is_none_or(|d| *d == event.detector)
        && rule
            .segment
            .as_ref()
            .is_none_or(|p| p.matches(&event.segment))
}

/// The active members of `rule` among `events`. `cursor` is the highest event id seen by the
/// previous evaluation (`None` on the very first one, when drifts that are already over are
/// history, not news).
pub fn members(rule: &Rule, events: &[DriftEvent], cursor: Option<i64>) -> Vec<Drift> {
    let mut by_key: BTreeMap<MemberKey, Drift> = BTreeMap::new();
    let mut open: BTreeSet<MemberKey> = BTreeSet::new();
    for e in events.iter().filter(|e| matches(rule, e)) {
        let fresh = cursor.is_some_and(|c| e.id > c);
        if e.resolved_at.is_some() && !fresh {
            continue;
        }
        let key = (e.signal.clone(), e.segment.clone(), e.detector.clone());
        if e.resolved_at.is_none() {
            open.insert(key.clone());
        }
        match by_key.get_mut(&key) {
            None => {
                by_key.insert(
                    key,
                    Drift {
                        since: e.detected_at,
                        event: e.clone(),
                    },
                );
            }
            Some(d) => {
                d.since = d.since.min(e.detected_at);
                if e.id > d.event.id {
                    d.event = e.clone();
                }
            }
        }
    }
    // A member with any open event is open, whatever its latest event says.
    for (key, d) in by_key.iter_mut() {
        if open.contains(key) {
            d.event.resolved_at = None;
        }
    }
    by_key.into_values().collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Inactive,
    Pending,
    Firing,
    Resolved,
}

impl GroupState {
    /// The state as `alert_state` holds it.
    pub fn from_row(row: &RuleStateRow) -> GroupState {
        GroupState {
            status: Status::parse(&row.status),
            pending_since: row.pending_since,
            fired_at: row.fired_at,
            resolved_at: row.resolved_at,
            last_sent_at: row.last_sent_at,
            sent: row.sent,
            members: serde_json::from_str(&row.members).unwrap_or_default(),
        }
    }

    /// The row for `alert_state`.
    pub fn to_row(&self) -> serde_json::Result<RuleStateRow> {
        Ok(RuleStateRow {
            status: self.status.as_str().to_owned(),
            pending_since: self.pending_since,
            fired_at: self.fired_at,
            resolved_at: self.resolved_at,
            last_sent_at: self.last_sent_at,
            sent: self.sent,
            members: serde_json::to_string(&self.members)?,
        })
    }
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Inactive => "inactive",
            Status::Pending => "pending",
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Status {
        match s {
            "pending" => Status::Pending,
            "firing" => Status::Firing,
            "resolved" => Status::Resolved,
            _ => Status::Inactive,
        }
    }
}

/// The persisted state of one rule's alert.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupState {
    pub status: Status,
    /// Pending: when the earliest member started.
    pub pending_since: Option<i64>,
    /// Firing (and resolved, for the episode that ended): when the alert fired. Identifies the
    /// episode in dedup keys.
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub last_sent_at: Option<i64>,
    /// Notifications made in this episode (numbers the dedup keys).
    pub sent: i64,
    /// The members as last announced.
    pub members: Vec<Drift>,
}

/// What one notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The alert started firing.
    Firing,
    /// Still firing, with members that were not announced before.
    Update,
    /// Still firing, a reminder after the repeat interval.
    Repeat,
    /// Every member is back in control.
    Resolved,
    /// `sensei alert test`.
    Test,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Firing => "firing",
            Kind::Update => "update",
            Kind::Repeat => "repeat",
            Kind::Resolved => "resolved",
            Kind::Test => "test",
        }
    }
}

/// A notification the state machine decided to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub kind: Kind,
    /// When the episode fired.
    pub fired_at: i64,
    /// Its number within the episode (1 for the firing notification).
    pub seq: i64,
    pub members: Vec<Drift>,
}

impl Notice {
    /// The key receivers deduplicate by: the same for every retry of this notification, and
    /// different for every other notification.
    pub fn dedup_key(&self, rule: &str) -> String {
        format!("{rule}.{}.{}", self.fired_at, self.seq)
    }
}

/// The timing parts of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub for_ms: i64,
    pub repeat_ms: Option<i64>,
    pub group_interval_ms: i64,
    pub send_resolved: bool,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Policy {
    pub fn new(rule: &Rule, group_interval: Duration) -> Policy {
        Policy {
            for_ms: ms(rule.for_),
            repeat_ms: rule.repeat_interval.map(ms),
            group_interval_ms: ms(group_interval),
            send_resolved: rule.send_resolved,
        }
    }
}

/// One evaluation: the new state, and the notification to make, if any.
pub fn evaluate(
    policy: &Policy,
    state: &GroupState,
    active: &[Drift],
    now: i64,
) -> (GroupState, Option<Notice>) {
    let mut next = state.clone();
    let eligible: Vec<Drift> = active
        .iter()
        .filter(|d| d.event.resolved_at.unwrap_or(now).saturating_sub(d.since) >= policy.for_ms)
        .cloned()
        .collect();

    if !eligible.is_empty() {
        if state.status != Status::Firing {
            next = GroupState {
                status: Status::Firing,
                pending_since: state.pending_since,
                fired_at: Some(now),
                resolved_at: None,
                last_sent_at: Some(now),
                sent: 1,
                members: eligible.clone(),
            };
            let notice = Notice {
                kind: Kind::Firing,
                fired_at: now,
                seq: 1,
                members: eligible,
            };
            return (next, Some(notice));
        }
        let announced: BTreeSet<MemberKey> = state.members.iter().map(Drift::key).collect();
        let grew = eligible.iter().any(|d| !announced.contains(&d.key()));
        let since_sent = now.saturating_sub(state.last_sent_at.unwrap_or(i64::MIN / 2));
        let kind = if grew && since_sent >= policy.group_interval_ms {
            Some(Kind::Update)
        } else if policy.repeat_ms.is_some_and(|r| since_sent >= r) {
            Some(Kind::Repeat)
        } else {
            None
        };
        let Some(kind) = kind else {
            return (next, None);
        };
        next.sent = state.sent + 1;
        next.last_sent_at = Some(now);
        next.members = eligible.clone();
        let notice = Notice {
            kind,
            fired_at: state.fired_at.unwrap_or(now),
            seq: next.sent,
            members: eligible,
        };
        return (next, Some(notice));
    }

    if state.status == Status::Firing {
        // Every member that fired is back in control (members still only pending do not keep
        // the alert firing: they have not met `for`).
        let members: Vec<Drift> = state
            .members
            .iter()
            .map(|d| {
                let mut d = d.clone();
                d.event.resolved_at.get_or_insert(now);
                d
            })
            .collect();
        next.status = Status::Resolved;
        next.resolved_at = Some(now);
        next.pending_since = None;
        let notice = policy.send_resolved.then(|| {
            next.sent = state.sent + 1;
            next.last_sent_at = Some(now);
            Notice {
                kind: Kind::Resolved,
                fired_at: state.fired_at.unwrap_or(now),
                seq: next.sent,
                members: members.clone(),
            }
        });
        next.members = members;
        return (next, notice);
    }

    if let Some(since) = active.iter().map(|d| d.since).min() {
        next.status = Status::Pending;
        next.pending_since = Some(since);
    } else if state.status == Status::Pending {
        // Went away before `for` was met: never fired, nothing to say.
        next.status = Status::Inactive;
        next.pending_since = None;
    }
    (next, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::alerts::{SegmentPattern, Severity};

    const MIN: i64 = 60_000;

    fn rule() -> Rule {
        Rule {
            name: "drift".into(),
            signal: Some("disagreement".into()),
            detector: None,
            segment: Some(SegmentPattern::parse("line=*")),
            severity: Severity::Warning,
            for_: Duration::from_secs(5 * 60),
            repeat_interval: Some(Duration::from_secs(60 * 60)),
            send_resolved: true,
            receivers: vec!["mail".into()],
            action: None,
        }
    }

    fn event(id: i64, segment: &str, detected_at: i64, resolved_at: Option<i64>) -> DriftEvent {
        DriftEvent {
            id,
            signal: "disagreement".into(),
            segment: segment.into(),
            detector: "bernoulli_cusum".into(),
            detected_at,
            detected_at_record: 100 * id,
            estimated_change_record: Some(90 * id),
            estimated_change_at: None,
            statistic: 9.0,
            threshold: 8.0,
            baseline_value: Some(0.03),
            current_value: Some(0.2),
            current_low: Some(0.15),
            current_high: Some(0.3),
            p_value: None,
            effect_size: None,
            baseline_version: Some(1),
            resolved_at,
            alarms: 1,
            last_alarm_record: None,
        }
    }

    fn policy() -> Policy {
        Policy::new(&rule(), Duration::from_secs(5 * 60))
    }

    /// Runs one evaluation over `events` as the daemon does.
    fn step(
        state: &GroupState,
        events: &[DriftEvent],
        cursor: Option<i64>,
        now: i64,
    ) -> (GroupState, Option<Notice>) {
        evaluate(&policy(), state, &members(&rule(), events, cursor), now)
    }

    #[test]
    fn pending_until_for_then_firing_once() {
        let events = [event(1, "line=A", 0, None)];
        let (s, n) = step(&GroupState::default(), &events, Some(0), MIN);
        assert_eq!(
            (s.status, s.pending_since, n),
            (Status::Pending, Some(0), None)
        );
        let (s, n) = step(&s, &events, Some(1), 4 * MIN);
        assert_eq!((s.status, n), (Status::Pending, None));
        let (s, n) = step(&s, &events, Some(1), 5 * MIN);
        let n = n.expect("fires after `for`");
        assert_eq!(
            (s.status, n.kind, n.seq, n.fired_at),
            (Status::Firing, Kind::Firing, 1, 5 * MIN)
        );
        assert_eq!(n.dedup_key("drift"), format!("drift.{}.1", 5 * MIN));
        // Still open, before the repeat interval: silence.
        let (s2, n) = step(&s, &events, Some(1), 30 * MIN);
        assert_eq!((s2.status, n), (Status::Firing, None));
        assert_eq!(s2, s);
    }

    #[test]
    fn pending_that_goes_away_never_fires() {
        let (s, _) = step(
            &GroupState::default(),
            &[event(1, "line=A", 0, None)],
            Some(0),
            MIN,
        );
        assert_eq!(s.status, Status::Pending);
        let (s, n) = step(
            &s,
            &[event(1, "line=A", 0, Some(2 * MIN))],
            Some(1),
            6 * MIN,
        );
        assert_eq!((s.status, n), (Status::Inactive, None));
    }

    #[test]
    fn repeat_interval_reminds_while_firing() {
        let events = [event(1, "line=A", 0, None)];
        let (s, _) = step(&GroupState::default(), &events, Some(0), 10 * MIN);
        let (s, n) = step(&s, &events, Some(1), 69 * MIN);
        assert!(n.is_none());
        let (s, n) = step(&s, &events, Some(1), 70 * MIN);
        let n = n.expect("repeat");
        assert_eq!((n.kind, n.seq, n.fired_at), (Kind::Repeat, 2, 10 * MIN));
        assert_eq!(s.last_sent_at, Some(70 * MIN));
        let mut never = policy();
        never.repeat_ms = None;
        let (s, _) = evaluate(
            &never,
            &GroupState::default(),
            &members(&rule(), &events, Some(0)),
            10 * MIN,
        );
        let (_, n) = evaluate(&never, &s, &members(&rule(), &events, Some(1)), 1000 * MIN);
        assert!(n.is_none());
    }

    #[test]
    fn resolves_with_every_member_listed() {
        let open = [event(1, "line=A", 0, None), event(2, "line=B", 0, None)];
        let (s, n) = step(&GroupState::default(), &open, Some(0), 10 * MIN);
        assert_eq!(n.expect("firing").members.len(), 2);
        let closed = [
            event(1, "line=A", 0, Some(11 * MIN)),
            event(2, "line=B", 0, Some(12 * MIN)),
        ];
        let (s, n) = step(&s, &closed, Some(2), 13 * MIN);
        let n = n.expect("resolved");
        assert_eq!(
            (s.status, n.kind, n.seq),
            (Status::Resolved, Kind::Resolved, 2)
        );
        assert_eq!(s.resolved_at, Some(13 * MIN));
        assert!(n.members.iter().all(|d| d.event.resolved_at.is_some()));
        // Nothing more until a new drift; then a new episode with its own dedup keys.
        let (s, n) = step(&s, &closed, Some(2), 14 * MIN);
        assert_eq!((s.status, n), (Status::Resolved, None));
        let again = [event(3, "line=A", 20 * MIN, None)];
        let (s, n) = step(&s, &again, Some(2), 25 * MIN);
        let n = n.expect("fires again");
        assert_eq!(
            (s.status, n.kind, n.seq, n.fired_at),
            (Status::Firing, Kind::Firing, 1, 25 * MIN)
        );
    }

    #[test]
    fn send_resolved_false_resolves_silently() {
        let mut p = policy();
        p.send_resolved = false;
        let r = rule();
        let (s, _) = evaluate(
            &p,
            &GroupState::default(),
            &members(&r, &[event(1, "line=A", 0, None)], Some(0)),
            10 * MIN,
        );
        let (s, n) = evaluate(
            &p,
            &s,
            &members(&r, &[event(1, "line=A", 0, Some(MIN))], Some(1)),
            11 * MIN,
        );
        assert_eq!((s.status, n), (Status::Resolved, None));
    }

    #[test]
    fn fifty_segments_are_one_notification() {
        let events: Vec<DriftEvent> = (1..=50)
            .map(|i| event(i, &format!("line={i}"), 0, None))
            .collect();
        let (s, n) = step(&GroupState::default(), &events, Some(0), 10 * MIN);
        let n = n.expect("one notification");
        assert_eq!(n.members.len(), 50);
        assert_eq!(s.members.len(), 50);
    }

    #[test]
    fn new_segments_update_no_more_often_than_group_interval() {
        let a = event(1, "line=A", 0, None);
        let (s, _) = step(
            &GroupState::default(),
            std::slice::from_ref(&a),
            Some(0),
            10 * MIN,
        );
        let b = event(2, "line=B", 0, None);
        // line=B joins two minutes later: held back by the group interval…
        let (s, n) = step(&s, &[a.clone(), b.clone()], Some(2), 12 * MIN);
        assert!(n.is_none());
        // …and announced once it has passed, listing both.
        let (s, n) = step(&s, &[a.clone(), b.clone()], Some(2), 15 * MIN);
        let n = n.expect("update");
        assert_eq!((n.kind, n.seq, n.members.len()), (Kind::Update, 2, 2));
        let (_, n) = step(&s, &[a, b], Some(2), 21 * MIN);
        assert!(n.is_none());
    }

    #[test]
    fn rule_filters_signal_and_segment() {
        let mut other_signal = event(1, "line=A", 0, None);
        other_signal.signal = "kl".into();
        let aggregate = event(2, "*", 0, None);
        let ms = members(
            &rule(),
            &[other_signal, aggregate, event(3, "line=C", 0, None)],
            Some(0),
        );
        assert_eq!(ms.len(), 1);
        assert_eq!(ms[0].event.segment, "line=C");
    }

    #[test]
    fn a_drift_over_between_evaluations_still_fires_once() {
        // Opened and closed between two evaluations, and lasted longer than `for`.
        let e = event(7, "line=A", 0, Some(6 * MIN));
        let (s, n) = step(
            &GroupState::default(),
            std::slice::from_ref(&e),
            Some(6),
            7 * MIN,
        );
        assert_eq!(n.expect("fires").kind, Kind::Firing);
        let (s, n) = step(&s, std::slice::from_ref(&e), Some(7), 8 * MIN);
        assert_eq!(
            (s.status, n.expect("resolves").kind),
            (Status::Resolved, Kind::Resolved)
        );
        // Too short for `for`: nothing.
        let short = event(8, "line=A", 0, Some(MIN));
        let (_, n) = step(&GroupState::default(), &[short], Some(7), 9 * MIN);
        assert!(n.is_none());
        // History on the very first evaluation is not news.
        let (s, n) = step(&GroupState::default(), &[e], None, 9 * MIN);
        assert_eq!((s.status, n), (Status::Inactive, None));
    }

    #[test]
    fn member_since_is_the_earliest_open_event() {
        let events = [
            event(1, "line=A", 2 * MIN, None),
            event(4, "line=A", 9 * MIN, None),
        ];
        let ms = members(&rule(), &events, Some(4));
        assert_eq!(ms.len(), 1);
        assert_eq!((ms[0].since, ms[0].event.id), (2 * MIN, 4));
    }
}
