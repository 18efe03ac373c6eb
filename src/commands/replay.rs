//! What `sensei replay` prints when its files are done: the pipeline's counts, the student's
//! time in the model, and the status of the database it wrote.

use super::status::StatusReport;
use crate::pipeline::WriterReport;

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
    s.push_str(&status.text());
    s
}
