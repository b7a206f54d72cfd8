//! Compiles the protos without a system `protoc`: protox parses them, tonic-prost-build generates
//! the messages and the service, and the encoded descriptor set (with its `google.api.http`
//! options intact) is kept for reflection and the JSON edge.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/reviews/v1/reviews.proto";
    println!("cargo:rerun-if-changed=proto");

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files([proto])?;

    // Encoding through protox keeps extension options; re-encoding prost-types' copy drops them.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("reviews_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
