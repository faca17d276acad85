//! Process resource figures for benchmarks and health: CPU time and memory,
//! read from `/proc/self` (Linux).

/// User + system CPU seconds this process has used, if `/proc` is available.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; fields after it are plain.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line (11 and 12 after the name).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI.
    Some((utime + stime) / 100.0)
}

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Current resident set size in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

/// Peak resident set size in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_proc() {
        assert!(super::cpu_seconds().is_some());
        assert!(super::rss_bytes().unwrap_or(0) > 1024 * 1024);
        // The current RSS first: the peak, read after it, can only be as high or higher
        // (other tests of this process allocate in between).
        let rss = super::rss_bytes();
        assert!(super::peak_rss_bytes() >= rss);
    }
}
