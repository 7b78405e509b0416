//! Linker arguments for the eBPF object.
fn main() {
    // bpf-linker passes LLVM --bpf-expand-memcpy-in-order by default, which leaves every memset
    // the compiler forms as a call to a global `memset` function; kernels before 6.x refuse a
    // program calling a global function with a pointer argument. Without it LLVM expands small
    // memsets and memcpys inline; with the builtins not exported, one it cannot expand stays an
    // unresolved call that the loader refuses, never a silent global function.
    println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    println!("cargo:rustc-link-arg-bins=--disable-memory-builtins");
}
