//! Page faults that map a huge page.
//!
//! The page-fault event counts faults, and a memory sample stands for its period's faults
//! times the page size. A fault in a region backed by transparent huge pages (`madvise`d, or
//! every anonymous region with THP set to `always`), or in a file mapped with huge pages, maps
//! a whole huge page (2 MiB on x86_64) at once: counted as one page, such growth was 512 times
//! too small. The kernel program records each sampled fault's address; by the time the
//! collector handles the record the fault has been served, and the process's page tables say
//! what it mapped: the `PAGEMAP_SCAN` ioctl of `/proc/PID/pagemap` (Linux 6.7) tells whether a
//! present huge page, not the shared huge zero page, maps that address now. If one does, the
//! sample stands for its period's faults times the huge page size: each fault of a period
//! being equally likely to be the sampled one, the estimate stays unbiased, and coarser (one
//! sample of the default period of 64 stands for 128 MiB).
//!
//! What it cannot tell: a fault on a huge page that was mapped already (a write to memory
//! shared with a parent since `fork`) counts as a new huge page, and huge pages of other
//! sizes than the page middle directory's (multi-size THP, "mTHP") count as single pages.

use std::{collections::HashMap, fs::File, os::fd::AsRawFd as _};

use tracing::info;

use crate::process::Identity;

/// `PAGE_IS_PRESENT` of the pagemap scan's categories.
const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PAGE_IS_PFNZERO`: the zero page (here, the huge zero page a read fault maps).
const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// `PAGE_IS_HUGE`: mapped by a transparent huge page or a hugetlb page.
const PAGE_IS_HUGE: u64 = 1 << 6;

/// `struct pm_scan_arg` of the `PAGEMAP_SCAN` ioctl.
#[repr(C)]
#[derive(Debug, Default)]
struct ScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`: one run of pages that matched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 =
    (3 << 30) | ((size_of::<ScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

/// Whether the kernel answers the pagemap scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Support {
    Unknown,
    Yes,
    No,
}

/// Open pagemaps kept at most; more are closed all at once (they reopen at their next fault).
const MAX_OPEN: usize = 1024;

/// Tells the bytes a sampled page fault mapped.
#[derive(Debug)]
pub struct HugePages {
    /// The huge page size (`hpage_pmd_size`).
    huge_bytes: u64,
    /// The base page size.
    page_bytes: u64,
    support: Support,
    /// `/proc/PID/pagemap` of each process that faulted, by pid, with the process it belongs to
    /// (`None` when it could not be opened).
    pagemaps: HashMap<u32, (Identity, Option<File>)>,
    /// Sampled faults found to have mapped a huge page.
    huge_faults: u64,
}

impl HugePages {
    /// `None` when the kernel has no transparent huge pages (`hpage_pmd_size` is missing).
    pub fn new() -> Option<HugePages> {
        let size =
            std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size").ok()?;
        Some(HugePages::with_size(size.trim().parse().ok()?, crate::loader::page_size()))
    }

    fn with_size(huge_bytes: u64, page_bytes: u64) -> HugePages {
        HugePages {
            huge_bytes,
            page_bytes,
            support: Support::Unknown,
            pagemaps: HashMap::new(),
            huge_faults: 0,
        }
    }

    /// The bytes that a memory sample of process `pid` (`identity`) at `addr`, weighted
    /// `period_bytes` (its period's faults times the page size), stands for.
    pub fn fault_bytes(
        &mut self,
        pid: u32,
        identity: Identity,
        addr: u64,
        period_bytes: u64,
    ) -> u64 {
        self.fault_bytes_if_mapped(pid, identity, addr, period_bytes).unwrap_or(period_bytes)
    }

    /// As [`HugePages::fault_bytes`], or `None` while nothing maps `addr` yet: the sample is
    /// taken as the fault begins, and the fault may still be allocating (and zeroing) its huge
    /// page when the sample is read.
    pub fn fault_bytes_if_mapped(
        &mut self,
        pid: u32,
        identity: Identity,
        addr: u64,
        period_bytes: u64,
    ) -> Option<u64> {
        if self.support == Support::No || addr == 0 || self.huge_bytes <= self.page_bytes {
            return Some(period_bytes);
        }
        if !self.is_huge(pid, identity, addr)? {
            return Some(period_bytes);
        }
        self.huge_faults += 1;
        Some((period_bytes / self.page_bytes).saturating_mul(self.huge_bytes))
    }

    /// Sampled faults found to have mapped a huge page, since the start.
    #[cfg(test)]
    fn huge_faults(&self) -> u64 {
        self.huge_faults
    }

    /// Whether a huge page maps `addr`; `None` when nothing maps it yet.
    fn is_huge(&mut self, pid: u32, identity: Identity, addr: u64) -> Option<bool> {
        if self.pagemaps.get(&pid).is_none_or(|(known, _)| *known != identity) {
            if self.pagemaps.len() >= MAX_OPEN {
                self.pagemaps.clear();
            }
            let file = File::open(format!("/proc/{pid}/pagemap")).ok();
            self.pagemaps.insert(pid, (identity, file));
        }
        let Some((_, Some(file))) = self.pagemaps.get(&pid) else { return Some(false) };
        let start = addr & !(self.page_bytes - 1);
        match scan(file, start, start + self.page_bytes) {
            Ok(mapped) => {
                self.support = Support::Yes;
                mapped
            }
            Err(e) => {
                let unsupported = matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL));
                if unsupported && self.support == Support::Unknown {
                    info!(
                        error = %e,
                        "this kernel has no PAGEMAP_SCAN (Linux 6.7): a page fault that maps a \
                         huge page counts as one page"
                    );
                    self.support = Support::No;
                }
                // The process is gone, or its memory no longer answers.
                self.pagemaps.remove(&pid);
                Some(false)
            }
        }
    }
}

/// Whether a huge page maps `[start, end)` of the process whose pagemap `file` is, when a
/// present page other than the (huge) zero page maps it; `None` when none does.
fn scan(file: &File, start: u64, end: u64) -> std::io::Result<Option<bool>> {
    let mut found = [PageRegion::default()];
    let mut arg = ScanArg {
        size: size_of::<ScanArg>() as u64,
        start,
        end,
        vec: found.as_mut_ptr() as u64,
        vec_len: found.len() as u64,
        // Every one of these must match, the zero page inverted: present, not zero.
        category_mask: PAGE_IS_PRESENT | PAGE_IS_PFNZERO,
        category_inverted: PAGE_IS_PFNZERO,
        return_mask: PAGE_IS_HUGE,
        ..ScanArg::default()
    };
    // SAFETY: `arg` is a valid `pm_scan_arg` whose `vec` points at `vec_len` writable regions,
    // both alive for the call.
    let matched = unsafe { libc::ioctl(file.as_raw_fd(), PAGEMAP_SCAN as _, &raw mut arg) };
    if matched < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((matched > 0).then(|| found[0].categories & PAGE_IS_HUGE != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2 MiB-aligned anonymous region of `huge` huge pages in this process, with
    /// `MADV_HUGEPAGE` or `MADV_NOHUGEPAGE`, each page touched.
    struct Region {
        base: *mut u8,
        len: usize,
    }

    impl Region {
        fn new(huge_bytes: usize, huge: usize, advice: libc::c_int) -> Region {
            let len = huge_bytes * (huge + 1);
            // SAFETY: an anonymous private mapping; checked below.
            let raw = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(raw, libc::MAP_FAILED);
            let base = (raw as usize).next_multiple_of(huge_bytes) as *mut u8;
            let used = huge_bytes * huge;
            // SAFETY: `[base, base + used)` lies inside the mapping.
            unsafe {
                assert_eq!(libc::madvise(base.cast(), used, advice), 0);
                for at in (0..used).step_by(4096) {
                    base.add(at).write_volatile(1);
                }
            }
            Region { base: raw.cast(), len }
        }
    }

    impl Drop for Region {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`.
            unsafe { libc::munmap(self.base.cast(), self.len) };
        }
    }

    #[test]
    fn a_fault_in_a_huge_page_stands_for_the_huge_page() {
        if crate::host::skip_under_qemu_user(
            "a_fault_in_a_huge_page_stands_for_the_huge_page",
            "qemu-user does not pass PAGEMAP_SCAN on",
        ) {
            return;
        }
        let mut pages = HugePages::new().expect("a kernel with transparent huge pages");
        let huge = pages.huge_bytes as usize;
        let pid = std::process::id();
        let me = Identity::default();
        let period = 64 * pages.page_bytes;

        let advised = Region::new(huge, 2, libc::MADV_HUGEPAGE);
        let aligned = (advised.base as u64).next_multiple_of(huge as u64) + 12_345;
        let smaps = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
        let anon_huge_kib: u64 = smaps
            .lines()
            .find_map(|l| l.strip_prefix("AnonHugePages:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        assert!(
            anon_huge_kib > 0,
            "this test needs transparent huge pages for madvised memory:\n{smaps}"
        );
        assert_eq!(pages.fault_bytes(pid, me, aligned, period), 64 * huge as u64);
        assert_eq!(pages.huge_faults(), 1);

        let small = Region::new(huge, 1, libc::MADV_NOHUGEPAGE);
        let small_at = (small.base as u64).next_multiple_of(huge as u64) + 4096;
        assert_eq!(pages.fault_bytes(pid, me, small_at, period), period);
        // No address (an old kernel program) and an unmapped one: the period's pages.
        assert_eq!(pages.fault_bytes(pid, me, 0, period), period);
        drop(small);
        assert_eq!(pages.fault_bytes(pid, me, small_at, period), period);
        drop(advised);
    }

    #[test]
    fn a_process_that_is_gone_counts_its_pages() {
        let mut pages = HugePages::with_size(2 << 20, 4096);
        assert_eq!(pages.fault_bytes(u32::MAX - 1, Identity::default(), 0x7f00_0000, 4096), 4096);
        assert_eq!(pages.huge_faults(), 0);
    }
}
