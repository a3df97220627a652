//! What the benchmark reads from /proc: CPU time (utime + stime of every thread of a process, from
//! /proc/PID/stat) and resident memory (VmRSS from /proc/PID/status), and core pinning via taskset.

use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
pub fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn stat_ticks(path: &str) -> Result<u64> {
    let stat = std::fs::read_to_string(path).with_context(|| path.to_string())?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path}: no ')'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields
        .get(11)
        .ok_or_else(|| anyhow!("{path}: short"))?
        .parse()?;
    let stime: u64 = fields
        .get(12)
        .ok_or_else(|| anyhow!("{path}: short"))?
        .parse()?;
    Ok(utime + stime)
}

/// CPU seconds used so far by the whole process `pid` (all threads).
pub fn cpu_secs(pid: u32) -> Result<f64> {
    Ok(stat_ticks(&format!("/proc/{pid}/stat"))? as f64 / clk_tck())
}

/// CPU seconds used so far by this process.
pub fn self_cpu_secs() -> f64 {
    stat_ticks("/proc/self/stat").map_or(0.0, |t| t as f64 / clk_tck())
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("{path}: no VmRSS"))
}

/// Bytes `pid` has caused to be written to storage so far (`write_bytes` of /proc/PID/io; None when
/// unreadable).
pub fn io_write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Number of threads of `pid`.
pub fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// `taskset -acp CORES PID`: pins every thread of `pid` to `cores` (a list such as `0` or `0,1`;
/// threads created later inherit it).
pub fn pin(pid: u32, cores: &str) -> Result<()> {
    let out = Command::new("taskset")
        .args(["-acp", cores, &pid.to_string()])
        .output()
        .context("running taskset")?;
    if !out.status.success() {
        anyhow::bail!(
            "taskset -acp {cores} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}
