//! Rebuild the kernel object when bpf-linker changes, and declare the `bpf_target_arch` cfg.
fn main() {
    // aya-build passes --cfg bpf_target_arch (the daemon's target architecture); src/arch.rs
    // tests it. These are the values aya-build can pass.
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"aarch64\", \"arm\", \"loongarch64\", \
         \"mips\", \"mips64\", \"powerpc64\", \"riscv64\", \"s390x\", \"x86_64\"))"
    );
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
