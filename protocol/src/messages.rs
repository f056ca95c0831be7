//! The generated protobuf messages of `proto/rafka.proto` (package `rafka.v1`).
#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/rafka.v1.rs"));
