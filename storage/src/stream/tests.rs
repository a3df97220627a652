use std::sync::mpsc;

use super::syncer::Syncer;
use super::*;

fn data(i: u64) -> Vec<u8> {
    format!("message {i}").into_bytes()
}

fn all(log: &StreamLog, from: u64) -> Vec<u64> {
    let mut cursor = log.cursor_at(from);
    let mut out = Vec::new();
    loop {
        let got = log.read(&mut cursor, 7, 1 << 20).unwrap();
        if got.is_empty() {
            return out;
        }
        for r in got {
            assert_eq!(r.data, data(r.offset));
            out.push(r.offset);
        }
    }
}

#[test]
fn records_are_read_from_any_offset_across_segments_and_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let (mut log, repaired) = StreamLog::open(&path, 4096).unwrap();
    assert!(repaired.is_empty() && log.is_empty());
    for i in 0..2000 {
        assert_eq!(log.append(1_000 + i as i64, &data(i)).unwrap(), i);
    }
    assert!(log.segment_count() > 3, "{} segments", log.segment_count());
    assert_eq!(all(&log, 0), (0..2000).collect::<Vec<_>>());
    assert_eq!(all(&log, 1234), (1234..2000).collect::<Vec<_>>());
    assert!(all(&log, 2000).is_empty());
    drop(log);
    let (mut log, repaired) = StreamLog::open(&path, 4096).unwrap();
    assert!(repaired.is_empty());
    assert_eq!((log.first_offset(), log.next_offset()), (0, 2000));
    assert_eq!(all(&log, 777), (777..2000).collect::<Vec<_>>());
    assert_eq!(log.append(5_000, &data(2000)).unwrap(), 2000);
}

#[test]
fn a_cursor_follows_new_records_and_a_time_finds_the_first_record_at_or_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = StreamLog::open(&dir.path().join("s"), 1 << 20).unwrap();
    let mut cursor = log.cursor_at(log.next_offset());
    assert!(log.read(&mut cursor, 10, 1 << 20).unwrap().is_empty());
    for i in 0..100 {
        log.append(10 * i as i64, &data(i)).unwrap();
    }
    let got = log.read(&mut cursor, 10, 1 << 20).unwrap();
    assert_eq!(
        got.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(log.cursor_at_time(455).unwrap().offset, 46);
    assert_eq!(log.cursor_at_time(0).unwrap().offset, 0);
    assert_eq!(log.cursor_at_time(10_000).unwrap().offset, 100);
    // A clock that went back: the record keeps the previous timestamp.
    log.append(5, &data(100)).unwrap();
    let mut c = log.cursor_at(100);
    assert_eq!(log.read(&mut c, 1, 1).unwrap()[0].timestamp_ms, 990);
}

#[test]
fn retention_removes_whole_old_segments_and_readers_skip_to_what_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = StreamLog::open(&dir.path().join("s"), 4096).unwrap();
    for i in 0..1000 {
        log.append(i as i64, &data(i)).unwrap();
    }
    let mut behind = log.cursor_at(3);
    let before = log.segment_count();
    let keep = Retention {
        max_bytes: Some(10_000),
        ..Retention::default()
    };
    assert!(log.apply_retention(1000, &keep).unwrap() > 0);
    assert!(log.bytes() <= 10_000 + 4096 + 64, "{} bytes", log.bytes());
    assert!(log.segment_count() < before);
    let first = log.first_offset();
    assert!(first > 3 && log.next_offset() == 1000);
    assert_eq!(log.read(&mut behind, 1, 1 << 20).unwrap()[0].offset, first);
    // By age: everything older than 100 ms before "now" but the active segment.
    let age = Retention {
        max_age_ms: Some(100),
        ..Retention::default()
    };
    log.apply_retention(1_000_000, &age).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.next_offset(), 1000);
    // The offsets carry on after a reopen even with every old segment gone.
    drop(log);
    let (mut log, _) = StreamLog::open(&dir.path().join("s"), 4096).unwrap();
    assert_eq!(log.next_offset(), 1000);
    assert_eq!(log.append(1, &data(1000)).unwrap(), 1000);
}

#[test]
fn a_torn_tail_is_cut_off_at_open_and_damage_before_it_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let (mut log, _) = StreamLog::open(&path, 1 << 20).unwrap();
    for i in 0..10 {
        log.append(0, &data(i)).unwrap();
    }
    drop(log);
    let seg = path.join(segment::file_name(0));
    let len = fs::metadata(&seg).unwrap().len();
    // Half a record more: the write a crash interrupted.
    let mut bytes = fs::read(&seg).unwrap();
    let torn = segment::encode(10, 0, b"never confirmed");
    bytes.extend_from_slice(&torn[..torn.len() / 2]);
    fs::write(&seg, &bytes).unwrap();
    let (mut log, repaired) = StreamLog::open(&path, 1 << 20).unwrap();
    assert_eq!(repaired.len(), 1);
    assert_eq!(repaired[0].kept_bytes, len);
    assert_eq!(log.next_offset(), 10);
    assert_eq!(log.append(0, &data(10)).unwrap(), 10);
    assert_eq!(all(&log, 0), (0..11).collect::<Vec<_>>());
    drop(log);
    // Zeros after the last record (the file grew, its blocks never written): cut off too.
    let mut bytes = fs::read(&seg).unwrap();
    let whole = bytes.len();
    bytes.extend_from_slice(&[0; 300]);
    fs::write(&seg, &bytes).unwrap();
    let (log, repaired) = StreamLog::open(&path, 1 << 20).unwrap();
    assert_eq!(repaired[0].dropped_bytes, 300);
    assert_eq!(log.next_offset(), 11);
    drop(log);
    assert_eq!(fs::metadata(&seg).unwrap().len() as usize, whole);
    // A flipped byte in a record with confirmed records after it: an error, never a silent cut.
    let mut bytes = fs::read(&seg).unwrap();
    bytes[20] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();
    let err = StreamLog::open(&path, 1 << 20).unwrap_err();
    assert!(err.to_string().contains("checksum does not match"), "{err}");
}

#[test]
fn a_gap_between_segments_refuses_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let (mut log, _) = StreamLog::open(&path, 4096).unwrap();
    for i in 0..1000 {
        log.append(0, &data(i)).unwrap();
    }
    drop(log);
    let mut firsts: Vec<_> = fs::read_dir(&path)
        .unwrap()
        .filter_map(|e| segment::parse_name(e.unwrap().file_name().to_str().unwrap()))
        .collect();
    firsts.sort_unstable();
    fs::remove_file(path.join(segment::file_name(firsts[1]))).unwrap();
    let err = StreamLog::open(&path, 4096).unwrap_err();
    assert!(err.to_string().contains("but the next starts at"), "{err}");
}

#[test]
fn the_syncer_completes_every_waiting_append_once_it_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = StreamLog::open(&dir.path().join("s"), 1 << 20).unwrap();
    let syncer = Syncer::start().unwrap();
    let (tx, rx) = mpsc::channel();
    for i in 0..100 {
        log.append(0, &data(i)).unwrap();
        let tx = tx.clone();
        syncer.sync(
            log.active_file(),
            Box::new(move |r| tx.send((i, r.is_ok())).unwrap()),
        );
    }
    let mut done: Vec<_> = (0..100).map(|_| rx.recv().unwrap()).collect();
    done.sort_unstable();
    assert_eq!(done, (0..100).map(|i| (i, true)).collect::<Vec<_>>());
    syncer.stop();
    let (tx, rx) = mpsc::channel();
    syncer.sync(
        log.active_file(),
        Box::new(move |r| tx.send(r.is_err()).unwrap()),
    );
    assert!(
        rx.recv().unwrap(),
        "a stopped syncer fails what it is given"
    );
}

#[test]
fn removing_a_stream_deletes_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let (mut log, _) = StreamLog::open(&path, 4096).unwrap();
    log.append(0, b"x").unwrap();
    log.remove().unwrap();
    assert!(!path.exists());
}
