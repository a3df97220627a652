//! Replays the committed fuzz corpus (fuzz/corpus/frames/) through the fuzz target's decoding
//! function, so every input the fuzzer ever found interesting keeps being checked by `cargo test`
//! on the stable toolchain. The function itself lives in fuzz/decode.rs (one source of truth).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

#[path = "../../fuzz/decode.rs"]
mod decode;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/frames")
}

fn files_in(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn fuzz_corpus_decodes_without_panicking() {
    let dir = corpus_dir();
    let files = files_in(&dir);
    assert!(
        !files.is_empty(),
        "the fuzz corpus {} is empty",
        dir.display()
    );

    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        if catch_unwind(AssertUnwindSafe(|| decode::decode_all(&data))).is_err() {
            failed.push(path.file_name().map(|n| n.to_string_lossy().into_owned()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} corpus inputs panicked (see the messages above): {failed:?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn split_frames_sees_through_partial_reads() {
    // A heartbeat split across reads is one frame; a frame larger than frame_max is refused.
    let hb = [8u8, 0, 0, 0, 0, 0, 0, 0xce];
    let s = decode::split_frames(&hb, 4096, 3);
    assert_eq!((s.frames.len(), s.error, s.left), (1, None, 0));
    let big = [1u8, 0, 1, 0, 0, 0x10, 0x00];
    assert!(decode::split_frames(&big, 4096, 1).error.is_some());
    assert!(decode::split_frames(&big, 131072, 1).error.is_none());
}

/// The inputs of fuzz/regressions/ once overflowed the stack (field tables nested ~1300 deep in a
/// queue.declare and in a publish's headers: the recursive table parser had no bound; a stack overflow
/// aborts the whole process). `warren_protocol::nesting` now refuses them before parsing. Each runs on
/// a thread with a tokio worker's 2 MiB stack.
#[test]
fn known_crashes_do_not_overflow_the_stack() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    for path in files_in(&dir) {
        let data = std::fs::read(&path).expect("read known crash");
        eprintln!("replaying {}", path.display());
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || decode::decode_all(&data))
            .expect("spawn")
            .join()
            .unwrap_or_else(|_| panic!("{} panicked", path.display()));
    }
}
