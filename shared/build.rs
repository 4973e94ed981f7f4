//! Compiles the wire contract in `../proto` (pure Rust: protox, no protoc) into
//! prost messages and tonic clients/servers, and writes the encoded
//! `FileDescriptorSet` to `$OUT_DIR/seam_descriptor.bin` for gRPC reflection.

use std::path::PathBuf;

const PROTO_ROOT: &str = "../proto";
const FILES: &[&str] = &[
    "seam/v1/common.proto",
    "seam/v1/edge.proto",
    "seam/v1/gateway.proto",
    "seam/v1/worker.proto",
    "seam/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for f in FILES {
        println!("cargo:rerun-if-changed={PROTO_ROOT}/{f}");
    }

    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(FILES)?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("seam_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    let fds = compiler.file_descriptor_set();
    // `crate::proto` flattens the packages into sibling modules
    // (`common`, `edge`, ...), so cross-package references must be given as
    // absolute paths with `extern_path`. prost does not generate code for an
    // extern package, hence two passes: `seam.common.v1` on its own, then the
    // rest with `seam.common.v1` mapped to `crate::proto::common`.
    let mut common_only = fds.clone();
    common_only.file.retain(|f| f.package() == "seam.common.v1");
    builder().compile_fds(common_only)?;
    builder()
        .extern_path(".seam.common.v1", "crate::proto::common")
        .compile_fds(fds)?;
    Ok(())
}

fn builder() -> tonic_prost_build::Builder {
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Byte fields (tensor data) decode as `bytes::Bytes` (re-exported as
        // `prost::bytes`) so the gateway can relay steps without copying
        // payloads.
        .bytes(".seam")
}
