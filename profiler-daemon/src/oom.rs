//! OOM kills: the kernel's `mark_victim` records (see the `oom` kernel program) become a
//! sample of kind [`SampleKind::OomKill`] under the victim's labels, so that the kill is stored
//! with the victim's memory timeline and growth profile, and the most recent kills are kept
//! for `Status`.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

use crate::aggregate::{Frame, Labels, SampleKind, StackSample};

/// The stack of an OOM kill.
pub const OOM_KILL_FRAME: &str = "[OOM kill]";
/// Kills `Status` lists.
pub const RECENT_KILLS: usize = 16;

/// One kill, for `Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kill {
    /// When (Unix nanoseconds).
    pub time_ns: i64,
    /// The victim's labels.
    pub labels: Arc<Labels>,
    /// Its resident memory at the kill, in bytes (0 where the kernel does not say).
    pub rss_bytes: u64,
}

/// The most recent kills, shared by the collector (which records them) and `Status`.
#[derive(Debug, Default)]
pub struct KillLog {
    recent: Mutex<VecDeque<Kill>>,
}

impl KillLog {
    /// Keeps a kill, forgetting the oldest beyond [`RECENT_KILLS`].
    pub fn record(&self, labels: &Arc<Labels>, time_ns: i64, rss_bytes: u64) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == RECENT_KILLS {
            recent.pop_front();
        }
        recent.push_back(Kill { time_ns, labels: labels.clone(), rss_bytes });
    }

    /// The kept kills, oldest first.
    pub fn recent(&self) -> Vec<Kill> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }
}

/// The sample of a kill of the process with `labels` (thread `tid`).
pub fn sample(labels: Arc<Labels>, tid: u32, time_ns: i64) -> StackSample {
    StackSample {
        time_ns,
        labels,
        stack: vec![Arc::new(Frame::marker(OOM_KILL_FRAME))].into(),
        kind: SampleKind::OomKill,
        value: 0,
        tid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_most_recent_kills() {
        let log = KillLog::default();
        for pid in 0..RECENT_KILLS as u32 + 3 {
            let labels = Arc::new(Labels { pid, ..Labels::default() });
            log.record(&labels, i64::from(pid), 0);
        }
        let recent = log.recent();
        assert_eq!(recent.len(), RECENT_KILLS);
        assert_eq!((recent[0].labels.pid, recent.last().unwrap().time_ns), (3, 18));
    }
}
