//! Builds the eBPF object (ebpf/lockmesh-ebpf) with the nightly toolchain and bpf-linker, so that
//! `cargo build` yields an agent with its kernel programs embedded. `AYA_BUILD_SKIP=1` skips it
//! (the agent then embeds an empty object and refuses to load; useful for unit tests only).
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../ebpf/lockmesh-ebpf");
    let ebpf_dir = ebpf_dir.to_string_lossy();
    let skipped = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skipped {
        // Keep include_bytes! happy; the loader reports the empty object clearly.
        let out = PathBuf::from(std::env::var("OUT_DIR")?).join("lockmesh");
        if !out.exists() {
            std::fs::write(out, [])?;
        }
    }
    aya_build::build_ebpf(
        [aya_build::Package { name: "lockmesh-ebpf", root_dir: &ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
