//! The caller of a function sampled before it set up a frame record.
//!
//! The frame-pointer walk starts at the frame record that the frame pointer register names:
//! the innermost function's that has set one up. A leaf that needs no stack has none (GCC
//! leaves it out even with `-fno-omit-frame-pointer`), and neither has any function sampled
//! before its prologue ran. Its return address is then still on the stack (x86_64) or in the
//! link register (aarch64), the walk starts at its caller's caller, and the caller is missing:
//! `main;leaf` instead of `main;dispatch;leaf`. perf's frame-pointer mode has the same gap.
//!
//! The kernel program keeps the first words at the stack pointer and the link register with
//! each sample of user code. The unwind rule of the sampled instruction, from its file's
//! `.eh_frame`, says whether the function's frame record is set up (the walk is right) or where
//! its return address is: that address is the missing caller.

use std::{num::NonZeroUsize, ops::Range, path::Path, sync::Arc};

use gimli::{
    AArch64, BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, Register, RegisterRule,
    UnwindContext, UnwindSection as _, X86_64,
};
use lru::LruCache;
use object::{Object as _, ObjectSection as _};
use profiler_common::sample::LEAF_WORDS;

use crate::{
    debuginfo::elf::Layout,
    host::{FileKey, readable_file},
    process::MappedFile,
};

/// Where the return address of the function at a sampled instruction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Its frame record is set up, so the walk found its caller; or nothing is known.
    Walk,
    /// In word `n` from the stack pointer.
    Stack(usize),
    /// In the link register.
    LinkRegister,
}

/// The instruction set whose registers the rules name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// x86_64: the return address is pushed by `call`; `rbp` is the frame pointer.
    X86_64,
    /// aarch64: the return address is in `x30` until saved; `x29` is the frame pointer.
    Aarch64,
}

impl Arch {
    /// The daemon's own.
    pub const HOST: Arch = if cfg!(target_arch = "aarch64") { Arch::Aarch64 } else { Arch::X86_64 };

    /// (stack pointer, frame pointer, return address) as DWARF numbers them.
    pub(crate) fn registers(self) -> (Register, Register, Register) {
        match self {
            Arch::X86_64 => (X86_64::RSP, X86_64::RBP, X86_64::RA),
            Arch::Aarch64 => (AArch64::SP, AArch64::X29, AArch64::X30),
        }
    }
}

/// The rule from a row of the unwind table: the canonical frame address (CFA) and the rule of
/// the return address.
fn classify(arch: Arch, cfa: &CfaRule<usize>, ra: &RegisterRule<usize>) -> Rule {
    let (sp, fp, _) = arch.registers();
    let CfaRule::RegisterAndOffset { register, offset } = *cfa else { return Rule::Walk };
    if register == fp || register != sp {
        return Rule::Walk;
    }
    match *ra {
        RegisterRule::Offset(at) => {
            let at = offset.saturating_add(at);
            match usize::try_from(at / 8) {
                Ok(n) if at % 8 == 0 && n < LEAF_WORDS => Rule::Stack(n),
                _ => Rule::Walk,
            }
        }
        // Not saved yet: still in the link register.
        RegisterRule::Undefined | RegisterRule::SameValue if arch == Arch::Aarch64 => {
            Rule::LinkRegister
        }
        _ => Rule::Walk,
    }
}

/// The `.eh_frame` (and its index) of one file, mapped.
struct UnwindInfo {
    map: memmap2::Mmap,
    layout: Layout,
    eh_frame: (Range<usize>, u64),
    hdr: Option<(Range<usize>, u64)>,
    text: u64,
}

impl UnwindInfo {
    /// Bytes of the file's mapping that reading rules touches: its unwind tables.
    fn table_bytes(&self) -> usize {
        self.eh_frame.0.len() + self.hdr.as_ref().map_or(0, |(range, _)| range.len())
    }

    fn read(path: &Path) -> Option<UnwindInfo> {
        let file = std::fs::File::open(path).ok()?;
        // SAFETY: read-only and private; a file replaced while mapped is replaced by rename.
        let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        let (layout, eh_frame, hdr, text) = {
            let elf = object::File::parse(&*map).ok()?;
            let section = |name: &str| {
                let s = elf.section_by_name(name)?;
                let (start, size) = s.file_range()?;
                let start = usize::try_from(start).ok()?;
                Some((start..start.checked_add(usize::try_from(size).ok()?)?, s.address()))
            };
            let eh_frame = section(".eh_frame")?;
            let text = elf.section_by_name(".text").map_or(0, |s| s.address());
            (Layout::parse(&map)?, eh_frame, section(".eh_frame_hdr"), text)
        };
        if map.get(eh_frame.0.clone()).is_none()
            || hdr.as_ref().is_some_and(|h| map.get(h.0.clone()).is_none())
        {
            return None;
        }
        Some(UnwindInfo { map, layout, eh_frame, hdr, text })
    }

    /// The rule at virtual address `pc`.
    fn rule(&self, arch: Arch, pc: u64) -> Option<Rule> {
        let eh = EhFrame::new(&self.map[self.eh_frame.0.clone()], LittleEndian);
        let mut bases = BaseAddresses::default().set_eh_frame(self.eh_frame.1).set_text(self.text);
        let fde = match &self.hdr {
            Some((range, address)) => {
                bases = bases.set_eh_frame_hdr(*address);
                let hdr = EhFrameHdr::new(&self.map[range.clone()], LittleEndian);
                let parsed = hdr.parse(&bases, 8).ok()?;
                match parsed.table() {
                    Some(table) => {
                        table.fde_for_address(&eh, &bases, pc, EhFrame::cie_from_offset).ok()?
                    }
                    None => eh.fde_for_address(&bases, pc, EhFrame::cie_from_offset).ok()?,
                }
            }
            None => eh.fde_for_address(&bases, pc, EhFrame::cie_from_offset).ok()?,
        };
        let mut ctx = Box::new(UnwindContext::new());
        let row = fde.unwind_info_for_address(&eh, &bases, &mut ctx, pc).ok()?;
        // A register without a rule of its own has the ABI's default: undefined.
        let ra = row.register(arch.registers().2).unwrap_or(RegisterRule::Undefined);
        Some(classify(arch, row.cfa(), &ra))
    }
}

/// Rules by file and offset, and the files' unwind tables, both bounded.
pub struct LeafRules {
    arch: Arch,
    files: LruCache<FileKey, Option<Arc<UnwindInfo>>>,
    rules: LruCache<(FileKey, u64), Rule>,
}

impl LeafRules {
    /// Drops `fraction` of the files and of the rules, the least recently used first.
    pub fn shed(&mut self, fraction: f64) -> usize {
        crate::caches::shed_lru(&mut self.files, fraction)
            + crate::caches::shed_lru(&mut self.rules, fraction)
    }

    /// Publishes its sizes to `caches`.
    pub fn publish(&self, caches: &crate::caches::Caches) {
        let tables: usize =
            self.files.iter().filter_map(|(_, info)| info.as_ref()).map(|i| i.table_bytes()).sum();
        caches.set(
            "leaf rule files",
            self.files.len(),
            self.files.cap().get(),
            crate::caches::table_bytes::<(FileKey, Option<Arc<UnwindInfo>>)>(self.files.len())
                + tables,
        );
        caches.set(
            "leaf rules",
            self.rules.len(),
            self.rules.cap().get(),
            crate::caches::table_bytes::<((FileKey, u64), Rule)>(self.rules.len()),
        );
    }
}

impl std::fmt::Debug for LeafRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafRules")
            .field("files", &self.files.len())
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// Files whose unwind tables stay mapped.
const FILES: NonZeroUsize = NonZeroUsize::new(256).unwrap();
/// Rules remembered.
const RULES: NonZeroUsize = NonZeroUsize::new(65_536).unwrap();

impl Default for LeafRules {
    fn default() -> Self {
        LeafRules::new(Arch::HOST)
    }
}

impl LeafRules {
    /// Empty, for files of `arch`.
    pub fn new(arch: Arch) -> LeafRules {
        LeafRules { arch, files: LruCache::new(FILES), rules: LruCache::new(RULES) }
    }

    /// The rule at `offset` of `file`, which process `pid` maps.
    pub fn rule(&mut self, pid: u32, file: &MappedFile, offset: u64) -> Rule {
        if let Some(rule) = self.rules.get(&(file.key, offset)) {
            return *rule;
        }
        let info = self
            .files
            .get_or_insert(file.key, || {
                let path = file
                    .held_path()
                    .or_else(|| readable_file(pid, Path::new(&*file.module.path), file.key))?;
                UnwindInfo::read(&path).map(Arc::new)
            })
            .clone();
        let rule = info
            .and_then(|info| info.rule(self.arch, info.layout.address(offset)?))
            .unwrap_or(Rule::Walk);
        self.rules.put((file.key, offset), rule);
        rule
    }
}

/// The return address that `rule` names, from a sample's leaf words; `None` when the walk has
/// the caller already or the words were not read.
pub fn caller(rule: Rule, stack: &[u64; LEAF_WORDS], lr: u64) -> Option<u64> {
    let addr = match rule {
        Rule::Walk => return None,
        Rule::Stack(n) => *stack.get(n)?,
        Rule::LinkRegister => lr,
    };
    (addr != 0).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_64_rules_follow_the_canonical_frame_address() {
        let rsp = |offset| CfaRule::RegisterAndOffset { register: X86_64::RSP, offset };
        let rbp = CfaRule::RegisterAndOffset { register: X86_64::RBP, offset: 16 };
        let ra = RegisterRule::Offset(-8);
        let a = Arch::X86_64;
        // At entry, and in a leaf that never moves the stack: the return address is at [sp].
        assert_eq!(classify(a, &rsp(8), &ra), Rule::Stack(0));
        // After `push rbp`, before `mov rbp, rsp`.
        assert_eq!(classify(a, &rsp(16), &ra), Rule::Stack(1));
        // The frame record is set up: the walk is right.
        assert_eq!(classify(a, &rbp, &ra), Rule::Walk);
        // Deeper than the words the kernel keeps, or nowhere known.
        assert_eq!(classify(a, &rsp(8 * (LEAF_WORDS as i64 + 1)), &ra), Rule::Walk);
        assert_eq!(classify(a, &rsp(8), &RegisterRule::Undefined), Rule::Walk);
    }

    #[test]
    fn aarch64_rules_find_the_link_register_until_it_is_saved() {
        let sp = |offset| CfaRule::RegisterAndOffset { register: AArch64::SP, offset };
        let x29 = CfaRule::RegisterAndOffset { register: AArch64::X29, offset: 16 };
        let a = Arch::Aarch64;
        assert_eq!(classify(a, &sp(0), &RegisterRule::Undefined), Rule::LinkRegister);
        assert_eq!(classify(a, &sp(0), &RegisterRule::SameValue), Rule::LinkRegister);
        // `stp x29, x30, [sp, #-16]!` ran: x30 is at CFA - 8 = [sp + 8].
        assert_eq!(classify(a, &sp(16), &RegisterRule::Offset(-8)), Rule::Stack(1));
        assert_eq!(classify(a, &x29, &RegisterRule::Offset(-8)), Rule::Walk);
    }

    #[test]
    fn the_caller_comes_from_the_word_or_register_the_rule_names() {
        let words = [0x10, 0x20, 0, 0x40];
        assert_eq!(caller(Rule::Stack(1), &words, 0x99), Some(0x20));
        assert_eq!(caller(Rule::Stack(2), &words, 0x99), None, "not read");
        assert_eq!(caller(Rule::LinkRegister, &words, 0x99), Some(0x99));
        assert_eq!(caller(Rule::Walk, &words, 0x99), None);
    }

    /// A frameless leaf called from a function with a frame record, built with frame pointers
    /// by `compiler`, and the rule at the leaf and at the first instruction of its caller.
    fn check_frameless_leaf(compiler: &str) {
        use object::ObjectSymbol as _;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("leaf.c");
        std::fs::write(
            &src,
            "__attribute__((noinline)) unsigned long leaf(unsigned long x) {\n\
               for (int i = 0; i < 64; i++) x = (x >> 1) ^ (-(x & 1) & 0xC96C5795D7870F42ul);\n\
               return x;\n\
             }\n\
             __attribute__((noinline)) unsigned long framed(unsigned long n) {\n\
               unsigned long x = n; for (unsigned long i = 0; i < n; i++) x = leaf(x + i);\n\
               return x;\n\
             }\n\
             int main(int argc, char **argv) { (void)argv; return (int)framed(argc); }\n",
        )
        .unwrap();
        let out = dir.path().join("leaf");
        let status = std::process::Command::new(compiler)
            .args(["-O2", "-fno-omit-frame-pointer"])
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "{compiler}");
        let data = std::fs::read(&out).unwrap();
        let elf = object::File::parse(&*data).unwrap();
        let address = |name: &str| elf.symbols().find(|s| s.name() == Ok(name)).unwrap().address();
        let info = UnwindInfo::read(&out).unwrap();
        let (arch, expected) = match elf.architecture() {
            object::Architecture::Aarch64 => (Arch::Aarch64, Rule::LinkRegister),
            _ => (Arch::X86_64, Rule::Stack(0)),
        };
        assert_eq!(info.rule(arch, address("leaf") + 4), Some(expected), "{compiler}");
        // At its first instruction a framed function has no record yet either.
        assert_eq!(info.rule(arch, address("framed")), Some(expected), "{compiler}");
        assert_eq!(info.rule(arch, u64::MAX - 16), None, "no unwind info there");
    }

    #[test]
    fn the_rule_of_a_frameless_leaf_comes_from_its_files_eh_frame() {
        check_frameless_leaf("cc");
        // arm64's rules from a real file where its compiler is installed (`make
        // cross-aarch64` installs it, before it runs these tests under qemu-aarch64).
        let cross = "aarch64-linux-gnu-gcc";
        if std::process::Command::new(cross).arg("--version").output().is_ok() {
            check_frameless_leaf(cross);
        } else {
            eprintln!("{cross} is not installed: only the host's rules were read from a file");
        }
    }
}
