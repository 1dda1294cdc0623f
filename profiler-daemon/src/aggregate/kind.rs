//! What a sample measures: its kind, the unit of its value, and the query modes that read
//! one or several kinds together.
//!
//! Every kind shares one record, window and store format (a count and a value per
//! (kind, labels, stack)), so each format, selector and exporter handles every kind.

use std::{fmt, str::FromStr};

use super::frame::Labels;

/// The `gil` label of a sample whose thread held the GIL.
pub const GIL_HELD: &str = "held";
/// The `gil` label of a sample whose Python thread did not hold the GIL.
pub const GIL_RELEASED: &str = "released";
/// The off-CPU reason of a thread waiting for the GIL.
pub const GIL_WAIT_REASON: &str = "gil";

/// What a sample measures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SampleKind {
    /// Time on a CPU, from the periodic perf-event sampler.
    #[default]
    Cpu,
    /// Time off the CPU (blocked or waiting to run), from the scheduler's switches.
    OffCpu,
    /// Memory a thread touched for the first time, from sampled page faults.
    Memory,
    /// A reading of a process's resident memory (see [`crate::resident`]): not a sample of
    /// an event, so it counts in no profile, only in memory timelines.
    Resident,
    /// The kernel killed the process for lack of memory (its count is the kills), shown in
    /// memory timelines.
    OomKill,
}

/// The unit of a sample's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds.
    Nanoseconds,
    /// Bytes.
    Bytes,
}

impl Unit {
    /// pprof's name of the unit.
    pub const fn name(self) -> &'static str {
        match self {
            Unit::Nanoseconds => "nanoseconds",
            Unit::Bytes => "bytes",
        }
    }
}

impl SampleKind {
    /// Every kind.
    pub const ALL: [SampleKind; 5] = [
        SampleKind::Cpu,
        SampleKind::OffCpu,
        SampleKind::Memory,
        SampleKind::Resident,
        SampleKind::OomKill,
    ];

    /// Stable code in the store.
    pub const fn code(self) -> u64 {
        match self {
            SampleKind::Cpu => 0,
            SampleKind::OffCpu => 1,
            SampleKind::Memory => 2,
            SampleKind::Resident => 3,
            SampleKind::OomKill => 4,
        }
    }

    /// The kind with store code `code`, if any.
    pub fn from_code(code: u64) -> Option<SampleKind> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The unit of the value.
    pub const fn unit(self) -> Unit {
        match self {
            SampleKind::Cpu | SampleKind::OffCpu => Unit::Nanoseconds,
            SampleKind::Memory | SampleKind::Resident | SampleKind::OomKill => Unit::Bytes,
        }
    }

    /// Whether it samples events (and so counts as a sample in a window's totals).
    pub const fn is_event(self) -> bool {
        !matches!(self, SampleKind::Resident | SampleKind::OomKill)
    }
}

/// Which kinds a query reads, and what its value means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// On-CPU time.
    #[default]
    Cpu,
    /// On-CPU plus off-CPU time: the elapsed time of each thread.
    Wall,
    /// Only the time off the CPU, by reason.
    OffCpu,
    /// Python's GIL: time on a CPU while holding it, plus time off the CPU waiting for it.
    Gil,
    /// Memory growth: the bytes each stack touched for the first time (page faults).
    Memory,
    /// Resident memory readings and OOM kills, for timelines (not a profile: not in
    /// [`Mode::ALL`]).
    Resident,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 5] = [Mode::Cpu, Mode::Wall, Mode::OffCpu, Mode::Gil, Mode::Memory];

    /// Whether samples of `kind` can count in this mode.
    pub const fn reads(self, kind: SampleKind) -> bool {
        matches!(
            (self, kind),
            (Mode::Cpu, SampleKind::Cpu)
                | (Mode::Wall | Mode::Gil, SampleKind::Cpu | SampleKind::OffCpu)
                | (Mode::OffCpu, SampleKind::OffCpu)
                | (Mode::Memory, SampleKind::Memory)
                | (Mode::Resident, SampleKind::Resident | SampleKind::OomKill)
        )
    }

    /// Whether samples of `kind` with `labels` count in this mode: in the GIL mode, CPU time
    /// while holding the GIL and time off the CPU waiting for it.
    pub fn keeps(self, kind: SampleKind, labels: &Labels) -> bool {
        match self {
            Mode::Gil => match kind {
                SampleKind::Cpu => &*labels.gil == GIL_HELD,
                SampleKind::OffCpu => &*labels.reason == GIL_WAIT_REASON,
                SampleKind::Memory | SampleKind::Resident | SampleKind::OomKill => false,
            },
            _ => self.reads(kind),
        }
    }

    /// Whether this mode counts time off the CPU, and so has idle threads to leave out.
    pub const fn has_idle(self) -> bool {
        self.reads(SampleKind::OffCpu)
    }

    /// The name on the command line and in the API.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Cpu => "cpu",
            Mode::Wall => "wall",
            Mode::OffCpu => "off-cpu",
            Mode::Gil => "gil",
            Mode::Memory => "memory",
            Mode::Resident => "resident",
        }
    }

    /// The pprof sample type of the value.
    pub const fn value_type(self) -> &'static str {
        match self {
            Mode::Cpu => "cpu",
            Mode::Wall => "wall",
            Mode::OffCpu => "off_cpu",
            Mode::Gil => "gil",
            Mode::Memory => "memory",
            Mode::Resident => "resident",
        }
    }

    /// The unit of the value.
    pub const fn unit(self) -> Unit {
        match self {
            Mode::Memory | Mode::Resident => Unit::Bytes,
            _ => Unit::Nanoseconds,
        }
    }

    /// The mode whose pprof sample type is `value_type`.
    pub fn from_value_type(value_type: &str) -> Option<Mode> {
        Self::ALL.into_iter().find(|m| m.value_type() == value_type)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A mode name that is not one of [`Mode::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown mode {0:?}: expected cpu, wall, off-cpu, gil or memory")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Mode, UnknownMode> {
        Self::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| UnknownMode(s.to_owned()))
    }
}

/// A count of samples and the sum of their values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tally {
    /// Samples (for off-CPU time, blocks captured).
    pub count: u64,
    /// Their values, in the kind's unit.
    pub value: u64,
}

impl Tally {
    /// One sample worth `value`.
    pub const fn one(value: u64) -> Tally {
        Tally { count: 1, value }
    }

    /// Adds `other`, saturating (a damaged record can hold any numbers).
    pub fn add(&mut self, other: Tally) {
        self.count = self.count.saturating_add(other.count);
        self.value = self.value.saturating_add(other.value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_their_kinds() {
        assert!(Mode::Cpu.reads(SampleKind::Cpu) && !Mode::Cpu.reads(SampleKind::OffCpu));
        assert!(Mode::Wall.reads(SampleKind::Cpu) && Mode::Wall.reads(SampleKind::OffCpu));
        assert!(!Mode::OffCpu.reads(SampleKind::Cpu) && Mode::OffCpu.reads(SampleKind::OffCpu));
        // Memory is bytes, never mixed with time; resident readings are in no profile.
        for kind in SampleKind::ALL {
            assert_eq!(Mode::Memory.reads(kind), kind == SampleKind::Memory);
            assert_eq!(
                kind.unit() == Unit::Bytes,
                !Mode::Wall.reads(kind) && !Mode::Cpu.reads(kind) && kind != SampleKind::OffCpu
            );
            if !kind.is_event() {
                assert!(Mode::ALL.iter().all(|m| !m.reads(kind)), "{kind:?} is in a profile");
            }
            assert_eq!(Mode::Resident.reads(kind), !kind.is_event());
        }
        assert_eq!((Mode::Memory.unit(), SampleKind::Memory.unit()), (Unit::Bytes, Unit::Bytes));
    }

    #[test]
    fn names_and_codes_round_trip() {
        for mode in Mode::ALL {
            assert_eq!(mode.name().parse::<Mode>().unwrap(), mode);
            assert_eq!(Mode::from_value_type(mode.value_type()), Some(mode));
        }
        for kind in SampleKind::ALL {
            assert_eq!(SampleKind::from_code(kind.code()), Some(kind));
        }
        assert!("gpu".parse::<Mode>().is_err());
        assert_eq!(SampleKind::from_code(99), None);
    }
}
