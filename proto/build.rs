//! Compiles proto/parking/v1 with protox (a protobuf compiler in pure Rust), so a fresh
//! machine needs no protoc, and writes the descriptor set that server reflection serves.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "parking/v1/reservation.proto",
    "parking/v1/parking_lot.proto",
    "parking/v1/delivery.proto",
    "parking/v1/status.proto",
    "parking/v1/events.proto",
    "parking/v1/community.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=parking");
    println!("cargo:rerun-if-changed=google");
    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).open_files(PROTOS)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Encoded by protox itself: prost_types would drop the google.api.http options
    // (extensions it does not know), and the gateway's REST routes come from them.
    std::fs::write(
        out.join("parking_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
