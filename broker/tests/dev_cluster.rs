//! `warren --dev --cluster 3`, the real binary: it starts three node processes that link up, prints
//! their pids, ports and the oslo transport_url, reports (and does not restart) a node killed with
//! SIGKILL, and stops the others on SIGINT.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

fn cluster_status(socket: &Path) -> Option<Value> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"{\"command\":\"cluster_status\"}\n")
        .ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let answer: Value = serde_json::from_str(&line).ok()?;
    Some(answer["result"].clone())
}

/// The links node 1 reports as up, by peer id.
fn links_up(socket: &Path) -> Vec<u64> {
    cluster_status(socket)
        .and_then(|status| status["nodes"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|n| n["link"] == "up")
        .filter_map(|n| n["id"].as_u64())
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// The supervisor, stopped with SIGINT (which stops its nodes) even when the test fails.
struct Supervisor(std::process::Child);

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
    }
}

#[test]
fn a_three_node_dev_cluster_links_up_reports_a_killed_node_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cluster");
    let mut parent = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--dev", "--cluster", "3", "--listen", "127.0.0.1:7671"])
        .arg("--data-dir")
        .arg(&data)
        .env("WARREN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = parent.stdout.take().unwrap();
    let mut parent = Supervisor(parent);
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut printed = Vec::new();
    let next_line = |printed: &mut Vec<String>| {
        let line = lines
            .recv_timeout(LIMIT)
            .expect("warren --dev --cluster printed");
        printed.push(line.clone());
        line
    };
    while !next_line(&mut printed).contains("transport_url") {}
    let text = printed.join("\n");
    assert!(
        text.contains("transport_url = rabbit://admin@localhost:7671,admin@localhost:7672,admin@localhost:7673/"),
        "{text}"
    );
    // The node table: name, pid, AMQP port, link port.
    let pids: Vec<u32> = printed
        .iter()
        .filter(|l| l.trim_start().starts_with('n') && l.contains("admin.sock"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{text}");
    assert!(
        text.contains("27671"),
        "node links on the AMQP ports + 20000: {text}"
    );

    let n1 = data.join("n1").join("admin.sock");
    wait_until("node 1 links to nodes 2 and 3", || {
        links_up(&n1) == vec![2, 3]
    });

    // SIGKILL node 2: reported, not restarted; node 1 sees its link down.
    Command::new("kill")
        .args(["-9", &pids[1].to_string()])
        .status()
        .unwrap();
    while !next_line(&mut printed).contains("node n2 exited") {}
    wait_until("node 1 sees node 2 down", || links_up(&n1) == vec![3]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(!alive(pids[1]), "node 2 stays down");

    // Ctrl-C stops the other nodes and the parent.
    Command::new("kill")
        .args(["-INT", &parent.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = parent.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the parent exits after SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    for pid in [pids[0], pids[2]] {
        wait_until("every node exits", || !alive(pid));
    }
}
