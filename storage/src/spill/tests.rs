use super::*;

fn record(i: u32, size: usize) -> Vec<u8> {
    let mut v = i.to_be_bytes().to_vec();
    v.resize(size.max(4), (i % 251) as u8);
    v
}

fn files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |d| d.count())
}

fn drain(spill: &mut Spill, max_bytes: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    while !spill.is_empty() {
        let got = spill.pop(max_bytes).unwrap();
        assert!(!got.is_empty(), "pop on a non-empty run returns something");
        out.extend(got);
    }
    out
}

#[test]
fn records_come_back_in_order_across_chunks_and_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let mut spill = Spill::new(dir.path(), "q", 4096);
    let sizes = [0usize, 5, 100, 3000, 70_000, 16, 200_000, 1];
    let mut expected = Vec::new();
    for i in 0..2000u32 {
        let r = record(i, sizes[i as usize % sizes.len()]);
        spill.push(&[&r[..2], &r[2..]]).unwrap();
        expected.push(r);
    }
    assert_eq!(spill.len(), 2000);
    assert_eq!(
        spill.bytes(),
        expected.iter().map(|r| r.len() as u64).sum::<u64>()
    );
    assert!(
        files(dir.path()) > 10,
        "small chunk limit: many chunk files"
    );
    let got = drain(&mut spill, 10_000);
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(&g[..], &e[..]);
    }
    assert_eq!((spill.len(), spill.bytes()), (0, 0));
    assert!(files(dir.path()) <= 1, "read chunks are deleted");
}

#[test]
fn interleaved_appends_and_reads_keep_fifo_order_and_disk_follows_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let mut spill = Spill::new(dir.path(), "q", 64 << 10);
    let (mut next_in, mut next_out) = (0u32, 0u32);
    for round in 0..300 {
        for _ in 0..(50 + round % 7) {
            spill.push(&[&record(next_in, 1000)]).unwrap();
            next_in += 1;
        }
        for r in spill.pop(30_000).unwrap() {
            assert_eq!(u32::from_be_bytes([r[0], r[1], r[2], r[3]]), next_out);
            next_out += 1;
        }
        // The backlog stays small, so the files must too (chunks are deleted once read).
        assert!(
            files(dir.path()) <= 4,
            "round {round}: {}",
            files(dir.path())
        );
    }
    for r in drain(&mut spill, 1 << 20) {
        assert_eq!(u32::from_be_bytes([r[0], r[1], r[2], r[3]]), next_out);
        next_out += 1;
    }
    assert_eq!(next_in, next_out);
}

#[test]
fn a_read_takes_about_max_bytes_and_at_least_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut spill = Spill::new(dir.path(), "q", 64 << 20);
    for i in 0..1000 {
        spill.push(&[&record(i, 1024)]).unwrap();
    }
    spill.write_pending().unwrap();
    let first = spill.pop(0).unwrap();
    assert!(!first.is_empty());
    let next = spill.pop(200 << 10).unwrap();
    assert!(next.len() >= 150 && next.len() <= 300, "{}", next.len());
}

#[test]
fn a_damaged_file_is_reported_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut spill = Spill::new(dir.path(), "q", 64 << 20);
    for i in 0..100 {
        spill.push(&[&record(i, 1024)]).unwrap();
    }
    spill.write_pending().unwrap();
    let path = dir.path().join("q.0");
    let mut data = fs::read(&path).unwrap();
    data[HEADER + 1024 + HEADER + 10] ^= 0xff;
    fs::write(&path, data).unwrap();
    let e = spill.pop(1 << 20).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("q.0") && e.to_string().contains("offset 1032"));
}

#[test]
fn clearing_or_dropping_deletes_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut spill = Spill::new(dir.path(), "q", 4096);
    for i in 0..100 {
        spill.push(&[&record(i, 1000)]).unwrap();
    }
    spill.write_pending().unwrap();
    assert!(files(dir.path()) > 1);
    spill.clear();
    assert_eq!((files(dir.path()), spill.len()), (0, 0));
    spill.push(&[&record(1, 10)]).unwrap();
    assert_eq!(&spill.pop(1).unwrap()[0][..4], &1u32.to_be_bytes());
    for i in 0..100 {
        spill.push(&[&record(i, 1000)]).unwrap();
    }
    drop(spill);
    assert_eq!(files(dir.path()), 0);
}

#[test]
fn a_failed_write_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone");
    fs::create_dir(&gone).unwrap();
    let mut spill = Spill::new(&gone, "q", 64 << 20);
    fs::remove_dir(&gone).unwrap();
    let mut failures = 0;
    for i in 0..200 {
        failures += usize::from(spill.push(&[&record(i, 1024)]).is_err());
    }
    assert!(failures > 0, "the directory is gone: writes fail");
    let got = drain(&mut spill, 1 << 20);
    assert_eq!(got.len(), 200, "kept in the buffer, served from it");
    for (i, r) in got.iter().enumerate() {
        assert_eq!(&r[..4], &(i as u32).to_be_bytes());
    }
}

#[test]
fn clear_dir_removes_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let spill_dir = dir.path().join("spill");
    fs::create_dir(&spill_dir).unwrap();
    fs::write(spill_dir.join("old.0"), b"x").unwrap();
    clear_dir(&spill_dir).unwrap();
    assert_eq!(files(&spill_dir), 0);
    clear_dir(&dir.path().join("fresh")).unwrap();
    assert!(dir.path().join("fresh").is_dir());
}
