//! Prometheus metrics and the pipeline's heartbeat.
//!
//! Two sources feed `/metrics`. What only the running process knows — inference batch latency
//! per model, files finished per outcome, ingest lag, reloads — lives in the in-process
//! [`Metrics`], updated by the pipeline threads. Everything the database already knows — records,
//! teacher samples, disagreement, KL, detector statistics, drift events, alerts — is read from
//! SQLite at scrape time (`DatabaseCollector`), so the numbers agree with `sensei status` and
//! survive restarts, and nothing is counted twice.
//!
//! The heartbeat is a counter bumped by every student batch, teacher batch and finished file.
//! The systemd watchdog is pinged only while it advances (or while the pipeline is idle), so a
//! stuck pipeline gets the daemon restarted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::record::segment_label;
use crate::store::{CountedTable, Reader};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A stored signal name as labels: `signal` is its family, `feature` its index where it has one
/// (`input_psi[4]` → `signal="input_psi", feature="4"`), so that a selector on the family takes
/// every feature, as an alert rule on the family does.
fn signal_labels(signal: &str) -> Labels {
    match signal.parse::<crate::signal::SignalName>() {
        Ok(s) => {
            let mut l = labels(&[("signal", s.family.name())]);
            if let Some(i) = s.index {
                l.push(("feature".to_owned(), i.to_string()));
            }
            l
        }
        Err(_) => labels(&[("signal", signal)]),
    }
}

/// The in-process metrics and the heartbeat, shared (in an `Arc`) by the pipeline threads, the
/// watchdog and the HTTP server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    batch_seconds: Family<Labels, Histogram>,
    inference_records: Family<Labels, Counter>,
    files: Family<Labels, Counter>,
    ingest_lag: Histogram,
    reloads: Family<Labels, Counter>,
    ready: Gauge,
    heartbeat: AtomicU64,
    running: AtomicBool,
    db_path: Arc<RwLock<PathBuf>>,
    window_ms: Arc<AtomicI64>,
}

/// `[store] window` until [`Metrics::set_window`] says otherwise (its default).
const DEFAULT_WINDOW_MS: i64 = 15 * 60 * 1000;

impl Metrics {
    /// Metrics reading the database at `db_path` on each scrape.
    pub fn new(db_path: PathBuf) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("sensei");
        let batch_seconds = Family::<Labels, Histogram>::new_with_constructor(|| {
            // 0.25 ms .. 8 s
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        registry.register(
            "inference_batch_seconds",
            "Wall time of one ONNX Runtime call, per model (student, teacher)",
            batch_seconds.clone(),
        );
        let inference_records = Family::<Labels, Counter>::default();
        registry.register(
            "inference_records",
            "Records run through each model by this process",
            inference_records.clone(),
        );
        let files = Family::<Labels, Counter>::default();
        registry.register(
            "files_finished",
            "Inbox files finished by this process, by outcome (committed, labels, duplicate, quarantined; failed counts each failed commit of a file that stays in the inbox and is retried, so one file may count several times)",
            files.clone(),
        );
        // 0.1 s .. about 15 h
        let ingest_lag = Histogram::new(exponential_buckets(0.1, 3.0, 13));
        registry.register(
            "ingest_lag_seconds",
            "Time from a file's last modification (its arrival) to its commit",
            ingest_lag.clone(),
        );
        let reloads = Family::<Labels, Counter>::default();
        // Both results from the start, so that a rule on the first rejected reload sees it.
        for result in ["applied", "rejected"] {
            let _ = reloads.get_or_create(&labels(&[("result", result)]));
        }
        registry.register(
            "config_reloads",
            "SIGHUP config reloads, by result (applied, rejected)",
            reloads.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while the models are loaded and the pipeline runs",
            ready.clone(),
        );
        let db_path = Arc::new(RwLock::new(db_path));
        let window_ms = Arc::new(AtomicI64::new(DEFAULT_WINDOW_MS));
        registry.register_collector(Box::new(DatabaseCollector {
            db_path: db_path.clone(),
            window_ms: window_ms.clone(),
        }));
        Arc::new(Metrics {
            registry,
            batch_seconds,
            inference_records,
            files,
            ingest_lag,
            reloads,
            ready,
            heartbeat: AtomicU64::new(0),
            running: AtomicBool::new(false),
            db_path,
            window_ms,
        })
    }

    /// One ONNX Runtime call of `model` ("student" or "teacher") over `records` records.
    pub fn batch(&self, model: &str, elapsed: Duration, records: usize) {
        let l = labels(&[("model", model)]);
        self.batch_seconds
            .get_or_create(&l)
            .observe(elapsed.as_secs_f64());
        self.inference_records
            .get_or_create(&l)
            .inc_by(records as u64);
        self.beat();
    }

    /// A file at `path` finished with `outcome` (`committed`, `labels`, `duplicate`,
    /// `quarantined` or `failed`); call before it is moved out of the inbox: a committed file's
    /// modification time gives the ingest lag.
    pub fn file_finished(&self, path: &Path, outcome: &str) {
        self.files
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc();
        if matches!(outcome, "committed" | "labels")
            && let Some(age) = std::fs::symlink_metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
        {
            self.ingest_lag.observe(age.as_secs_f64());
        }
        self.beat();
    }

    /// A config reload was applied or rejected.
    pub fn reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.reloads
            .get_or_create(&labels(&[("result", result)]))
            .inc();
    }

    /// Marks pipeline progress.
    pub fn beat(&self) {
        self.heartbeat.fetch_add(1, Ordering::Relaxed);
    }

    /// The heartbeat: changes whenever the pipeline makes progress.
    pub fn heartbeat(&self) -> u64 {
        self.heartbeat.load(Ordering::Relaxed)
    }

    /// Whether the pipeline runs with its models loaded (`/readyz`).
    pub fn is_ready(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self, ready: bool) {
        self.running.store(ready, Ordering::Relaxed);
        self.ready.set(i64::from(ready));
    }

    /// `[store] window`, the length of the windows the observed rates are measured in.
    pub fn set_window(&self, window: Duration) {
        self.window_ms
            .store(window.as_millis() as i64, Ordering::Relaxed);
    }

    /// The database read at scrape time (changes on reload).
    pub fn set_database(&self, path: PathBuf) {
        if let Ok(mut p) = self.db_path.write() {
            *p = path;
        }
    }

    /// The Prometheus text exposition of every metric. Reads the database: call it off the
    /// async threads.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!(error = %e, "Encoding the metrics failed.");
        }
        out
    }
}

/// Reads what the database knows at each scrape.
#[derive(Debug)]
struct DatabaseCollector {
    db_path: Arc<RwLock<PathBuf>>,
    window_ms: Arc<AtomicI64>,
}

/// One metric family of several labelled samples.
struct FamilyOut {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, f64)>,
}

impl FamilyOut {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> FamilyOut {
        FamilyOut {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, labels: Labels, value: f64) {
        if value.is_finite() {
            self.samples.push((labels, value));
        }
    }

    /// A family without samples still says what it is (its HELP and TYPE), so that a scrape
    /// names every family a dashboard or rule may select, before there is anything to count.
    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let help = format!("{}.", self.help);
        let mut metric = encoder.encode_descriptor(self.name, &help, None, self.kind)?;
        for (l, v) in &self.samples {
            let mut sample = metric.encode_family(l)?;
            match self.kind {
                MetricType::Counter => sample.encode_counter::<Labels, f64, f64>(v, None)?,
                _ => sample.encode_gauge(v)?,
            }
        }
        Ok(())
    }
}

impl Collector for DatabaseCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let path = self.db_path.read().map(|p| p.clone()).unwrap_or_default();
        let window_ms = self.window_ms.load(Ordering::Relaxed);
        let families = match database_families(&path, window_ms) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "Reading the database for /metrics failed.");
                let mut up = FamilyOut::new(
                    "database_readable",
                    "1 when the last scrape could read the database",
                    MetricType::Gauge,
                );
                up.push(Vec::new(), 0.0);
                vec![up]
            }
        };
        for family in &families {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// The `segment` label: the all-segments aggregate is `segment="all"`.
fn seg(segment: &str) -> Labels {
    labels(&[("segment", segment_label(segment))])
}

fn database_families(path: &std::path::Path, window_ms: i64) -> anyhow::Result<Vec<FamilyOut>> {
    let reader = Reader::open(path)?;
    let summary = reader.summary()?;
    let mut out = Vec::new();

    let mut readable = FamilyOut::new(
        "database_readable",
        "1 when the last scrape could read the database",
        MetricType::Gauge,
    );
    readable.push(Vec::new(), 1.0);
    out.push(readable);

    let mut files = FamilyOut::new(
        "files",
        "Inbox files in the ledger, by status (done, quarantined, duplicate)",
        MetricType::Counter,
    );
    files.push(labels(&[("status", "done")]), summary.files_done as f64);
    files.push(
        labels(&[("status", "quarantined")]),
        summary.files_quarantined as f64,
    );
    files.push(
        labels(&[("status", "duplicate")]),
        summary.files_duplicate as f64,
    );
    out.push(files);

    let mut skipped = FamilyOut::new(
        "teacher_samples_skipped",
        "Records sampled for the teacher but not compared, by reason (budget, queue, unreachable: the teacher on an inference server could not answer; failed: the teacher failed, or its server answered with an error or an answer of the wrong shape, datatype or format)",
        MetricType::Counter,
    );
    skipped.push(
        labels(&[("reason", "budget")]),
        summary.skipped_budget as f64,
    );
    skipped.push(labels(&[("reason", "queue")]), summary.skipped_queue as f64);
    skipped.push(
        labels(&[("reason", "unreachable")]),
        summary.skipped_unreachable as f64,
    );
    skipped.push(
        labels(&[("reason", "failed")]),
        summary.skipped_failed as f64,
    );
    out.push(skipped);

    let mut duplicate = FamilyOut::new(
        "records_duplicate",
        "Records left out because a record with the same id was counted before (the first arrival counts)",
        MetricType::Counter,
    );
    duplicate.push(Vec::new(), summary.records_duplicate as f64);
    out.push(duplicate);

    let mut cut = FamilyOut::new(
        "segment_values_cut",
        "Segment values longer than [segments] max_value_bytes, cut to it (the record is counted, under the cut value)",
        MetricType::Counter,
    );
    cut.push(Vec::new(), summary.segment_values_cut as f64);
    out.push(cut);

    let mut late = FamilyOut::new(
        "late_labels_ignored",
        "Late labels that did not give a record its first label, by effect (corrected: replaced a different, older label; unchanged: the record had this label or a later one)",
        MetricType::Counter,
    );
    late.push(
        labels(&[("effect", "corrected")]),
        summary.labels_corrected as f64,
    );
    late.push(
        labels(&[("effect", "unchanged")]),
        summary.labels_unchanged as f64,
    );
    out.push(late);

    let mut dropped = FamilyOut::new(
        "records_deleted",
        "Per-record rows deleted by retention, by reason (age: [store] record_retention; size: [store] max_size)",
        MetricType::Counter,
    );
    let deleted = reader.dropped()?;
    for reason in ["age", "size"] {
        let records = deleted
            .iter()
            .find(|d| d.reason == reason)
            .map_or(0, |d| d.records);
        dropped.push(labels(&[("reason", reason)]), records as f64);
    }
    out.push(dropped);

    if let Ok(size) = reader.database_size() {
        let mut bytes = FamilyOut::new(
            "database_bytes",
            "The database file's pages, by state (used; free: reused before the file grows)",
            MetricType::Gauge,
        );
        bytes.push(labels(&[("state", "used")]), size.used_bytes as f64);
        bytes.push(labels(&[("state", "free")]), size.free_bytes as f64);
        out.push(bytes);
    }

    let mut records = FamilyOut::new(
        "records",
        "Records the student answered, per segment ('all' is all segments)",
        MetricType::Counter,
    );
    let mut samples = FamilyOut::new(
        "teacher_samples",
        "Records the teacher also answered, per segment",
        MetricType::Counter,
    );
    let mut disagreement = FamilyOut::new(
        "disagreement_rate",
        "Weighted top-1 disagreement rate between teacher and student over all time, per segment",
        MetricType::Gauge,
    );
    let mut kl = FamilyOut::new(
        "kl_mean",
        "Weighted mean KL(teacher || student) over all time, nats, per segment",
        MetricType::Gauge,
    );
    let mut att = FamilyOut::new(
        "attention_kl_mean",
        "Weighted mean attention KL over all time, nats, per segment",
        MetricType::Gauge,
    );
    for s in &summary.segments {
        records.push(seg(&s.segment), s.records as f64);
        samples.push(seg(&s.segment), s.teacher_samples as f64);
        if let Some(v) = s.disagreement {
            disagreement.push(seg(&s.segment), v);
        }
        if let Some(v) = s.kl_mean {
            kl.push(seg(&s.segment), v);
        }
        if let Some(v) = s.attention_kl_mean {
            att.push(seg(&s.segment), v);
        }
    }
    out.extend([records, samples, disagreement, kl, att]);

    let mut w_dis = FamilyOut::new(
        "window_disagreement_rate",
        "Disagreement rate in the latest window with teacher samples, per segment",
        MetricType::Gauge,
    );
    let mut w_kl = FamilyOut::new(
        "window_kl_mean",
        "Mean KL in the latest window with teacher samples, per segment",
        MetricType::Gauge,
    );
    let mut w_att = FamilyOut::new(
        "window_attention_kl_mean",
        "Mean attention KL in the latest window with teacher samples, per segment",
        MetricType::Gauge,
    );
    let mut w_conf = FamilyOut::new(
        "window_confidence_mean",
        "Mean student confidence in the latest window, per segment",
        MetricType::Gauge,
    );
    for w in reader.latest_windows()? {
        if let Some(v) = w.disagreement_rate {
            w_dis.push(seg(&w.segment), v);
        }
        if let Some(v) = w.mean_kl {
            w_kl.push(seg(&w.segment), v);
        }
        if let Some(v) = w.mean_attention_kl {
            w_att.push(seg(&w.segment), v);
        }
        if let Some(v) = w.mean_confidence {
            w_conf.push(seg(&w.segment), v);
        }
    }
    out.extend([w_dis, w_kl, w_att, w_conf]);

    let mut stat = FamilyOut::new(
        "detector_statistic",
        "Current statistic of each drift detector",
        MetricType::Gauge,
    );
    let mut thr = FamilyOut::new(
        "detector_threshold",
        "Alarm threshold of each drift detector (it fires when the statistic reaches it)",
        MetricType::Gauge,
    );
    let mut dsamples = FamilyOut::new(
        "detector_samples",
        "Observations since each drift detector was armed",
        MetricType::Gauge,
    );
    for d in reader.detectors().unwrap_or_default() {
        let mut l = signal_labels(&d.signal);
        l.extend(labels(&[
            ("segment", segment_label(&d.segment)),
            ("detector", &d.detector),
        ]));
        stat.push(l.clone(), d.statistic);
        thr.push(l.clone(), d.threshold);
        dsamples.push(l, d.samples as f64);
    }
    out.extend([stat, thr, dsamples]);

    let mut delay = FamilyOut::new(
        "detector_expected_delay_seconds",
        "Expected delay of each sequential drift detector at the configured minimum shift, at the observed rate of its observations (+Inf when it gets none)",
        MetricType::Gauge,
    );
    let mut blind = FamilyOut::new(
        "detector_blind",
        "1 when a sequential drift detector's expected delay at the minimum shift exceeds a day at the observed rate (teacher skips, a small budget): it cannot detect in useful time",
        MetricType::Gauge,
    );
    for d in reader.sightlines(window_ms).unwrap_or_default() {
        let mut l = signal_labels(&d.signal);
        l.extend(labels(&[
            ("segment", segment_label(&d.segment)),
            ("detector", &d.detector),
        ]));
        let seconds = d.sightline.expected_delay_seconds.unwrap_or(
            if d.sightline.expected_delay_records.is_infinite() {
                f64::INFINITY
            } else {
                f64::NAN
            },
        );
        if !seconds.is_nan() {
            delay.push(l.clone(), seconds);
        }
        blind.push(l, f64::from(u8::from(d.sightline.blind)));
    }
    out.extend([delay, blind]);

    if let Ok(Some(b)) = reader.budget(crate::time::now_ms()) {
        let mut events = FamilyOut::new(
            "false_alarm_budget_events",
            "The site's false-alarm budget: expected false drift events per period ([detect] false_alarms)",
            MetricType::Gauge,
        );
        events.push(Vec::new(), b.events_per_period);
        let mut period = FamilyOut::new(
            "false_alarm_budget_period_seconds",
            "The period of the false-alarm budget",
            MetricType::Gauge,
        );
        period.push(Vec::new(), b.period_seconds);
        let mut rate = FamilyOut::new(
            "false_alarm_budget_records_per_second",
            "The record rate the budget's allocation assumes",
            MetricType::Gauge,
        );
        rate.push(labels(&[("source", &b.rate_source)]), b.records_per_second);
        let mut share = FamilyOut::new(
            "false_alarm_budget_share",
            "Share of the false-alarm budget per detector family (windowed: the windowed rounds; 0 where arl0 or family_alpha is set)",
            MetricType::Gauge,
        );
        let mut arl0 = FamilyOut::new(
            "false_alarm_budget_arl0",
            "In-control ARL0 of a family's all-segments detector, in its observations",
            MetricType::Gauge,
        );
        let mut alpha = FamilyOut::new(
            "false_alarm_budget_alpha",
            "Family-wise false-alarm level of one windowed round",
            MetricType::Gauge,
        );
        let mut spent = FamilyOut::new(
            "false_alarm_budget_spent_events",
            "Drift events per family in the budget's current period (the later of arming and one period ago)",
            MetricType::Gauge,
        );
        let mut expected = FamilyOut::new(
            "false_alarm_budget_expected_events",
            "False drift events the budget expects per family over the same stretch as spent_events",
            MetricType::Gauge,
        );
        for f in &b.families {
            let l = labels(&[("family", &f.family)]);
            share.push(l.clone(), f.share);
            if let Some(a) = f.arl0 {
                arl0.push(l.clone(), a);
            }
            if let Some(a) = f.alpha {
                alpha.push(l.clone(), a);
            }
            spent.push(l.clone(), f.events as f64);
            expected.push(l, f.expected);
        }
        out.extend([events, period, rate, share, arl0, alpha, spent, expected]);
    }

    let mut events = FamilyOut::new(
        "drift_events",
        "Drift events detected, per signal and segment",
        MetricType::Counter,
    );
    let mut open = FamilyOut::new(
        "drift_events_open",
        "Drift events not yet resolved, per signal and segment",
        MetricType::Gauge,
    );
    for e in reader.drift_event_counts()? {
        let mut l = signal_labels(&e.signal);
        l.push(("segment".to_owned(), segment_label(&e.segment).to_owned()));
        events.push(l.clone(), e.total as f64);
        open.push(l, e.open as f64);
    }
    out.extend([events, open]);

    if let Some(a) = reader.alert_counts() {
        let mut firing = FamilyOut::new(
            "alerts_firing",
            "Alerts currently firing",
            MetricType::Gauge,
        );
        firing.push(Vec::new(), a.firing as f64);
        out.push(firing);
        if let Some(backlog) = a.outbox_backlog {
            let mut ob = FamilyOut::new(
                "alert_outbox_backlog",
                "Alert notifications waiting in the outbox for delivery",
                MetricType::Gauge,
            );
            ob.push(Vec::new(), backlog as f64);
            out.push(ob);
        }
    }

    out.extend(shadow_families(&reader)?);

    let mut jobs = FamilyOut::new(
        "redistill_jobs",
        "Re-distillation jobs, by status (queued, running, succeeded, failed, timed_out)",
        MetricType::Counter,
    );
    for (status, n) in reader.counts_by(CountedTable::JobsByStatus)? {
        jobs.push(labels(&[("status", &status)]), n as f64);
    }
    let mut promotions = FamilyOut::new(
        "student_promotions",
        "Student promotions and rollbacks, by kind (promote, rollback)",
        MetricType::Counter,
    );
    for (kind, n) in reader.counts_by(CountedTable::PromotionsByKind)? {
        promotions.push(labels(&[("kind", &kind)]), n as f64);
    }
    out.extend([jobs, promotions]);

    let mut size = FamilyOut::new(
        "database_size_bytes",
        "Size of the SQLite database file and its write-ahead log",
        MetricType::Gauge,
    );
    let wal = {
        let mut p = path.as_os_str().to_owned();
        p.push("-wal");
        PathBuf::from(p)
    };
    let bytes: u64 = [path.to_path_buf(), wal]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    size.push(Vec::new(), bytes as f64);
    out.push(size);
    Ok(out)
}

/// The serving student and each shadow model (candidates, challengers) of the latest pipeline
/// start, measured on the same teacher-sampled records: what `sensei report` ranks.
fn shadow_families(reader: &Reader) -> anyhow::Result<Vec<FamilyOut>> {
    let shadow = reader.shadow_models()?;
    if shadow.is_empty() {
        return Ok(Vec::new());
    }
    let mut samples = FamilyOut::new(
        "shadow_samples",
        "Teacher-sampled records each model answered in shadow (model 'student' is the serving student)",
        MetricType::Counter,
    );
    let mut agreement = FamilyOut::new(
        "shadow_agreement_rate",
        "Weighted top-1 agreement with the teacher in shadow, per model",
        MetricType::Gauge,
    );
    let mut agreement_low = FamilyOut::new(
        "shadow_agreement_rate_low",
        "Lower bound of the 95% interval of the shadow agreement, per model (what the agreement floor is checked against)",
        MetricType::Gauge,
    );
    let mut kl = FamilyOut::new(
        "shadow_kl_mean",
        "Weighted mean KL(teacher || model) in shadow, nats, per model",
        MetricType::Gauge,
    );
    let mut att = FamilyOut::new(
        "shadow_attention_kl_mean",
        "Weighted mean attention KL in shadow, nats, per model",
        MetricType::Gauge,
    );
    let mut latency = FamilyOut::new(
        "shadow_latency_seconds_mean",
        "Mean inference time per record in shadow, per model",
        MetricType::Gauge,
    );
    let mut size = FamilyOut::new(
        "shadow_model_size_bytes",
        "Size of each shadow model's ONNX file",
        MetricType::Gauge,
    );
    let mut skipped = FamilyOut::new(
        "shadow_skipped",
        "Teacher-sampled records a shadow model on an inference server did not answer, by reason (unreachable, error, busy): left out of its figures",
        MetricType::Counter,
    );
    let mut failed = FamilyOut::new(
        "shadow_model_failed",
        "1 when a shadow model failed to load or at inference and is skipped (see sensei report)",
        MetricType::Gauge,
    );
    let mut measured = Vec::new();
    if let Some((_, t)) = reader.student_shadow_totals(None)? {
        measured.push((crate::config::STUDENT.to_string(), t));
    }
    for m in &shadow {
        let l = labels(&[("model", &m.name), ("kind", m.kind.as_str())]);
        if let Some(bytes) = m.size_bytes {
            size.push(l.clone(), bytes as f64);
        }
        failed.push(l, f64::from(u8::from(m.status == "failed")));
        if let Some(sha) = &m.sha256 {
            if let Some(t) = reader.shadow_totals(&m.name, sha)? {
                measured.push((m.name.clone(), t));
            }
            for (reason, records) in reader.shadow_skips(&m.name, sha)? {
                skipped.push(
                    labels(&[("model", &m.name), ("reason", reason.as_str())]),
                    records as f64,
                );
            }
        }
    }
    for (model, t) in measured {
        let l = labels(&[("model", &model)]);
        samples.push(l.clone(), t.samples as f64);
        if let Some(a) = t.agreement_interval() {
            agreement.push(l.clone(), a.estimate);
            agreement_low.push(l.clone(), a.low);
        }
        if let Some(v) = t.mean_kl() {
            kl.push(l.clone(), v);
        }
        if let Some(v) = t.mean_attention_kl() {
            att.push(l.clone(), v);
        }
        if let Some(us) = t.mean_latency_us() {
            latency.push(l, us / 1e6);
        }
    }
    Ok(vec![
        samples,
        agreement,
        agreement_low,
        kl,
        att,
        latency,
        size,
        skipped,
        failed,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_process_metrics_encode_as_prometheus_text() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        drop(crate::store::Store::open(&db).unwrap());
        let m = Metrics::new(db);
        m.batch("student", Duration::from_millis(3), 16);
        m.set_ready(true);
        let before = m.heartbeat();
        m.beat();
        assert!(m.heartbeat() > before);
        let text = m.encode();
        assert!(
            text.contains("sensei_inference_batch_seconds_count{model=\"student\"} 1"),
            "{text}"
        );
        assert!(text.contains("sensei_inference_records_total{model=\"student\"} 16"));
        assert!(text.contains("sensei_ready 1"));
        assert!(text.contains("sensei_database_readable 1"), "{text}");
        assert!(text.contains("sensei_files_total{status=\"done\"} 0"));
    }

    #[test]
    fn an_unreadable_database_is_reported_not_fatal() {
        let m = Metrics::new(PathBuf::from("/nonexistent/sensei.db"));
        let text = m.encode();
        assert!(text.contains("sensei_database_readable 0"), "{text}");
    }
}
