//! What `sensei replay` prints when its files are done: the pipeline's counts, the student's
//! time in the model, and the status of the database it wrote.

use super::status::StatusReport;
use crate::pipeline::WriterReport;

/// Exit code of a replay that committed nothing because every file was quarantined
/// (sysexits.h `EX_DATAERR`): a script that backfills sees the failure without reading the log.
pub const EX_DATAERR: i32 = 65;

/// True when files were given, some were quarantined, and none was committed (duplicates of
/// files counted before are not a failure: a replay run twice commits nothing the second time).
pub fn nothing_committed(report: &WriterReport) -> bool {
    report.files_committed == 0 && report.files_quarantined > 0
}

/// The exit code of `sensei replay`: 1 when a commit failed, [`EX_DATAERR`] when every file was
/// quarantined, 0 otherwise.
pub fn replay_exit_code(report: &WriterReport) -> i32 {
    if report.commit_errors > 0 {
        1
    } else if nothing_committed(report) {
        EX_DATAERR
    } else {
        0
    }
}

/// Summary printed by `sensei replay`.
pub fn replay_text(report: &WriterReport, status: &StatusReport) -> String {
    let mut s = format!(
        "replayed: {} files committed ({} records, {} labels), {} quarantined, {} duplicates, {} failed\n",
        report.files_committed,
        report.records_committed,
        report.labels_committed,
        report.files_quarantined,
        report.files_duplicate,
        report.commit_errors
    );
    for q in &report.quarantined {
        s.push_str(&format!("  quarantined {}: {}\n", q.name, q.reason));
    }
    let unnamed = report.files_quarantined as usize - report.quarantined.len();
    if unnamed > 0 {
        s.push_str(&format!(
            "  … and {unnamed} more quarantined (their reasons are beside them in quarantine/ and in the ledger)\n"
        ));
    }
    if nothing_committed(report) {
        s.push_str(&format!(
            "nothing was committed: every file was quarantined (exit code {EX_DATAERR})\n"
        ));
    }
    let student = &report.student;
    if student.batches > 0 {
        s.push_str(&format!(
            "student: {} records in {} batches; {:.3} s in the model, {:.0}% of the {:.3} s from the first file to the last batch\n",
            student.records,
            student.batches,
            student.model.as_secs_f64(),
            100.0 * student.model_share(),
            student.active.as_secs_f64()
        ));
    }
    // A detector that needs more records than the replay brought to see the minimum shift
    // could not have seen a drift in it: teacher skips (a budget meant for live traffic) are
    // the usual cause.
    if report.records_committed > 0 {
        for d in &status.sightlines {
            let needed = d.sightline.expected_delay_records;
            if d.segment == crate::record::ALL_SEGMENTS && needed > report.records_committed as f64
            {
                s.push_str(&format!(
                    "cannot see drift in this replay: {} (the replay committed {} records)\n",
                    super::status::sightline_text(d),
                    report.records_committed
                ));
            }
        }
    }
    s.push_str(&status.text());
    s
}
