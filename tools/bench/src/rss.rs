//! Resident memory of a process, read from /proc (Linux): VmHWM is the peak, VmRSS the current.

fn read_kib(pid: &str, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok()
}

pub fn current_process_peak_mib() -> Option<f64> {
    read_kib("self", "VmHWM:").map(|k| k / 1024.0)
}

#[allow(dead_code)]
pub fn peak_mib(pid: u32) -> Option<f64> {
    read_kib(&pid.to_string(), "VmHWM:").map(|k| k / 1024.0)
}

#[allow(dead_code)]
pub fn current_mib(pid: u32) -> Option<f64> {
    read_kib(&pid.to_string(), "VmRSS:").map(|k| k / 1024.0)
}
