//! Long-running operations of the daemon (snapshot streams, restores into a resource): each
//! runs as a task with a name, reports progress as `progress job` events (at most
//! [`PROGRESS_EVENTS_PER_SECOND_MAX`] a second) and ends with a `destroy job` event carrying
//! its report or its error. The CLI subscribes to the events and draws the progress bar.
//!
//! Bounded: at most [`limits::JOBS_RUNNING_MAX`] run at once; the last
//! [`limits::JOBS_KEPT_MAX`] finished ones are kept for `job.list`.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

use crate::control::{Event, EventBus, EventKind, ObjectKind, RpcError};
use crate::limits;
use crate::stream::{Progress, Report};

const PROGRESS_EVENTS_PER_SECOND_MAX: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Done,
    Failed,
    Cancelled,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobInfo {
    pub name: String,
    pub kind: String,
    pub resource: String,
    pub state: JobState,
    pub progress: Option<Progress>,
    pub report: Option<Report>,
    pub error: Option<String>,
    pub started_unix_ms: u64,
}

struct Job {
    info: JobInfo,
    abort: Option<tokio::task::AbortHandle>,
    last_event: Instant,
}

pub struct Jobs {
    jobs: Mutex<VecDeque<Job>>,
    events: EventBus,
    seq: AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Jobs {
    pub fn new(events: EventBus) -> Arc<Jobs> {
        Arc::new(Jobs {
            jobs: Mutex::new(VecDeque::new()),
            events,
            seq: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The names of the jobs running on `resource` now (a restore writes into it, a stream
    /// reads its snapshots): `drl down` is refused while there are any.
    pub fn running_on(&self, resource: &str) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|j| j.info.state == JobState::Running && j.info.resource == resource)
            .map(|j| j.info.name.clone())
            .collect()
    }

    /// Start `work` as job `kind-resource-N`. `work` gets a progress callback.
    pub fn start<W, F>(
        self: &Arc<Self>,
        kind: &str,
        resource: &str,
        work: W,
    ) -> Result<String, RpcError>
    where
        W: FnOnce(Box<dyn Fn(Progress) + Send + Sync>) -> F,
        F: Future<Output = Result<Report, String>> + Send + 'static,
    {
        let name = format!(
            "{kind}-{resource}-{}",
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        {
            let mut jobs = self.lock();
            let running = jobs
                .iter()
                .filter(|j| j.info.state == JobState::Running)
                .count();
            if running >= limits::JOBS_RUNNING_MAX {
                return Err(RpcError::busy(format!(
                    "{running} jobs are running; wait for one to finish"
                )));
            }
            while jobs.len() >= limits::JOBS_KEPT_MAX {
                match jobs.iter().position(|j| j.info.state != JobState::Running) {
                    Some(p) => drop(jobs.remove(p)),
                    None => break,
                }
            }
            jobs.push_back(Job {
                info: JobInfo {
                    name: name.clone(),
                    kind: kind.into(),
                    resource: resource.into(),
                    state: JobState::Running,
                    progress: None,
                    report: None,
                    error: None,
                    started_unix_ms: now_ms(),
                },
                abort: None,
                last_event: Instant::now(),
            });
        }
        self.events.publish(
            Event::new(EventKind::Create, ObjectKind::Job, &name)
                .field("kind", kind)
                .field("resource", resource),
        );
        let me = self.clone();
        let n2 = name.clone();
        let progress: Box<dyn Fn(Progress) + Send + Sync> =
            Box::new(move |p| me.on_progress(&n2, p));
        let fut = work(progress);
        let me = self.clone();
        let n2 = name.clone();
        let handle = tokio::spawn(async move {
            let res = fut.await;
            me.finish(&n2, res);
        });
        if let Some(j) = self.lock().iter_mut().find(|j| j.info.name == name) {
            j.abort = Some(handle.abort_handle());
        }
        Ok(name)
    }

    fn on_progress(&self, name: &str, p: Progress) {
        let mut jobs = self.lock();
        let Some(j) = jobs.iter_mut().find(|j| j.info.name == name) else {
            return;
        };
        j.info.progress = Some(p);
        let due = j.last_event.elapsed().as_millis() as u64
            >= 1000 / u64::from(PROGRESS_EVENTS_PER_SECOND_MAX);
        if due || p.bytes_done == p.bytes_total {
            j.last_event = Instant::now();
            drop(jobs);
            self.events.publish(
                Event::new(EventKind::Progress, ObjectKind::Job, name)
                    .field("progress", serde_json::to_value(p).unwrap_or_default()),
            );
        }
    }

    fn finish(&self, name: &str, res: Result<Report, String>) {
        let mut ev = Event::new(EventKind::Destroy, ObjectKind::Job, name);
        {
            let mut jobs = self.lock();
            let Some(j) = jobs.iter_mut().find(|j| j.info.name == name) else {
                return;
            };
            if j.info.state != JobState::Running {
                return;
            }
            j.abort = None;
            match res {
                Ok(r) => {
                    ev = ev
                        .field("state", "done")
                        .field("report", serde_json::to_value(&r).unwrap_or_default());
                    j.info.state = JobState::Done;
                    j.info.report = Some(r);
                }
                Err(e) => {
                    ev = ev.field("state", "failed").field("error", e.clone());
                    j.info.state = JobState::Failed;
                    j.info.error = Some(e);
                }
            }
        }
        self.events.publish(ev);
    }

    pub fn cancel(&self, name: &str) -> Result<(), RpcError> {
        {
            let mut jobs = self.lock();
            let j = jobs
                .iter_mut()
                .find(|j| j.info.name == name)
                .ok_or_else(|| RpcError::invalid_params(format!("no job named {name:?}")))?;
            if j.info.state != JobState::Running {
                return Err(RpcError::state_refused(format!(
                    "job {name} is not running"
                )));
            }
            if let Some(a) = j.abort.take() {
                a.abort();
            }
            j.info.state = JobState::Cancelled;
            j.info.error = Some("cancelled by the admin".into());
        }
        self.events.publish(
            Event::new(EventKind::Destroy, ObjectKind::Job, name)
                .field("state", "cancelled")
                .field("error", "cancelled by the admin"),
        );
        Ok(())
    }

    pub fn list(&self) -> Value {
        let jobs: Vec<JobInfo> = self.lock().iter().map(|j| j.info.clone()).collect();
        json!({ "jobs": jobs })
    }

    /// Abort every running job (daemon shutdown). Interrupted streams resume on the next run.
    pub fn abort_all(&self) {
        for j in self.lock().iter_mut() {
            if let Some(a) = j.abort.take() {
                a.abort();
            }
        }
    }
}
