//! Struct member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The kernel programs read a few `task_struct` members by offset: where the user thread
//! pointer lives (`thread.fsbase` on x86_64, `thread.uw.tp_value` on aarch64), to match
//! CPython 3.9/3.10 thread states, which only record `pthread_self()`; the process identity;
//! and the thread id, flags and state of the tasks a context switch exchanges. The off-CPU
//! program also needs to know how many arguments the `sched_switch` tracepoint passes. This
//! reader parses just enough of the BTF format (types and strings) to resolve a member path
//! and count a function type's parameters.

use std::collections::HashMap;

use thiserror::Error;

const MAGIC: u16 = 0xeb9f;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// Why an offset could not be found.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum BtfError {
    /// The data is not BTF or is cut short.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// A struct or member does not exist.
    #[error("BTF has no {0}")]
    Missing(String),
}

struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

struct Type {
    name: u32,
    kind: u32,
    /// The referenced type, for typedefs, pointers and qualifiers.
    referenced: u32,
    /// Number of members, enumerators or parameters.
    vlen: u32,
    members: Vec<Member>,
}

/// Parsed BTF types.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<String, u32>,
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Btf({} types)", self.types.len())
    }
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys() -> Result<Btf, BtfError> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux")
            .map_err(|_| BtfError::Missing("/sys/kernel/btf/vmlinux".into()))?;
        Btf::parse(&data)
    }

    /// Parses little-endian BTF data.
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types_data = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section"))?
            .to_vec();
        // Type id 0 is void.
        let mut types =
            vec![Type { name: 0, kind: 0, referenced: 0, vlen: 0, members: Vec::new() }];
        let mut at = 0;
        while at < types_data.len() {
            let name = u32_at(types_data, at)?;
            let info = u32_at(types_data, at + 4)?;
            let size_or_type = u32_at(types_data, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4, // int, var, decl_tag
                3 => 12,          // array
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + 12 * i;
                        let offset = u32_at(types_data, m + 8)?;
                        members.push(Member {
                            name: u32_at(types_data, m)?,
                            type_id: u32_at(types_data, m + 4)?,
                            bit_offset: if kind_flag { offset & 0x00ff_ffff } else { offset },
                        });
                    }
                    12 * vlen
                }
                6 | 13 => 8 * vlen,   // enum, func_proto
                15 | 19 => 12 * vlen, // datasec, enum64
                _ => 0,
            };
            at += extra;
            types.push(Type { name, kind, referenced: size_or_type, vlen: vlen as u32, members });
        }
        let mut btf = Btf { types, strings, by_name: HashMap::new() };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name != 0 {
                let name = btf.string(t.name).to_owned();
                btf.by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.referenced;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `path` (for example `thread.fsbase`) inside struct `structure`.
    /// Anonymous members are searched through.
    pub fn member_offset(&self, structure: &str, path: &str) -> Result<u32, BtfError> {
        let id = *self
            .by_name
            .get(structure)
            .ok_or_else(|| BtfError::Missing(format!("struct {structure}")))?;
        let mut ty = &self.types[id as usize];
        let mut bits = 0u32;
        for part in path.split('.') {
            let (offset, member_type) = self
                .find_member(ty, part)
                .ok_or_else(|| BtfError::Missing(format!("member {part} of {structure}.{path}")))?;
            bits += offset;
            ty = self.resolve(member_type).ok_or(BtfError::Malformed("dangling type"))?;
        }
        Ok(bits / 8)
    }

    /// Where a process's resident page counts lie: (offset of `mm` in `task_struct`, offset of
    /// the first counter in `mm_struct`, bytes between counters). The counters are indexed
    /// file, anonymous, swap, shared memory; they are `atomic_long_t`s in `mm_rss_stat` before
    /// Linux 6.2 and the `count` of a `percpu_counter` each since.
    pub fn rss_counters(&self) -> Result<(u32, u32, u32), BtfError> {
        let mm = self.member_offset("task_struct", "mm")?;
        let rss = self.member_offset("mm_struct", "rss_stat")?;
        if let Ok(count) = self.member_offset("mm_rss_stat", "count") {
            return Ok((mm, rss + count, 8));
        }
        let count = self.member_offset("percpu_counter", "count")?;
        Ok((mm, rss + count, self.struct_size("percpu_counter")?))
    }

    /// Size in bytes of struct `structure`.
    pub fn struct_size(&self, structure: &str) -> Result<u32, BtfError> {
        let id = *self
            .by_name
            .get(structure)
            .ok_or_else(|| BtfError::Missing(format!("struct {structure}")))?;
        Ok(self.types[id as usize].referenced)
    }

    /// Number of parameters of the function that `typedef` points to, for example
    /// `btf_trace_sched_switch`, the type the kernel gives a tracepoint's BPF programs (its
    /// first parameter is the tracepoint's private data, then come the tracepoint's
    /// arguments).
    pub fn function_pointer_params(&self, typedef: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("typedef {typedef}"));
        let t = self
            .types
            .iter()
            .find(|t| t.kind == KIND_TYPEDEF && self.string(t.name) == typedef)
            .ok_or_else(missing)?;
        let pointer =
            self.resolve(t.referenced).filter(|t| t.kind == KIND_PTR).ok_or_else(missing)?;
        let function = self
            .resolve(pointer.referenced)
            .filter(|t| t.kind == KIND_FUNC_PROTO)
            .ok_or_else(missing)?;
        Ok(function.vlen)
    }

    fn find_member(&self, ty: &Type, name: &str) -> Option<(u32, u32)> {
        for m in &ty.members {
            if self.string(m.name) == name {
                return Some((m.bit_offset, m.type_id));
            }
            if m.name == 0 {
                let inner = self.resolve(m.type_id)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some((offset, t)) = self.find_member(inner, name)
                {
                    return Some((m.bit_offset + offset, t));
                }
            }
        }
        None
    }
}

/// The `task_struct` member holding the user thread pointer on this architecture.
pub const THREAD_POINTER_PATH: &str =
    if cfg!(target_arch = "aarch64") { "thread.uw.tp_value" } else { "thread.fsbase" };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::skip_under_qemu_user;

    #[test]
    fn finds_the_thread_pointer_in_the_running_kernel() {
        let Ok(btf) = Btf::from_sys() else {
            eprintln!("skipped: no kernel BTF");
            return;
        };
        let thread = btf.member_offset("task_struct", "thread").unwrap();
        if !skip_under_qemu_user(
            "finds_the_thread_pointer_in_the_running_kernel (its THREAD_POINTER_PATH part)",
            &format!("the running kernel is the host's, not {}", std::env::consts::ARCH),
        ) {
            let pointer = btf.member_offset("task_struct", THREAD_POINTER_PATH).unwrap();
            assert!(thread > 0 && pointer >= thread, "thread at {thread}, pointer at {pointer}");
        }
        // A member of a struct inside an anonymous union or struct is found too.
        assert!(btf.member_offset("task_struct", "pid").unwrap() > 0);
        assert!(matches!(
            btf.member_offset("task_struct", "no_such_member"),
            Err(BtfError::Missing(_))
        ));
        assert!(matches!(btf.member_offset("no_such_struct", "x"), Err(BtfError::Missing(_))));
    }

    #[test]
    fn counts_the_arguments_of_the_running_kernels_sched_switch() {
        let Ok(btf) = Btf::from_sys() else {
            eprintln!("skipped: no kernel BTF");
            return;
        };
        // (data, preempt, prev, next), and prev_state since Linux 5.18.
        let params = btf.function_pointer_params("btf_trace_sched_switch").unwrap();
        assert!(params == 4 || params == 5, "{params} parameters");
        if let Some(version) =
            crate::kernel::running_release().and_then(|r| crate::kernel::KernelVersion::parse(&r))
            && version >= crate::kernel::KernelVersion::new(5, 18)
        {
            assert_eq!(params, 5);
        }
        assert!(matches!(
            btf.function_pointer_params("btf_trace_no_such_tracepoint"),
            Err(BtfError::Missing(_))
        ));
        // A typedef that is not a function pointer.
        assert!(matches!(btf.function_pointer_params("pid_t"), Err(BtfError::Missing(_))));
    }

    #[test]
    fn finds_the_resident_page_counters_of_the_running_kernel() {
        let Ok(btf) = Btf::from_sys() else {
            eprintln!("skipped: no kernel BTF");
            return;
        };
        assert_eq!(btf.struct_size("list_head").unwrap(), 16);
        let (mm, first, stride) = btf.rss_counters().unwrap();
        // Four counters of at least a word each, inside mm_struct.
        let mm_size = btf.struct_size("mm_struct").unwrap();
        assert!(mm > 0 && stride >= 8 && first + 4 * stride <= mm_size, "{mm} {first} {stride}");
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert_eq!(Btf::parse(&[0u8; 32]).unwrap_err(), BtfError::Malformed("bad magic"));
    }
}
