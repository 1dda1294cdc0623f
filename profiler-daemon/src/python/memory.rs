//! Reading another process's memory (`process_vm_readv`), which needs `CAP_SYS_PTRACE`.

use std::io;

/// Memory to read objects from: a live process ([`Process`]), or an image of bytes
/// ([`Image`], for tests and fuzzing).
pub trait Memory {
    /// Fills `buf` from address `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Reads a native-endian `u64`.
    fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }

    /// Reads `len` bytes.
    fn read_vec(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }
}

/// The memory of process `pid`, through `process_vm_readv`.
#[derive(Clone, Copy, Debug)]
pub struct Process(pub u32);

impl Memory for Process {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        read(self.0, addr, buf)
    }
}

/// `bytes` seen at address `base`; reads outside them fail as a process's unmapped memory
/// would.
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    /// The address of `bytes[0]`.
    pub base: u64,
    /// The memory.
    pub bytes: &'a [u8],
}

impl Memory for Image<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let bytes = addr
            .checked_sub(self.base)
            .and_then(|start| usize::try_from(start).ok())
            .and_then(|start| self.bytes.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Fills `buf` from address `addr` of process `pid`.
pub fn read(pid: u32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: both iovecs describe memory of the stated length; the local one is `buf`.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != buf.len() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read of process memory"));
    }
    Ok(())
}

/// Reads a native-endian `u64`.
pub fn read_u64(pid: u32, addr: u64) -> io::Result<u64> {
    let mut b = [0u8; 8];
    read(pid, addr, &mut b)?;
    Ok(u64::from_ne_bytes(b))
}

/// Reads `len` bytes.
pub fn read_vec(pid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    read(pid, addr, &mut v)?;
    Ok(v)
}

/// A native-endian `u64` at `offset` of `bytes`, or 0 when out of range.
pub fn u64_at(bytes: &[u8], offset: u32) -> u64 {
    let o = offset as usize;
    bytes.get(o..o + 8).map_or(0, |b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
}

/// A native-endian `u32` at `offset` of `bytes`, or 0 when out of range.
pub fn u32_at(bytes: &[u8], offset: u32) -> u32 {
    let o = offset as usize;
    bytes.get(o..o + 4).map_or(0, |b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::skip_under_qemu_user;

    #[test]
    fn reads_own_memory() {
        if skip_under_qemu_user("reads_own_memory", "qemu-user does not emulate process_vm_readv") {
            return;
        }
        let value: u64 = 0x1122_3344_5566_7788;
        let got = read_u64(std::process::id(), &raw const value as u64).unwrap();
        assert_eq!(got, value);
        assert!(read_u64(std::process::id(), 8).is_err());
        assert_eq!(u64_at(&value.to_ne_bytes(), 0), value);
        assert_eq!(u64_at(&value.to_ne_bytes(), 4), 0);
    }
}
