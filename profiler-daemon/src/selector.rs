//! Label selectors: which samples a query or a watch keeps.
//!
//! The text syntax is a comma-separated list of `key=value` terms, all of which must hold, for
//! example `comm=python3,pid=4242`. Keys: `pid`, `tid`, `comm`, `thread`, `exe`, `cgroup`,
//! `container` and `runtime` (both match a prefix, so a short container id or `CPython 3.11`
//! works), `container_name`, `pod_uid`, and `pod` and `namespace` (names from the Kubernetes
//! API), and `reason` (why an off-CPU sample's thread was off the CPU: `runnable`, `sleep`,
//! `lock`, `io`, `wait`, `gil`), and `gil` (`held` or `released`, for Python threads).

use std::{fmt, str::FromStr};

use profiler_proto::v1;
use thiserror::Error;

use crate::aggregate::{Labels, window::LabelFilter};

/// A label that a selector can test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelKey {
    /// Process id.
    Pid,
    /// Thread id.
    Tid,
    /// Process name.
    Comm,
    /// Thread name.
    Thread,
    /// Executable path.
    Exe,
    /// cgroup path.
    Cgroup,
    /// Container id (a prefix is enough).
    Container,
    /// Container name (from the Kubernetes API).
    ContainerName,
    /// Kubernetes pod UID.
    PodUid,
    /// Kubernetes pod name.
    Pod,
    /// Kubernetes namespace.
    Namespace,
    /// Runtime, for example `CPython 3.11.2` (a prefix is enough).
    Runtime,
    /// Why an off-CPU sample's thread was off the CPU.
    Reason,
    /// Whether a Python thread held the GIL (`held` or `released`).
    Gil,
}

impl LabelKey {
    /// Every key, in documentation order.
    pub const ALL: [LabelKey; 14] = [
        LabelKey::Pid,
        LabelKey::Tid,
        LabelKey::Comm,
        LabelKey::Thread,
        LabelKey::Exe,
        LabelKey::Cgroup,
        LabelKey::Container,
        LabelKey::ContainerName,
        LabelKey::PodUid,
        LabelKey::Pod,
        LabelKey::Namespace,
        LabelKey::Runtime,
        LabelKey::Reason,
        LabelKey::Gil,
    ];

    /// The key as written in selectors and pprof labels.
    pub const fn name(self) -> &'static str {
        match self {
            LabelKey::Pid => "pid",
            LabelKey::Tid => "tid",
            LabelKey::Comm => "comm",
            LabelKey::Thread => "thread",
            LabelKey::Exe => "exe",
            LabelKey::Cgroup => "cgroup",
            LabelKey::Container => "container",
            LabelKey::ContainerName => "container_name",
            LabelKey::PodUid => "pod_uid",
            LabelKey::Pod => "pod",
            LabelKey::Namespace => "namespace",
            LabelKey::Runtime => "runtime",
            LabelKey::Reason => "reason",
            LabelKey::Gil => "gil",
        }
    }

    fn is_numeric(self) -> bool {
        matches!(self, LabelKey::Pid | LabelKey::Tid)
    }
}

impl FromStr for LabelKey {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelKey::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| SelectorError::UnknownKey(s.to_owned()))
    }
}

/// A selector that could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SelectorError {
    /// A term without `=`.
    #[error("selector term {0:?} is not of the form key=value (for example comm=python3)")]
    NotKeyValue(String),
    /// A key this profiler does not know.
    #[error(
        "unknown selector key {0:?}; known keys: pid, tid, comm, thread, exe, cgroup, container, \
         container_name, pod_uid, pod, namespace, runtime, reason, gil"
    )]
    UnknownKey(String),
    /// A numeric key with a non-numeric value.
    #[error("selector key {key} needs a number, got {value:?}")]
    NotANumber {
        /// The key.
        key: &'static str,
        /// The offending value.
        value: String,
    },
    /// More conditions than any real selector needs; each one costs every sample it is tested
    /// against.
    #[error("a selector has at most {MAX_MATCHERS} conditions, this one has {0}")]
    TooManyConditions(usize),
}

/// Conditions in one selector, at most. There are twelve keys, all conditions must hold, and a
/// key repeated with two values matches nothing, so this is generous.
pub const MAX_MATCHERS: usize = 64;

/// One `key=value` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    key: LabelKey,
    value: String,
    number: u32,
}

impl Matcher {
    /// A condition on `key`, validated.
    pub fn new(key: LabelKey, value: &str) -> Result<Matcher, SelectorError> {
        let number = if key.is_numeric() {
            value.parse().map_err(|_| SelectorError::NotANumber {
                key: key.name(),
                value: value.to_owned(),
            })?
        } else {
            0
        };
        Ok(Matcher { key, value: value.to_owned(), number })
    }

    fn matches(&self, labels: &Labels) -> bool {
        match self.key {
            LabelKey::Pid => labels.pid == self.number,
            LabelKey::Tid => labels.tid == self.number,
            LabelKey::Comm => *labels.comm == *self.value,
            LabelKey::Thread => *labels.thread == *self.value,
            LabelKey::Exe => *labels.exe == *self.value,
            LabelKey::Cgroup => *labels.cgroup == *self.value,
            LabelKey::Container => {
                !self.value.is_empty() && labels.container.starts_with(&*self.value)
            }
            LabelKey::ContainerName => *labels.container_name == *self.value,
            LabelKey::PodUid => *labels.pod_uid == *self.value,
            LabelKey::Pod => *labels.pod == *self.value,
            LabelKey::Namespace => *labels.namespace == *self.value,
            LabelKey::Runtime => !self.value.is_empty() && labels.runtime.starts_with(&*self.value),
            LabelKey::Reason => *labels.reason == *self.value,
            LabelKey::Gil => *labels.gil == *self.value,
        }
    }
}

/// A conjunction of matchers; the empty selector keeps everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    matchers: Vec<Matcher>,
}

impl LabelFilter for Selector {
    fn keeps(&self, labels: &Labels) -> bool {
        self.matches(labels)
    }
}

impl Selector {
    /// Whether a sample with these labels is kept.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matchers.iter().all(|m| m.matches(labels))
    }

    /// Adds a condition.
    pub fn push(&mut self, matcher: Matcher) {
        self.matchers.push(matcher);
    }

    /// Whether this selector keeps everything.
    pub fn is_empty(&self) -> bool {
        self.matchers.is_empty()
    }

    /// The wire form.
    pub fn to_proto(&self) -> v1::Filter {
        v1::Filter {
            matchers: self
                .matchers
                .iter()
                .map(|m| v1::LabelMatcher { key: m.key.name().to_owned(), value: m.value.clone() })
                .collect(),
        }
    }

    /// Parses the wire form.
    pub fn from_proto(filter: &v1::Filter) -> Result<Selector, SelectorError> {
        if filter.matchers.len() > MAX_MATCHERS {
            return Err(SelectorError::TooManyConditions(filter.matchers.len()));
        }
        let mut selector = Selector::default();
        for m in &filter.matchers {
            selector.push(Matcher::new(m.key.parse()?, &m.value)?);
        }
        Ok(selector)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut selector = Selector::default();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (key, value) =
                term.split_once('=').ok_or_else(|| SelectorError::NotKeyValue(term.to_owned()))?;
            selector.push(Matcher::new(key.trim().parse()?, value.trim())?);
            if selector.matchers.len() > MAX_MATCHERS {
                return Err(SelectorError::TooManyConditions(selector.matchers.len()));
            }
        }
        Ok(selector)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.matchers.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}={}", m.key.name(), m.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_with_thousands_of_conditions_is_refused() {
        let filter = v1::Filter {
            matchers: (0..10_000)
                .map(|i| v1::LabelMatcher { key: "pid".into(), value: i.to_string() })
                .collect(),
        };
        let err = Selector::from_proto(&filter).unwrap_err();
        assert!(matches!(err, SelectorError::TooManyConditions(10_000)), "{err}");
        let text = vec!["comm=x"; MAX_MATCHERS + 1].join(",");
        assert!(text.parse::<Selector>().is_err());
        assert!(vec!["comm=x"; MAX_MATCHERS].join(",").parse::<Selector>().is_ok());
    }

    fn labels(pid: u32, comm: &str) -> Labels {
        Labels { pid, comm: comm.into(), ..Labels::default() }
    }

    #[test]
    fn pods_are_selected_by_name_and_namespace() {
        let s: Selector = "pod=web-0,namespace=shop".parse().unwrap();
        let web = Labels { pod: "web-0".into(), namespace: "shop".into(), ..labels(1, "python3") };
        assert!(s.matches(&web));
        assert!(!s.matches(&Labels { namespace: "dev".into(), ..web.clone() }));
        assert!(!s.matches(&labels(1, "python3")));
        let s: Selector = "container_name=app".parse().unwrap();
        assert!(s.matches(&Labels { container_name: "app".into(), ..web }));
    }

    #[test]
    fn all_terms_must_hold() {
        let s: Selector = "comm=python3, pid=42".parse().unwrap();
        assert!(s.matches(&labels(42, "python3")));
        assert!(!s.matches(&labels(43, "python3")));
        assert!(!s.matches(&labels(42, "bash")));
        assert!(Selector::default().matches(&labels(1, "init")));
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        assert_eq!("comm".parse::<Selector>(), Err(SelectorError::NotKeyValue("comm".into())));
        assert_eq!(
            "podname=x".parse::<Selector>(),
            Err(SelectorError::UnknownKey("podname".into()))
        );
        let err = "pid=abc".parse::<Selector>().unwrap_err();
        assert_eq!(err.to_string(), "selector key pid needs a number, got \"abc\"");
    }

    #[test]
    fn round_trips_through_the_wire_form() {
        let s: Selector = "exe=/usr/bin/python3.11,tid=7".parse().unwrap();
        assert_eq!(Selector::from_proto(&s.to_proto()).unwrap(), s);
        assert_eq!(s.to_string(), "exe=/usr/bin/python3.11,tid=7");
    }
}
