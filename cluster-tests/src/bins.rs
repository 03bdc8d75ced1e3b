//! Finding the project's built binaries. Building them is the caller's job.

use std::path::{Path, PathBuf};

/// Path of one of the project's binaries (`flotilla`, `flotilla-worker`, …): from the directory
/// in `FLOTILLA_BIN_DIR`, else `<workspace>/target/debug`. Panics with what to do when missing.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("FLOTILLA_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("cluster-tests lives inside the workspace")
            .join("target/debug"),
    };
    // Absolute: daemons are started inside lab hosts from other directories.
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "binary {} not found: run `cargo build --workspace` first \
         (or point FLOTILLA_BIN_DIR at the directory holding it)",
        path.display()
    );
    path
}
