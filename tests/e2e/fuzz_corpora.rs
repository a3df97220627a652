//! Replays the committed corpora of the fuzz targets beyond frames (SASL, admin requests, the
//! configuration, definitions, stored log records: see fuzz/README.md) on every `cargo test`, so
//! an input that once found a bug keeps being checked without nightly or cargo-fuzz. Each input runs
//! on a thread with a tokio worker's 2 MiB stack, as the broker would parse it.

use std::path::PathBuf;

#[path = "../../fuzz/targets.rs"]
mod targets;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the {target} corpus is empty");
    for path in files {
        let data = std::fs::read(&path).expect("a corpus file");
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || run(&data))
            .expect("spawn")
            .join()
            .unwrap_or_else(|_| panic!("{} failed", path.display()));
    }
}

#[test]
fn sasl_corpus() {
    replay("sasl", targets::sasl);
}

#[test]
fn admin_request_corpus() {
    replay("admin_request", targets::admin_request);
}

#[test]
fn config_corpus() {
    replay("config", targets::config);
}

#[test]
fn definitions_corpus() {
    replay("definitions", targets::definitions);
}

#[test]
fn log_records_corpus() {
    replay("log_records", targets::log_records);
}
