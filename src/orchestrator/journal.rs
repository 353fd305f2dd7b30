//! The recovery journal: one JSON line per event, appended and fdatasync'd before the call it
//! announces and after it returns, so a recovery stopped anywhere (kill -9, a service down, a
//! wrong password) resumes with the same command from what the journal says is done.
//!
//! Lines: `{"ts_ms", "op", "step", "phase": "begin"|"done"|"failed", "data", "error"}`. A
//! torn last line (a crash in the middle of a write) is dropped on open. A step whose last
//! record is `begin` is done again: every step is idempotent on its own (promote of a Primary
//! succeeds, an import looks its volume up by metadata first, a stack is looked up by name).
//!
//! Crash injection for tests: `DRL_DR_CRASH_AFTER=STEP` kills the process (SIGKILL, as kill
//! -9 would) right after `STEP`'s `done` record is durable; `DRL_DR_CRASH_AFTER=STEP:begin`
//! right after its `begin` record.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::OrchError;
use crate::limits::DR_JOURNAL_BYTES_MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Begin,
    Done,
    Failed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub ts_ms: u64,
    /// "recover" or "failback".
    pub op: String,
    pub step: String,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    pub records: Vec<Record>,
}

pub fn now_ms() -> u64 {
    crate::repl::replicator::unix_ms()
}

impl Journal {
    /// The journal of `plan` under `dir`.
    pub fn path_for(dir: &Path, plan: &str) -> PathBuf {
        dir.join(format!("{plan}.journal"))
    }

    /// Read what is there (nothing if absent) without creating anything.
    pub fn read(path: &Path) -> Result<Vec<Record>, OrchError> {
        let text = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(jerr(path, format!("stat: {e}"))),
            Ok(m) if m.len() > DR_JOURNAL_BYTES_MAX => {
                return Err(jerr(
                    path,
                    format!("{} bytes, more than {DR_JOURNAL_BYTES_MAX}", m.len()),
                ))
            }
            Ok(_) => std::fs::read_to_string(path).map_err(|e| jerr(path, format!("read: {e}")))?,
        };
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let mut out = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let complete = line.ends_with('\n');
            match serde_json::from_str::<Record>(line.trim_end()) {
                Ok(r) if complete => out.push(r),
                // A torn last line: the crash came during its write; it never counted.
                _ if i + 1 == lines.len() => break,
                Ok(_) => unreachable!("only the last line can lack its newline"),
                Err(e) => return Err(jerr(path, format!("line {}: {e}", i + 1))),
            }
        }
        Ok(out)
    }

    /// Open (create) for appending, locked: one recovery or fail back of a plan at a time
    /// (an admin's `drl dr recover` and the daemon's automatic failover never interleave).
    /// The lock (flock) goes with the process, so a killed run leaves none behind.
    pub fn open(path: &Path) -> Result<Journal, OrchError> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(|e| jerr(path, format!("mkdir: {e}")))?;
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(|e| jerr(path, format!("open: {e}")))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OrchError::Refused(format!(
                    "another recovery or fail back of this plan is running (its journal {} is locked; the daemon runs plans with failover = \"automatic\" by itself)",
                    path.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(jerr(path, format!("lock: {e}"))),
        }
        let records = Self::read(path)?;
        // Cut a torn tail so the next line starts clean.
        let text = std::fs::read(path).map_err(|e| jerr(path, format!("read: {e}")))?;
        if text.last().is_some_and(|b| *b != b'\n') {
            let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            file.set_len(keep as u64)
                .map_err(|e| jerr(path, format!("truncate: {e}")))?;
        }
        let _ = file.flush();
        if !existed {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| jerr(path, format!("fsync of the directory: {e}")))?;
        }
        Ok(Journal {
            path: path.to_owned(),
            file,
            records,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&mut self, r: Record) -> Result<(), OrchError> {
        self.append_all(vec![r])
    }

    /// Append records with one write and one fdatasync (a plan's per-volume records of one
    /// phase: 16 volumes paid 16 syncs each). The crash injection fires once all are durable.
    fn append_all(&mut self, rs: Vec<Record>) -> Result<(), OrchError> {
        let mut text = String::new();
        for r in &rs {
            text += &serde_json::to_string(r).map_err(|e| jerr(&self.path, e.to_string()))?;
            text.push('\n');
        }
        self.file
            .write_all(text.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(|e| jerr(&self.path, format!("append: {e}")))?;
        let injects: Vec<String> = rs
            .iter()
            .map(|r| format!("{}:{}", r.step, phase_name(r.phase)))
            .collect();
        self.records.extend(rs);
        if let Ok(at) = std::env::var("DRL_DR_CRASH_AFTER") {
            let hit = injects
                .iter()
                .any(|inject| at == *inject || *inject == format!("{at}:done"));
            if hit {
                // SAFETY: kill(2) on our own pid with a valid signal number has no memory
                // effects; SIGKILL cannot be caught, exactly like the admin's kill -9.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
            }
        }
        Ok(())
    }

    /// `begin` (or `done`: `phase`) records of several steps of `op`, durable together.
    pub fn many(
        &mut self,
        op: &str,
        phase: Phase,
        steps: impl IntoIterator<Item = (String, Value)>,
    ) -> Result<(), OrchError> {
        let ts_ms = now_ms();
        let rs: Vec<Record> = steps
            .into_iter()
            .map(|(step, data)| Record {
                ts_ms,
                op: op.into(),
                step,
                phase,
                data,
                error: None,
            })
            .collect();
        if rs.is_empty() {
            return Ok(());
        }
        self.append_all(rs)
    }

    pub fn begin(&mut self, op: &str, step: &str, data: Value) -> Result<(), OrchError> {
        self.append(Record {
            ts_ms: now_ms(),
            op: op.into(),
            step: step.into(),
            phase: Phase::Begin,
            data,
            error: None,
        })
    }

    pub fn done(&mut self, op: &str, step: &str, data: Value) -> Result<(), OrchError> {
        self.append(Record {
            ts_ms: now_ms(),
            op: op.into(),
            step: step.into(),
            phase: Phase::Done,
            data,
            error: None,
        })
    }

    pub fn failed(&mut self, op: &str, step: &str, error: &str) -> Result<(), OrchError> {
        self.append(Record {
            ts_ms: now_ms(),
            op: op.into(),
            step: step.into(),
            phase: Phase::Failed,
            data: Value::Null,
            error: Some(error.into()),
        })
    }

    /// The data of `step`'s last `done` record in operation `op`.
    pub fn done_data(&self, op: &str, step: &str) -> Option<&Value> {
        done_data(&self.records, op, step)
    }

    /// Move the journal aside (`<path>.<ts>`): the next operation starts a new one.
    pub fn archive(self) -> Result<PathBuf, OrchError> {
        let to = PathBuf::from(format!("{}.{}", self.path.display(), now_ms()));
        std::fs::rename(&self.path, &to).map_err(|e| jerr(&self.path, format!("archive: {e}")))?;
        Ok(to)
    }
}

pub fn done_data<'a>(records: &'a [Record], op: &str, step: &str) -> Option<&'a Value> {
    records
        .iter()
        .rev()
        .find(|r| r.op == op && r.step == step && r.phase == Phase::Done)
        .map(|r| &r.data)
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Begin => "begin",
        Phase::Done => "done",
        Phase::Failed => "failed",
    }
}

fn jerr(path: &Path, reason: String) -> OrchError {
    OrchError::Journal {
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_of_a_plan_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let p = Journal::path_for(d.path(), "web");
        let j = Journal::open(&p).unwrap();
        match Journal::open(&p) {
            Err(OrchError::Refused(m)) => assert!(m.contains("is locked"), "{m}"),
            Err(e) => panic!("expected a refusal, got {e}"),
            Ok(_) => panic!("a second run opened the journal of a running one"),
        }
        assert!(Journal::read(&p).is_ok(), "status still reads it");
        drop(j);
        Journal::open(&p).expect("free again after the first run ended");
    }

    #[test]
    fn append_read_and_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let p = Journal::path_for(d.path(), "web");
        let mut j = Journal::open(&p).unwrap();
        j.begin("recover", "promote", Value::Null).unwrap();
        j.done("recover", "promote", serde_json::json!({"n": 2}))
            .unwrap();
        drop(j);
        // A crash in the middle of the next line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"ts_ms\":1,\"op\":\"rec")
            .unwrap();
        let mut j = Journal::open(&p).unwrap();
        assert_eq!(j.records.len(), 2);
        assert_eq!(j.done_data("recover", "promote").unwrap()["n"], 2);
        j.failed("recover", "import:r0", "cinder down").unwrap();
        drop(j);
        let recs = Journal::read(&p).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[2].error.as_deref(), Some("cinder down"));
        // A bad line in the middle is an error, not silently skipped.
        std::fs::write(&p, "garbage\n{}\n").unwrap();
        assert!(Journal::read(&p)
            .unwrap_err()
            .to_string()
            .contains("line 1"));
    }
}
