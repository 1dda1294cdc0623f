//! The off-CPU program's per-thread state in task-local storage
//! (`BPF_MAP_TYPE_TASK_STORAGE`): the value lives with the `task_struct` and is found from the
//! task pointer the BTF tracepoint passes, in a few loads rather than a hash lookup by thread
//! id, and it is freed with the task. Tracing programs may use it since Linux 5.13, and it
//! allocates from BPF's own allocator, safe under the scheduler's locks, since 6.4; the loader
//! uses this object from 6.4 on (`main_hash.rs` before).
//!
//! aya-ebpf 0.2.1 defines the other local storages but not this one. The kernel creates such a
//! map only from a BTF definition (the `.maps` section, with its key and value types), so this
//! is one: the loader reads the map's type, key, value, size and flags from the BTF of the
//! fields of `TaskStorage`, as libbpf does.

use core::{ffi::c_void, ptr};

use aya_ebpf::{helpers::generated::bpf_task_storage_get, macros::btf_map};
use profiler_common::off_cpu::OffCpuThread;

/// `BPF_MAP_TYPE_TASK_STORAGE`.
const MAP_TYPE: usize = 29;
/// `BPF_F_NO_PREALLOC`, which the kernel requires of local storage maps.
const NO_PREALLOC: usize = 1;
/// `BPF_LOCAL_STORAGE_GET_F_CREATE`.
const GET_F_CREATE: u64 = 1;

/// A BTF map definition: each field's type encodes one attribute, as the loader expects; the
/// fields themselves are never read.
#[repr(C)]
struct TaskStorage<T> {
    r#type: *const [i32; MAP_TYPE],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; NO_PREALLOC],
}

// SAFETY: the fields are placeholders the loader replaces with the map; nothing reads them.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    const fn new() -> Self {
        TaskStorage {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    /// The value of `task`, if it has one.
    ///
    /// # Safety
    ///
    /// `task` must be a `task_struct` pointer the verifier knows as one (a BTF tracepoint's
    /// argument).
    #[inline(always)]
    unsafe fn get(&self, task: u64) -> Option<*mut T> {
        // SAFETY: see above.
        let value = unsafe { self.call(task, ptr::null_mut(), 0) };
        (!value.is_null()).then_some(value)
    }

    /// The value of `task`, created as a copy of `init` when it has none; `None` when the
    /// kernel could not allocate it.
    ///
    /// # Safety
    ///
    /// As for [`TaskStorage::get`].
    #[inline(always)]
    unsafe fn get_or_insert(&self, task: u64, init: &mut T) -> Option<*mut T> {
        // SAFETY: see above.
        let value = unsafe { self.call(task, ptr::from_mut(init), GET_F_CREATE) };
        (!value.is_null()).then_some(value)
    }

    #[inline(always)]
    unsafe fn call(&self, task: u64, init: *mut T, flags: u64) -> *mut T {
        let map = ptr::from_ref(self).cast_mut().cast::<c_void>();
        // SAFETY: the caller passes a task pointer; the helper returns null or a pointer to
        // the task's value.
        unsafe { bpf_task_storage_get(map, task as *mut _, init.cast(), flags) }.cast()
    }
}

/// Per thread: the open recorded block, the mean time between switch-outs and the draws.
#[btf_map]
static OFF_CPU_TASKS: TaskStorage<OffCpuThread> = TaskStorage::new();

/// The off-CPU state of `task`, one of the BTF tracepoint's typed task pointers, if it has one.
#[inline(always)]
pub(crate) fn thread(task: u64, _tid: u32) -> Option<*mut OffCpuThread> {
    // SAFETY: `task` is a typed task pointer (the verifier checks it).
    unsafe { OFF_CPU_TASKS.get(task) }
}

/// Gives `task` its first off-CPU state; a failed allocation leaves it without one (it is then
/// treated as new again at its next switch-out).
#[inline(always)]
pub(crate) fn insert(task: u64, _tid: u32, mut thread: OffCpuThread) {
    // SAFETY: as above.
    let _ = unsafe { OFF_CPU_TASKS.get_or_insert(task, &mut thread) };
}
