//! The JSON access log (SPEC.md): one object per line, written by a dedicated thread so the
//! request path only hands over a record and never waits on a disk or a pipe. When the writer
//! cannot keep up, lines are dropped and counted rather than slowing requests down.

use std::io::{BufWriter, Write};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::snapshot::AccessLogTarget;

/// Lines waiting for the writer; past this, new lines are dropped.
const QUEUE: usize = 16 * 1024;

/// One request, as logged. Never a token, a cookie, an API key or a query string.
#[derive(Debug, Serialize)]
pub struct AccessRecord {
    #[serde(serialize_with = "rfc3339")]
    pub ts: SystemTime,
    pub request_id: String,
    pub client_ip: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub route: Option<std::sync::Arc<str>>,
    pub upstream: Option<std::sync::Arc<str>>,
    pub target: Option<std::sync::Arc<str>>,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub bytes_sent: usize,
    pub cache: Option<&'static str>,
    pub consumer: Option<String>,
    pub trace_id: Option<String>,
    /// For a composition: the keys of the parts that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_parts: Option<String>,
}

/// Records waiting for the writer. Requests only push here; they never wake the writer, which
/// comes round every `WRITE_INTERVAL` and takes the whole batch. Waking it for each record
/// (a futex call, a context switch on a busy core and a write per handful of lines) cost more
/// than the rest of the access log together.
struct Queue {
    records: Mutex<Vec<AccessRecord>>,
    /// Flush requests: each is answered once everything before it is written.
    flushes: Mutex<Vec<SyncSender<()>>>,
    writer: std::thread::Thread,
}

/// How far behind a quiet gateway's log may be.
const WRITE_INTERVAL: Duration = Duration::from_millis(50);

pub struct AccessLog {
    queue: Option<Arc<Queue>>,
}

impl AccessLog {
    /// Start the writer for `target`. A file is opened for appending now, so a bad path is
    /// reported at start-up, not lost later.
    pub fn start(target: &AccessLogTarget) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(AccessLog { queue: None }),
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (ready_tx, ready_rx) = sync_channel(1);
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let Ok(queue) = ready_rx.recv() else { return };
                write_lines(queue, out)
            })?;
        let queue = Arc::new(Queue {
            records: Mutex::new(Vec::with_capacity(1024)),
            flushes: Mutex::new(Vec::new()),
            writer: handle.thread().clone(),
        });
        ready_tx
            .send(Arc::clone(&queue))
            .map_err(|_| std::io::Error::other("the access log writer did not start"))?;
        Ok(AccessLog { queue: Some(queue) })
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Hand a record to the writer. Returns false when it was dropped (queue full).
    pub fn log(&self, record: AccessRecord) -> bool {
        let Some(queue) = &self.queue else {
            return true;
        };
        let mut records = lock(&queue.records);
        if records.len() >= QUEUE {
            return false;
        }
        records.push(record);
        true
    }

    /// Wait (up to a second) until every line handed over so far is written out.
    pub fn flush(&self) {
        if let Some(queue) = &self.queue {
            let (done, wait) = sync_channel(1);
            lock(&queue.flushes).push(done);
            queue.writer.unpark();
            let _ = wait.recv_timeout(Duration::from_secs(1));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_lines(queue: Arc<Queue>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut batch = Vec::with_capacity(1024);
    // Runs as long as the process: the gateway logs until it exits.
    loop {
        std::thread::park_timeout(WRITE_INTERVAL);
        // Flush requests first: a record logged before a flush was asked for is in the
        // batch taken next.
        let flushes = std::mem::take(&mut *lock(&queue.flushes));
        std::mem::swap(&mut batch, &mut *lock(&queue.records));
        for record in batch.drain(..) {
            write_record(&mut out, &record);
        }
        let _ = out.flush();
        for done in flushes {
            let _ = done.send(());
        }
    }
}

fn write_record(out: &mut impl Write, record: &AccessRecord) {
    if serde_json::to_writer(&mut *out, record).is_ok() {
        let _ = out.write_all(b"\n");
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339(*t))
}

/// `2026-11-22T04:41:00.123Z`, without a date library.
pub fn format_rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_322_460_123);
        assert_eq!(format_rfc3339(t), "2026-11-22T04:41:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(format_rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
