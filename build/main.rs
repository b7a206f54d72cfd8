//! Compiles the protos without a system `protoc`: protox parses them, tonic-prost-build generates
//! the messages and the service, and the encoded descriptor set (with its `google.api.http`
//! options intact) is kept for reflection. From the same descriptors it generates the JSON edge
//! (routes, typed parsing and writing, dispatch) and its OpenAPI document.

mod codegen;
mod openapi;
mod proto;
mod routes;

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/reviews/v1/reviews.proto";
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build");
    git_sha();

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files([proto])?;

    // Encoding through protox keeps extension options; re-encoding prost-types' copy drops them.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = compiler.encode_file_descriptor_set();
    fs::write(out.join("reviews_descriptor.bin"), &descriptors)?;

    let pool = prost_reflect::DescriptorPool::decode(descriptors.as_slice())?;
    let routes = routes::from_descriptors(&pool)?;
    fs::write(out.join("json_edge.rs"), codegen::generate(&routes)?)?;
    fs::write(
        out.join("openapi.json"),
        openapi::document(&routes).to_string(),
    )?;

    tonic_prost_build::configure()
        .codec_path("crate::grpc::codec::StrictCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// `REVIEWS_GIT_SHA` for `reviews_build_info`: as given (an image build has no `.git`), else
/// the checkout's commit, else `unknown`.
fn git_sha() {
    println!("cargo:rerun-if-env-changed=REVIEWS_GIT_SHA");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let sha = env::var("REVIEWS_GIT_SHA")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            let out = std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            let sha = String::from_utf8(out.stdout).ok()?;
            (out.status.success() && !sha.trim().is_empty()).then(|| sha.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=REVIEWS_GIT_SHA={sha}");
}
