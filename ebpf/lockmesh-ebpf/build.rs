//! Rebuild when bpf-linker changes (it is the linker for bpfel-unknown-none).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
