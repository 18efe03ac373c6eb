//! Crash consistency: the daemon is killed with SIGKILL at seeded random points while it works,
//! and restarted each time.
//!
//! - Through a backlog: every record must be counted exactly once, every file must end up done
//!   or quarantined, and the database must be intact.
//! - While drifts raise alerts to a webhook and alerts ask for re-distillation jobs: every
//!   notification must be delivered, at least once and otherwise only repeated with the same
//!   dedup key by a kill between the delivery and its record; no episode fires twice; no drift
//!   goes unannounced; every job a kill interrupted must be ended by the recovery, saying so,
//!   with no process of its command left.
//!
//! The suite runs short versions (`SENSEI_CRASH_KILLS`, default 6 kills);
//! `scripts/crash-harness.sh` runs the long ones (60 kills each).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::alerting::{Request, Webhook, alerts_section, wait_evaluations};
use crate::common::{Site, jsonl, repo, wait_until};

/// SplitMix64: the kill schedule is reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn sigkill_at_random_points_loses_nothing_and_counts_nothing_twice() {
    let kills = env_or("SENSEI_CRASH_KILLS", 6);
    let files = env_or("SENSEI_CRASH_FILES", 60) as usize;
    let per_file = env_or("SENSEI_CRASH_RECORDS", 200) as usize;
    let mut rng = Rng(env_or("SENSEI_CRASH_SEED", 20261127));
    let started = std::time::Instant::now();
    let site = Site::new();
    site.write_config("[inbox]\nquiet = \"200ms\"\nmax_file_size = \"16 MiB\"\n");
    std::fs::create_dir_all(site.inbox()).unwrap();
    // The backlog, with one bad file in every twenty.
    let mut bad = 0;
    for f in 0..files {
        if f % 20 == 7 {
            std::fs::write(
                site.inbox().join(format!("f{f:05}.jsonl")),
                b"{\"inputs\": {\"x\": [1, 2]}}\n",
            )
            .unwrap();
            bad += 1;
        } else {
            std::fs::write(
                site.inbox().join(format!("f{f:05}.jsonl")),
                jsonl(&format!("c{f}"), per_file),
            )
            .unwrap();
        }
    }
    let good = files - bad;
    let mut killed = 0;
    while killed < kills {
        let before = site.ledger_count("done") + site.ledger_count("quarantined");
        if before as usize >= files {
            break;
        }
        let daemon = site.start();
        // A seeded random point: after the next commit, plus 0–120 ms into the next file.
        wait_until(Duration::from_secs(60), "progress before the kill", || {
            site.ledger_count("done") + site.ledger_count("quarantined") > before
        });
        std::thread::sleep(Duration::from_millis(rng.next() % 120));
        daemon.kill();
        killed += 1;
    }
    let daemon = site.start();
    wait_until(Duration::from_secs(300), "every file finished", || {
        (site.ledger_count("done") + site.ledger_count("quarantined")) as usize == files
    });
    assert!(daemon.stop().success());
    assert!(killed >= kills.min(3), "only {killed} kills happened");
    let total = (good * per_file) as i64;
    assert_eq!(site.records(), total, "after {killed} kills");
    assert_eq!(
        site.query_i64("SELECT COUNT(DISTINCT record_id) FROM records"),
        total
    );
    assert_eq!(
        site.query_i64("SELECT SUM(records) FROM windows WHERE segment = '*'"),
        total
    );
    assert_eq!(site.ledger_count("done") as usize, good);
    assert_eq!(site.ledger_count("quarantined") as usize, bad);
    assert_eq!(std::fs::read_dir(site.inbox()).unwrap().count(), 0);
    assert_eq!(site.integrity_check(), "ok");
    eprintln!(
        "crash harness (records): {killed} kills, {files} files ({bad} bad), {total} records, \
         {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// --- Alerts and re-distillation jobs across kills. ---

fn demo(name: &str) -> PathBuf {
    repo().join("models/demo").join(name)
}

/// Polls `cond` until it holds (true) or `timeout` passes (false).
fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The field data of the alert harness, delivered in rounds: the demo clean stream, and the
/// demo offset-drift stream from where its drift starts (record 201).
struct Backlog {
    clean: Vec<serde_json::Value>,
    drifted: Vec<serde_json::Value>,
    per_file: usize,
    /// Files delivered so far, and how many of them are bad.
    files: usize,
    bad: usize,
}

impl Backlog {
    fn new(per_file: usize) -> Backlog {
        let read = |name: &str, skip: usize| -> Vec<serde_json::Value> {
            std::fs::read_to_string(demo(name))
                .unwrap()
                .lines()
                .skip(skip)
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        Backlog {
            clean: read("streams/clean.jsonl", 0),
            drifted: read("streams/offset_drift.jsonl", 200),
            per_file,
            files: 0,
            bad: 0,
        }
    }

    /// Eight files: four of the clean stream, then four of the drifted one (or clean again).
    /// Record ids are unique across rounds; one file in twenty is bad.
    fn deliver_round(&mut self, site: &Site, drift: bool) {
        for k in 0..8 {
            let f = self.files;
            self.files += 1;
            let name = format!("a{f:05}.jsonl");
            if f % 20 == 7 {
                site.deliver(&name, b"{\"inputs\": {\"x\": [1, 2]}}\n");
                self.bad += 1;
                continue;
            }
            let source = if drift && k >= 4 {
                &self.drifted
            } else {
                &self.clean
            };
            let mut text = String::new();
            for i in 0..self.per_file {
                let mut r = source[(f * self.per_file + i) % source.len()].clone();
                r["id"] = serde_json::Value::String(format!("a{f}-{i}"));
                text.push_str(&r.to_string());
                text.push('\n');
            }
            site.deliver(&name, text.as_bytes());
        }
    }

    fn finished(&self, site: &Site) -> bool {
        (site.ledger_count("done") + site.ledger_count("quarantined")) as usize >= self.files
    }
}

/// A `redistill_jobs` row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Job {
    id: i64,
    status: String,
    detail: String,
    owner_pid: Option<i64>,
    pid: Option<i64>,
    output: Option<String>,
}

fn jobs(site: &Site, filter: &str) -> Vec<Job> {
    let db = site.db();
    let mut stmt = db
        .prepare(&format!(
            "SELECT id, status, COALESCE(detail, ''), owner_pid, pid, output FROM redistill_jobs
             {filter} ORDER BY id"
        ))
        .unwrap();
    stmt.query_map([], |r| {
        Ok(Job {
            id: r.get(0)?,
            status: r.get(1)?,
            detail: r.get(2)?,
            owner_pid: r.get(3)?,
            pid: r.get(4)?,
            output: r.get(5)?,
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// A live (not zombie) process: its pid, process group and command line.
struct Process {
    pid: i64,
    pgrp: i64,
    cmdline: String,
}

fn live_processes() -> Vec<Process> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the parenthesised command name: state, ppid, pgrp.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let (Some(&state), Some(pgrp)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        if state == "Z" {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push(Process {
            pid,
            pgrp: pgrp.parse().unwrap_or(0),
            cmdline,
        });
    }
    out
}

/// A notification in the outbox, with its document.
struct Notification {
    dedup_key: String,
    alert_id: String,
    rule: String,
    kind: String,
    doc: serde_json::Value,
}

impl Notification {
    /// Its number within the episode (the last part of the dedup key).
    fn seq(&self) -> i64 {
        self.dedup_key
            .rsplit('.')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("dedup key {} has no number", self.dedup_key))
    }

    /// The (signal, segment, detector) of every drift it lists, with that drift's `event_id`
    /// and `since` (unix ms).
    fn drifts(&self) -> Vec<(Member, i64, i64)> {
        self.doc["drifts"]
            .as_array()
            .expect("drifts")
            .iter()
            .map(|d| {
                let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
                (
                    (s("signal"), s("segment"), s("detector")),
                    d["event_id"].as_i64().expect("event_id"),
                    ms(&d["since"]).expect("since"),
                )
            })
            .collect()
    }
}

/// (signal, segment, detector): one drift an alert lists.
type Member = (String, String, String);

/// RFC 3339 time of a document as unix ms.
fn ms(v: &serde_json::Value) -> Option<i64> {
    sensei::time::parse(v.as_str()?)
}

/// The document without `action`, which each delivery refreshes to say what sensei did by then.
fn without_action(doc: &serde_json::Value) -> serde_json::Value {
    let mut doc = doc.clone();
    if let Some(o) = doc.as_object_mut() {
        o.remove("action");
    }
    doc
}

/// The webhook's outbox rows, checking that every one was sent.
fn sent_notifications(site: &Site) -> Vec<Notification> {
    let db = site.db();
    let mut stmt = db
        .prepare(
            "SELECT dedup_key, alert_id, rule, kind, payload, status FROM alert_outbox
             WHERE receiver = 'hook' ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        let (key, status): (String, String) = (r.get(0)?, r.get(5)?);
        assert_eq!(status, "sent", "{key}");
        let payload: String = r.get(4)?;
        Ok(Notification {
            dedup_key: key,
            alert_id: r.get(1)?,
            rule: r.get(2)?,
            kind: r.get(3)?,
            doc: serde_json::from_str(&payload).expect("payload JSON"),
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// What arrived is what the outbox holds: every notification at least once, nothing else, and
/// a repeat only with the same key and document. Returns the number of repeats.
fn check_deliveries(outbox: &[Notification], received: &[Request]) -> usize {
    let by_key: BTreeMap<&str, &Notification> =
        outbox.iter().map(|n| (n.dedup_key.as_str(), n)).collect();
    let mut arrivals: BTreeMap<String, usize> = BTreeMap::new();
    for request in received {
        let doc: serde_json::Value = serde_json::from_str(&request.body).expect("JSON body");
        let key = doc["dedup_key"].as_str().expect("dedup_key").to_string();
        assert_eq!(request.headers.get("idempotency-key"), Some(&key));
        let stored = by_key
            .get(key.as_str())
            .unwrap_or_else(|| panic!("{key} arrived but is not in the outbox"));
        assert_eq!(without_action(&doc), without_action(&stored.doc), "{key}");
        *arrivals.entry(key).or_default() += 1;
    }
    for n in outbox {
        assert!(
            arrivals.contains_key(&n.dedup_key),
            "{} is marked sent but never arrived",
            n.dedup_key
        );
    }
    arrivals.values().map(|n| n - 1).sum()
}

/// One alert episode of a rule, from its notifications.
struct Episode<'a> {
    alert_id: &'a str,
    fired_at: i64,
    resolved_at: Option<i64>,
    notifications: Vec<&'a Notification>,
}

impl Episode<'_> {
    fn announced(&self, member: &Member) -> bool {
        self.notifications
            .iter()
            .any(|n| n.drifts().iter().any(|(m, _, _)| m == member))
    }
}

/// Each episode has one firing notification, notifications numbered 1..n without gaps and a
/// resolution last; the episodes of a rule follow each other without overlapping. Returns them
/// per rule, in order.
fn check_episodes(outbox: &[Notification]) -> BTreeMap<&str, Vec<Episode<'_>>> {
    let mut by_alert: BTreeMap<&str, Vec<&Notification>> = BTreeMap::new();
    for n in outbox {
        by_alert.entry(n.alert_id.as_str()).or_default().push(n);
    }
    let mut rules: BTreeMap<&str, Vec<Episode<'_>>> = BTreeMap::new();
    for (alert_id, notifications) in by_alert {
        let seqs: Vec<i64> = notifications.iter().map(|n| n.seq()).collect();
        let expected: Vec<i64> = (1..=notifications.len() as i64).collect();
        assert_eq!(seqs, expected, "{alert_id}: notification numbers");
        let firing = notifications.iter().filter(|n| n.kind == "firing").count();
        assert_eq!(firing, 1, "{alert_id} fired {firing} times");
        assert_eq!(notifications[0].kind, "firing", "{alert_id}");
        let resolved = notifications.iter().position(|n| n.kind == "resolved");
        if let Some(i) = resolved {
            assert_eq!(
                i,
                notifications.len() - 1,
                "{alert_id}: sent after resolving"
            );
        }
        let fired_at = ms(&notifications[0].doc["fired_at"]).expect("fired_at");
        let rule = notifications[0].rule.as_str();
        if rule == "redistill-failing" {
            // Jobs the kills interrupt end `failed`; a streak of them is announced once, named
            // after its first job (docs/redistill.md).
            assert!(alert_id.starts_with("redistill-failing.job-"), "{alert_id}");
        } else {
            assert_eq!(alert_id, format!("{rule}.{fired_at}"));
        }
        rules.entry(rule).or_default().push(Episode {
            alert_id,
            fired_at,
            resolved_at: resolved.and_then(|i| ms(&notifications[i].doc["resolved_at"])),
            notifications,
        });
    }
    for (rule, episodes) in rules.iter_mut() {
        episodes.sort_by_key(|e| e.fired_at);
        for pair in episodes.windows(2) {
            assert!(
                pair[0]
                    .resolved_at
                    .is_some_and(|end| end <= pair[1].fired_at),
                "rule {rule}: {} was still firing when {} fired",
                pair[0].alert_id,
                pair[1].alert_id
            );
        }
    }
    rules
}

/// No drift event went unannounced. Each event a rule matches is listed by the rule's
/// notifications — itself, or a later event of the same drift from the same evaluation (a
/// notification lists a drift's latest event, and its `since` the earliest) — or an episode of
/// the rule that announced the same drift overlapped the event: it fired before the event ended
/// and did not end before the event began. (A drift that ends and begins again between two
/// evaluations, or whose new event is detected while a file is processed and committed just
/// after an evaluation, continues the episode that announced it.)
fn check_every_drift_announced(
    site: &Site,
    outbox: &[Notification],
    episodes: &BTreeMap<&str, Vec<Episode<'_>>>,
    rule: &str,
    matches: impl Fn(&Member) -> bool,
) -> usize {
    let db = site.db();
    let mut stmt = db
        .prepare(
            "SELECT id, signal, segment, detector, detected_at, resolved_at FROM drift_events
             ORDER BY id",
        )
        .unwrap();
    let events: Vec<(i64, Member, i64, Option<i64>)> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                (r.get(1)?, r.get(2)?, r.get(3)?),
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .filter(|(_, m, _, _)| matches(m))
        .collect();
    for (id, member, detected_at, resolved_at) in &events {
        let listed = outbox.iter().filter(|n| n.rule == rule).any(|n| {
            n.drifts()
                .iter()
                .any(|(m, event, since)| m == member && event >= id && since <= detected_at)
        });
        let overlapped = episodes.get(rule).is_some_and(|episodes| {
            episodes.iter().any(|e| {
                resolved_at.is_none_or(|end| e.fired_at <= end)
                    && e.resolved_at.is_none_or(|end| end >= *detected_at)
                    && e.announced(member)
            })
        });
        if !(listed || overlapped) {
            let history: Vec<String> = events
                .iter()
                .filter(|(_, m, _, _)| m == member)
                .map(|(id, _, at, end)| format!("event {id}: detected {at}, resolved {end:?}"))
                .chain(outbox.iter().filter(|n| n.rule == rule).map(|n| {
                    format!(
                        "{} {} created {:?} resolved {:?}: {:?}",
                        n.dedup_key,
                        n.kind,
                        ms(&n.doc["created_at"]),
                        ms(&n.doc["resolved_at"]),
                        n.drifts()
                            .iter()
                            .filter(|(m, _, _)| m == member)
                            .map(|(_, event, since)| (*event, *since))
                            .collect::<Vec<_>>()
                    )
                }))
                .collect();
            panic!("rule {rule}: drift event {id} {member:?} was never announced:\n{history:#?}");
        }
    }
    events.len()
}

/// No job is left queued or running; exactly the jobs a kill interrupted were ended by the
/// recovery, saying so; no command of a job outlived it. Returns every job.
fn check_jobs(site: &Site, interrupted: &[Job]) -> Vec<Job> {
    let all = jobs(site, "");
    assert!(
        all.iter()
            .all(|j| j.status != "queued" && j.status != "running"),
        "{all:#?}"
    );
    let recovered: Vec<i64> = all
        .iter()
        .filter(|j| j.detail.contains("that supervised the job exited"))
        .map(|j| j.id)
        .collect();
    let expected: Vec<i64> = interrupted.iter().map(|j| j.id).collect();
    assert_eq!(
        recovered, expected,
        "jobs the recovery ended vs jobs running at a kill"
    );
    for job in all.iter().filter(|j| expected.contains(&j.id)) {
        assert_eq!(job.status, "failed", "{job:?}");
        let owner = job.owner_pid.expect("owner_pid");
        assert!(
            job.detail.starts_with(&format!(
                "sensei (pid {owner}) that supervised the job exited"
            )),
            "{job:?}"
        );
        // A command that was killed (or never started) wrote no candidate; only one that ended
        // on its own before the recovery may have.
        if !job.detail.contains("is gone, with no exit status recorded")
            && let Some(output) = &job.output
        {
            assert!(
                !Path::new(output).exists(),
                "job {}: its command wrote {output} after the recovery ({})",
                job.id,
                job.detail
            );
        }
    }
    // Nothing runs in a job's process group, nor with the site's paths in its command line.
    let root = site.root().display().to_string();
    let left: Vec<String> = live_processes()
        .into_iter()
        .filter(|p| p.cmdline.contains(&root) || all.iter().any(|j| j.pid == Some(p.pgrp)))
        .map(|p| format!("pid {} (group {}): {}", p.pid, p.pgrp, p.cmdline))
        .collect();
    assert!(left.is_empty(), "job processes left alive: {left:#?}");
    all
}

/// Waits until the daemon has finished the files, evaluated the alerts twice since, sent every
/// notification, and no job or re-distillation request is open.
fn settle(site: &Site, backlog: &Backlog) {
    wait_until(Duration::from_secs(300), "every file finished", || {
        backlog.finished(site)
    });
    wait_evaluations(&site.db(), 2);
    wait_until(
        Duration::from_secs(300),
        "every drift evaluated, every notification sent, no job or request open",
        || {
            site.query_i64(
                "SELECT (SELECT COUNT(*) FROM redistill_jobs WHERE status IN ('queued', 'running'))
                      + (SELECT COUNT(*) FROM alert_actions WHERE status IN ('requested', 'started'))
                      + (SELECT COUNT(*) FROM alert_outbox WHERE status != 'sent')
                      + ((SELECT COALESCE(MAX(id), 0) FROM drift_events)
                         != (SELECT COALESCE(MAX(last_event_id), 0) FROM alert_cursor))",
            ) == 0
        },
    );
}

#[test]
fn sigkill_while_alerting_and_redistilling_loses_no_alert_and_orphans_no_job() {
    let kills = env_or("SENSEI_CRASH_KILLS", 6);
    let per_file = env_or("SENSEI_CRASH_ALERT_RECORDS", 50) as usize;
    let mut rng = Rng(env_or("SENSEI_CRASH_SEED", 20261127));
    let started = Instant::now();
    // A receiver that takes its time to answer, so that kills also land between a delivery
    // and its record.
    let hook = Webhook::start_answering_after(Duration::from_millis(150));
    let site = Site::with_models(demo("student.onnx"), demo("teacher.onnx"));
    // A job takes over two seconds (a child in its process group sleeps), so that kills land
    // while it runs; then it writes the serving student as its candidate.
    let command = r#"["sh", "-c", "sleep 2 & wait $!; cp \"$1\" \"$2\"", "job", "{student}", "{output}", "{dataset}"]"#;
    site.write_config(&format!(
        "[inbox]\nquiet = \"200ms\"\nmax_file_size = \"16 MiB\"\n\
         [sampling]\nrate = 1.0\nseed = 3\nmax_per_minute = 1000000\nqueue = 100000\n\
         [detect]\nwindow_records = 50\n\
         {}[receivers.hook]\ntype = \"webhook\"\nurl = \"{}\"\ntimeout = \"2s\"\n\
         [[rules]]\nname = \"student-disagrees\"\nsignal = \"disagreement\"\nsegment = \"*\"\n\
         detector = \"bernoulli_cusum\"\nrepeat_interval = \"0s\"\nreceivers = [\"hook\"]\n\
         action = \"redistill\"\n\
         [[rules]]\nname = \"any-drift\"\nrepeat_interval = \"0s\"\nreceivers = [\"hook\"]\n\
         [redistill]\ncommand = {command}\nmin_interval = \"0s\"\nmin_samples = 20\n\
         timeout = \"5m\"\nbuffer_max_samples = 2000\n",
        alerts_section(""),
        hook.url(),
    ));
    let out = site.sensei(&["baseline", demo("lab.jsonl").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The field keeps sending: before every start one more round of files arrives, with a drift
    // in its second half. Kill points in turn: after a file's commit; while a job runs; while a
    // notification or a re-distillation request is in flight. Each is followed by a seeded
    // random wait before the SIGKILL.
    let mut backlog = Backlog::new(per_file);
    let mut interrupted: Vec<Job> = Vec::new();
    let (mut pending_at_kills, mut requested_at_kills) = (0, 0);
    for k in 0..kills {
        backlog.deliver_round(&site, true);
        let daemon = site.start();
        let me = daemon.child.id();
        match k % 3 {
            0 => {
                let before = site.ledger_count("done") + site.ledger_count("quarantined");
                wait_until(Duration::from_secs(60), "progress before the kill", || {
                    site.ledger_count("done") + site.ledger_count("quarantined") > before
                });
                std::thread::sleep(Duration::from_millis(rng.next() % 120));
            }
            1 => {
                // Or, should the round's drift ask for no job, once its files are done.
                let ready = poll(Duration::from_secs(120), || {
                    !jobs(
                        &site,
                        &format!("WHERE status = 'running' AND owner_pid = {me}"),
                    )
                    .is_empty()
                        || (backlog.finished(&site)
                            && site.query_i64(
                                "SELECT COUNT(*) FROM alert_actions WHERE status = 'requested'",
                            ) == 0)
                });
                assert!(ready, "no job ran and the files were not done");
                // A job takes over 2 s: the kill lands in its export, its command or its gate.
                std::thread::sleep(Duration::from_millis(rng.next() % 1500));
            }
            _ => {
                // Or, should the polls miss them, once the round's files are done.
                let ready = poll(Duration::from_secs(120), || {
                    site.query_i64(
                        "SELECT (SELECT COUNT(*) FROM alert_actions WHERE status = 'requested')
                              + (SELECT COUNT(*) FROM alert_outbox WHERE status = 'pending')",
                    ) > 0
                        || backlog.finished(&site)
                });
                assert!(ready, "nothing in flight and the files were not done");
                std::thread::sleep(Duration::from_millis(rng.next() % 30));
            }
        }
        daemon.kill();
        // What the kill interrupted, as the database has it.
        interrupted.extend(jobs(&site, "WHERE status = 'running'"));
        pending_at_kills +=
            site.query_i64("SELECT COUNT(*) FROM alert_outbox WHERE status = 'pending'");
        requested_at_kills +=
            site.query_i64("SELECT COUNT(*) FROM alert_actions WHERE status = 'requested'");
    }
    interrupted.sort();
    interrupted.dedup_by_key(|j| j.id);

    // A last start, after a clean round: it finishes the files, recovers the interrupted jobs
    // and delivers every notification. Then one more drift, to see a job requested after the
    // recovery run to its end.
    backlog.deliver_round(&site, false);
    let daemon = site.start();
    settle(&site, &backlog);
    let before = jobs(&site, "").len();
    backlog.deliver_round(&site, true);
    backlog.deliver_round(&site, false);
    settle(&site, &backlog);
    assert!(daemon.stop().success());

    // Records: each exactly once; files: each done or quarantined.
    let good = backlog.files - backlog.bad;
    let total = (good * per_file) as i64;
    assert_eq!(site.records(), total, "after {kills} kills");
    assert_eq!(
        site.query_i64("SELECT COUNT(DISTINCT record_id) FROM records"),
        total
    );
    assert_eq!(site.ledger_count("done") as usize, good);
    assert_eq!(site.ledger_count("quarantined") as usize, backlog.bad);

    // Alerts: every notification delivered, none lost, none repeated beyond what a kill between
    // a delivery and its record allows.
    let outbox = sent_notifications(&site);
    let received = hook.received();
    let repeats = check_deliveries(&outbox, &received);
    assert!(
        repeats <= kills as usize,
        "{repeats} repeated deliveries in {kills} kills"
    );
    let episodes = check_episodes(&outbox);
    let disagreement: Member = ("disagreement".into(), "*".into(), "bernoulli_cusum".into());
    let events = check_every_drift_announced(&site, &outbox, &episodes, "any-drift", |_| true);
    let disagreements =
        check_every_drift_announced(&site, &outbox, &episodes, "student-disagrees", |m| {
            *m == disagreement
        });
    assert!(
        disagreements > 0,
        "the drifted files raised no disagreement drift"
    );

    // Re-distillation: every request taken (a job ran for it, or why not is recorded); every job
    // ended; the interrupted ones by the recovery; no command left running.
    assert_eq!(
        site.query_i64(
            "SELECT COUNT(*) FROM alert_actions WHERE status NOT IN ('done', 'failed', 'skipped')"
        ),
        0
    );
    let all_jobs = check_jobs(&site, &interrupted);
    assert!(
        kills < 2 || !interrupted.is_empty(),
        "no kill landed while a job ran"
    );
    // The command always succeeds: a job no kill interrupted ran to its end.
    let others: Vec<&Job> = all_jobs
        .iter()
        .filter(|j| j.status != "succeeded" && !interrupted.iter().any(|i| i.id == j.id))
        .collect();
    assert!(
        others.is_empty(),
        "jobs that failed without a kill: {others:#?}"
    );
    let succeeded = all_jobs.iter().filter(|j| j.status == "succeeded").count();
    assert!(
        all_jobs[before..].iter().any(|j| j.status == "succeeded"),
        "no job after the recovery ran to its end: {all_jobs:#?}"
    );
    assert_eq!(site.integrity_check(), "ok");
    eprintln!(
        "crash harness (alerts, jobs): {kills} kills, {} files ({} bad), {total} records, \
         {events} drift events, {} episodes, {} notifications sent, {} deliveries ({repeats} repeated), \
         {} jobs ({} interrupted by a kill, {succeeded} succeeded), {pending_at_kills} notifications and \
         {requested_at_kills} requests in flight at a kill, {:.1} s",
        backlog.files,
        backlog.bad,
        episodes.values().map(Vec::len).sum::<usize>(),
        outbox.len(),
        received.len(),
        all_jobs.len(),
        interrupted.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A kill during the migration to the compact record layout leaves the previous schema whole;
/// the next start migrates from the beginning and loses nothing. The database is the previous
/// release's fixture grown to 1.5 million records, so that the migration takes long enough to
/// be killed while its write-ahead log grows.
#[test]
fn sigkill_during_the_migration_leaves_the_old_schema_whole_and_the_next_start_migrates() {
    let site = Site::new();
    site.write_config("");
    let db = site.db_path();
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::copy(repo().join("tests/fixtures/release-schema8.db"), &db).unwrap();
    let bulk = 1_500_000;
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO files (name, sha256, size, kind, status, records, processed_at)
                 VALUES ('bulk.jsonl', 'bulk', 1, 'jsonl', 'done', {bulk}, 5000);
             UPDATE files SET first_seq = (SELECT MAX(seq) FROM records) + 1
                 WHERE name = 'bulk.jsonl';
             WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {bulk} - 1)
             INSERT INTO records (file_id, record_id, ts, segment, student, prediction,
                                  confidence, entropy, latency_us, sampled)
             SELECT (SELECT id FROM files WHERE name = 'bulk.jsonl'), 'bulk-' || i, 1000 + i,
                    CASE WHEN i % 2 = 0 THEN 'line=A' ELSE 'line=B' END, 'student00000',
                    i % 10, 0.5 + (i % 100) / 1000.0, 0.25, 30, 0
             FROM n;"
        ))
        .unwrap();
    }
    let version = |path: &Path| -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(version(&db), 8);
    let records = 510 + bulk;
    let empty = site.root().join("nothing");
    std::fs::create_dir_all(&empty).unwrap();
    // `replay` migrates the database before anything else.
    let mut child = std::process::Command::new(crate::common::sensei_bin())
        .args(["--config", site.config_path().to_str().unwrap(), "replay"])
        .arg(&empty)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wal = db.with_extension("db-wal");
    let writing = poll(Duration::from_secs(120), || {
        std::fs::metadata(&wal).is_ok_and(|m| m.len() > 2 << 20)
    });
    assert!(writing, "the migration never wrote 2 MiB of log");
    child.kill().unwrap();
    child.wait().unwrap();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        assert_eq!(version(&db), 8, "killed before the migration committed");
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, records as i64);
    }
    let out = site.sensei(&["replay", empty.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(version(&db) > 8);
    assert_eq!(site.records(), records as i64);
    let last: String = site
        .db()
        .query_row(
            &format!("SELECT record_id FROM records WHERE seq = {records}"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(last, "bulk-1499999");
    assert_eq!(site.query_i64("SELECT COUNT(*) FROM record_ids"), 0);
}
