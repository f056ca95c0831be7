//! Compiles `proto/rafka.proto` with protox (a pure-Rust protobuf compiler), so that building
//! Rafka never needs a system `protoc`. `bytes` fields become `bytes::Bytes`, so record data
//! decoded from a frame shares the frame's buffer instead of being copied.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/rafka.proto");
    let descriptors = protox::compile(["proto/rafka.proto"], ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
