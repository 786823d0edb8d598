//! Compiles proto/parking/v1 with protox (a protobuf compiler in pure Rust), so a fresh
//! machine needs no protoc, and writes the descriptor set that server reflection serves.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "parking/v1/reservation.proto",
    "parking/v1/parking_lot.proto",
    "parking/v1/delivery.proto",
    "parking/v1/status.proto",
    "parking/v1/events.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=parking");
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("parking_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
