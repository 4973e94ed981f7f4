//! Generates the ONNX model-format types the importer writes, from `onnx/onnx.proto`, without a
//! system `protoc` (protox compiles the schema in-process).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=onnx/onnx.proto");
    let fds = protox::compile(["onnx/onnx.proto"], ["onnx"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
