//! The inspector thread: looks inside new processes for a CPython runtime (it parses their
//! interpreter files and reads their memory), away from the collector. A process whose memory
//! is slow to read, or never answers (a page under `userfaultfd` that nobody serves, a hung
//! network file), holds up only the inspection of the processes queued after it; every
//! process is still sampled, with native stacks until its answer arrives.
//!
//! A new interpreter is usually caught before its runtime is initialized (its first samples
//! are the dynamic loader's and the runtime's own start), sometimes inside `execve`, before its
//! memory is all mapped. The inspector looks again every [`RETRY_EVERY`] by itself, so the
//! process has its Python frames from its first lines on, rather than from a later sample's
//! turn: a script that runs for three seconds would otherwise lose a tenth of its Python
//! stacks. After [`RETRY_FOR`] the last answer goes back to the collector; "not ready" is
//! asked again at a later sample.

use std::{
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use tracing::debug;

use crate::{
    process::Identity,
    python::{Detection, Detector},
};

/// Processes waiting for inspection; more are looked at again at their next sample.
const QUEUE: usize = 256;
/// How often a process whose runtime is not initialized yet is looked at again.
pub const RETRY_EVERY: Duration = Duration::from_millis(10);
/// How long the inspector keeps looking at such a process before it answers "not ready".
pub const RETRY_FOR: Duration = Duration::from_secs(2);

/// A process to look at.
#[derive(Debug)]
pub struct Request {
    /// Process id.
    pub pid: u32,
    /// Which process under that pid.
    pub identity: Identity,
    /// Its executable.
    pub exe: Arc<str>,
}

/// What a process turned out to run.
#[derive(Debug)]
pub struct Inspected {
    /// Process id.
    pub pid: u32,
    /// Which process under that pid.
    pub identity: Identity,
    /// The answer.
    pub detection: Detection,
}

/// The collector's handle on the inspector thread.
#[derive(Debug)]
pub struct Inspector {
    requests: mpsc::SyncSender<Request>,
    results: mpsc::Receiver<Inspected>,
}

/// A process whose runtime was not ready, to be looked at again.
struct Retry {
    request: Request,
    first: Instant,
    next: Instant,
}

impl Inspector {
    /// Starts the thread; `wake` is called after each answer, so that the collector takes it
    /// without waiting for its next input. The thread stops when the handle is dropped, after
    /// the inspection it is in.
    pub fn spawn(
        mut detector: Detector,
        wake: impl Fn() + Send + 'static,
    ) -> std::io::Result<Inspector> {
        Inspector::spawn_with(move |pid, exe| detector.detect(pid, exe), wake)
    }

    /// [`Inspector::spawn`] with another way to look at a process (tests).
    fn spawn_with(
        mut detect: impl FnMut(u32, &str) -> Detection + Send + 'static,
        wake: impl Fn() + Send + 'static,
    ) -> std::io::Result<Inspector> {
        let (requests, queue) = mpsc::sync_channel::<Request>(QUEUE);
        let (answers, results) = mpsc::channel();
        std::thread::Builder::new().name("inspector".into()).spawn(move || {
            let mut retries: Vec<Retry> = Vec::new();
            loop {
                let next = retries.iter().map(|r| r.next).min();
                let received = match next {
                    Some(at) => {
                        match queue.recv_timeout(at.saturating_duration_since(Instant::now())) {
                            Ok(request) => Some((request, Instant::now())),
                            Err(mpsc::RecvTimeoutError::Timeout) => None,
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    None => match queue.recv() {
                        Ok(request) => Some((request, Instant::now())),
                        Err(_) => break,
                    },
                };
                let mut due: Vec<(Request, Instant)> = received.into_iter().collect();
                let now = Instant::now();
                let (ready, waiting): (Vec<Retry>, Vec<Retry>) =
                    retries.drain(..).partition(|r| r.next <= now);
                retries = waiting;
                due.extend(ready.into_iter().map(|r| (r.request, r.first)));
                let mut answered = false;
                for (request, first) in due {
                    let started = Instant::now();
                    let detection = detect(request.pid, &request.exe);
                    debug!(
                        pid = request.pid,
                        took = ?started.elapsed(),
                        answer = detection.kind(),
                        "inspected"
                    );
                    if detection.may_change() && first.elapsed() < RETRY_FOR {
                        retries.push(Retry { request, first, next: Instant::now() + RETRY_EVERY });
                        continue;
                    }
                    let Request { pid, identity, .. } = request;
                    if answers.send(Inspected { pid, identity, detection }).is_err() {
                        return;
                    }
                    answered = true;
                }
                if answered {
                    wake();
                }
            }
        })?;
        Ok(Inspector { requests, results })
    }

    /// Queues a request without waiting; false when the queue is full.
    pub fn request(&self, request: Request) -> bool {
        self.requests.try_send(request).is_ok()
    }

    /// The answers that have arrived.
    pub fn answers(&self) -> impl Iterator<Item = Inspected> + '_ {
        self.results.try_iter()
    }

    /// Waits up to `timeout` for one answer (tests).
    #[cfg(test)]
    pub fn wait(&self, timeout: std::time::Duration) -> Option<Inspected> {
        self.results.recv_timeout(timeout).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use super::*;
    use crate::python::Unsupported;

    fn request(pid: u32) -> Request {
        Request { pid, identity: Identity::default(), exe: "/usr/bin/python3".into() }
    }

    #[test]
    fn a_runtime_that_is_not_ready_is_looked_at_again_without_being_asked() {
        // Process 1 becomes ready at its third look; process 2 answers at once.
        let looks = Arc::new(AtomicUsize::new(0));
        let wakes = Arc::new(AtomicUsize::new(0));
        let (l, w) = (looks.clone(), wakes.clone());
        let inspector = Inspector::spawn_with(
            move |pid, _| match pid {
                1 if l.fetch_add(1, Relaxed) < 2 => Detection::NotReady,
                _ => Detection::NotPython,
            },
            move || {
                w.fetch_add(1, Relaxed);
            },
        )
        .unwrap();
        assert!(inspector.request(request(1)));
        assert!(inspector.request(request(2)));
        let mut answered = Vec::new();
        for _ in 0..2 {
            let answer = inspector.wait(Duration::from_secs(10)).expect("an answer");
            assert!(matches!(answer.detection, Detection::NotPython), "pid {}", answer.pid);
            answered.push(answer.pid);
        }
        // The ready process was not held up by the other one's retries.
        assert_eq!(answered, [2, 1]);
        assert_eq!(looks.load(Relaxed), 3);
        assert!(inspector.wait(Duration::from_millis(100)).is_none(), "one answer each");
        assert_eq!(wakes.load(Relaxed), 2, "the collector is woken at each answer");
    }

    #[test]
    fn memory_that_cannot_be_read_yet_is_read_again() {
        let looks = Arc::new(AtomicUsize::new(0));
        let l = looks.clone();
        let inspector = Inspector::spawn_with(
            move |_, _| {
                if l.fetch_add(1, Relaxed) == 0 {
                    let source = std::io::Error::from_raw_os_error(libc::EFAULT);
                    Detection::Unsupported(Unsupported::Read { what: "_PyRuntime", source })
                } else {
                    Detection::NotPython
                }
            },
            || (),
        )
        .unwrap();
        assert!(inspector.request(request(1)));
        let answer = inspector.wait(Duration::from_secs(10)).expect("an answer");
        assert!(matches!(answer.detection, Detection::NotPython), "{:?}", answer.detection);
        assert_eq!(looks.load(Relaxed), 2);
    }

    #[test]
    fn a_runtime_that_stays_unready_is_answered_as_such_in_the_end() {
        let inspector = Inspector::spawn_with(|_, _| Detection::NotReady, || ()).unwrap();
        let asked = Instant::now();
        assert!(inspector.request(request(1)));
        let answer = inspector.wait(RETRY_FOR * 5).expect("an answer");
        assert!(matches!(answer.detection, Detection::NotReady));
        assert!(asked.elapsed() >= RETRY_FOR);
    }
}
