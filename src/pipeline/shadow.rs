//! The remote shadow worker: challengers on inference servers, run on their own thread after the
//! teacher. The teacher hands each batch it answered to this worker without waiting
//! (`try_send`); this worker sends the batch to every such challenger (each bounded by its
//! timeout, retries and circuit breaker, `crate::shadow::RemoteShadows`) and passes the teacher's
//! rows on to the writer with the challengers' answers. A batch the worker has no room for goes
//! to the writer straight from the teacher, each challenger's comparison skipped as `busy`: a
//! slow or absent server delays neither the teacher nor the student, and costs no record.
//!
//! ```text
//! teacher ──answered batches (try_send)──▶ remote shadow worker ──rows──▶ writer
//!    └──────────── when it is full: rows, challengers skipped ──────────────▶ ┘
//! ```

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;

use super::{ByFile, FileMeta, WriterMsg};
use crate::shadow::RemoteShadows;
use crate::store::TeacherRow;

/// One batch the teacher answered: each record's file, index in the file and teacher row.
pub struct ShadowJob {
    pub rows: Vec<(Arc<FileMeta>, usize, TeacherRow)>,
}

pub struct RemoteShadowWorker {
    pub shadows: RemoteShadows,
}

impl RemoteShadowWorker {
    pub fn spawn(
        mut self,
        input: Receiver<ShadowJob>,
        writer: SyncSender<WriterMsg>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("shadow-remote".into())
            .spawn(move || self.run(input, writer))
    }

    fn run(&mut self, input: Receiver<ShadowJob>, writer: SyncSender<WriterMsg>) {
        while let Ok(first) = input.recv() {
            // What is queued, up to the batches a challenger sends at once; never wait for more.
            let mut jobs = vec![first];
            while jobs.len() < self.shadows.in_flight() {
                match input.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            {
                let mut batches: Vec<Vec<&mut TeacherRow>> = jobs
                    .iter_mut()
                    .map(|job| job.rows.iter_mut().map(|(_, _, row)| row).collect())
                    .collect();
                self.shadows.run(&mut batches);
            }
            for job in jobs {
                if send(job, &writer).is_err() {
                    return;
                }
            }
        }
    }
}

/// Sends a batch's rows to the writer, one message per file.
pub(super) fn send(job: ShadowJob, writer: &SyncSender<WriterMsg>) -> Result<(), ()> {
    let mut by_file = ByFile::new();
    for (meta, index, row) in job.rows {
        by_file.push(&meta, index, Ok(row));
    }
    for (meta, rows) in by_file.0 {
        writer
            .send(WriterMsg::Teacher { meta, rows })
            .map_err(|_| ())?;
    }
    Ok(())
}
