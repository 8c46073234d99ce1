//! Precompresses the dashboard's static files (`assets/web/`, `assets/vendor/`,
//! and the client library `clients/js/switchboard.js` the page runs on)
//! with gzip and brotli, once per build, into `OUT_DIR/assets/<file>.gz` and
//! `.br`; `src/web/mod.rs` embeds them beside the originals and serves the one
//! the browser's `Accept-Encoding` takes.
//!
//! Why at build time rather than at startup: the work is done once, not by every
//! replica on every start (brotli at its best quality takes seconds for the 1.1 MB
//! ECharts file), so a gateway is ready at once and serves its smallest bytes from
//! the first request; the cost is ~0.6 MB more binary. A variant that would not be
//! smaller than the file is written empty, and the file is then served as is.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The directories under `assets/` the page's files come from.
const DIRS: [&str; 2] = ["web", "vendor"];
/// Files from elsewhere the page serves: (source, name under `OUT_DIR/assets/`).
const EXTRA: [(&str, &str); 1] = [("clients/js/switchboard.js", "clients/switchboard.js")];

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("assets");
    println!("cargo::rerun-if-changed=build.rs");
    for dir in DIRS {
        let from = root.join("assets").join(dir);
        println!("cargo::rerun-if-changed={}", from.display());
        for file in files(&from) {
            println!("cargo::rerun-if-changed={}", file.display());
            let relative = file
                .strip_prefix(root.join("assets"))
                .expect("under assets/");
            let body =
                fs::read(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            let target = out.join(relative);
            fs::create_dir_all(target.parent().expect("a file has a parent"))
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", out.display()));
            write_if_smaller(&target, "gz", &body, gzip(&body));
            write_if_smaller(&target, "br", &body, brotli(&body));
        }
    }
    for (source, name) in EXTRA {
        let file = root.join(source);
        println!("cargo::rerun-if-changed={}", file.display());
        let body =
            fs::read(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let target = out.join(name);
        fs::create_dir_all(target.parent().expect("a file has a parent"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", out.display()));
        write_if_smaller(&target, "gz", &body, gzip(&body));
        write_if_smaller(&target, "br", &body, brotli(&body));
    }
}

/// Every file under `dir`, recursively, in a stable order.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn write_if_smaller(target: &Path, extension: &str, original: &[u8], compressed: Vec<u8>) {
    let mut name = target.as_os_str().to_owned();
    name.push(".");
    name.push(extension);
    let body: &[u8] = if compressed.len() < original.len() {
        &compressed
    } else {
        &[]
    };
    fs::write(&name, body).unwrap_or_else(|e| panic!("cannot write {name:?}: {e}"));
}

/// gzip at its best level.
fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(body).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// brotli at its best quality, with a window fitting the largest file.
fn brotli(body: &[u8]) -> Vec<u8> {
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        lgwin: 22,
        size_hint: body.len(),
        ..Default::default()
    };
    let mut out = Vec::new();
    brotli::BrotliCompress(&mut &body[..], &mut out, &params).expect("writing to memory");
    out
}
