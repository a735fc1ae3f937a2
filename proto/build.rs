//! Compiles `proto/pangaea.proto` with protox (a pure-Rust protobuf compiler), so building
//! needs no system `protoc`, and the generated code cannot drift from the `.proto` file.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["proto/pangaea.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto/pangaea.proto");
    Ok(())
}
