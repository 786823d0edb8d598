//! The `parking.v1` contract shared by every service: message types, tonic clients and
//! servers, and the file descriptor set for gRPC server reflection.
#![forbid(unsafe_code)]

/// Generated code for package `parking.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("parking.v1");
}

/// Encoded `FileDescriptorSet` of every parking.v1 file, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/parking_descriptor.bin"));
