//! The JSON access log (SPEC.md): one object per line, written by a dedicated thread so the
//! request path only hands over a record and never waits on a disk or a pipe. When the writer
//! cannot keep up, lines are dropped and counted rather than slowing requests down.

use std::io::{BufWriter, Write};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
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

enum Message {
    Record(Box<AccessRecord>),
    /// Write out everything before this, then answer.
    Flush(SyncSender<()>),
}

pub struct AccessLog {
    sender: Option<SyncSender<Message>>,
}

impl AccessLog {
    /// Start the writer for `target`. A file is opened for appending now, so a bad path is
    /// reported at start-up, not lost later.
    pub fn start(target: &AccessLogTarget) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(AccessLog { sender: None }),
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (sender, receiver) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(receiver, out))?;
        Ok(AccessLog {
            sender: Some(sender),
        })
    }

    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Hand a record to the writer. Returns false when it was dropped (queue full).
    pub fn log(&self, record: AccessRecord) -> bool {
        match &self.sender {
            Some(sender) => match sender.try_send(Message::Record(Box::new(record))) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            },
            None => true,
        }
    }
}

impl AccessLog {
    /// Wait (up to a second) until every line handed over so far is written out.
    pub fn flush(&self) {
        if let Some(sender) = &self.sender {
            let (done, wait) = sync_channel(1);
            if sender.send(Message::Flush(done)).is_ok() {
                let _ = wait.recv_timeout(Duration::from_secs(1));
            }
        }
    }
}

fn write_lines(receiver: Receiver<Message>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    loop {
        // Flush whenever the queue runs dry, so a quiet gateway's log is never far behind.
        let first = match receiver.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                let _ = out.flush();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Record(record) => write_record(&mut out, &record),
                Message::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = receiver.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
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
