//! `--pin`: the measured server on CPUs of its own, and the driver, Redis and nginx on the
//! others. Unpinned, they share every core: the server's CPU time then also counts what sharing
//! costs it (its caches refilled after Redis or the driver ran, its threads woken on a core
//! another process holds), which varies from run to run by as much as a Redis claim costs. On
//! a two-core machine the server gets one core (so tokio and actix-web start one worker: both
//! size themselves to the CPUs a process may use).

use std::process::Command;

use crate::Error;

/// Which CPUs the server uses, and which the rest.
#[derive(Debug, Clone)]
pub(crate) struct Pinning {
    server: String,
    others: String,
}

impl Pinning {
    /// Splits the CPUs this process may use in two halves (the server gets the first) and
    /// moves this process (so the Redis servers and nginx it starts) to the second.
    pub(crate) fn split() -> Result<Self, Error> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let allowed = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .ok_or("--pin: /proc/self/status names no CPUs (Linux only)")?;
        let cpus = cpu_list(allowed.trim()).ok_or_else(|| format!("--pin: unreadable CPU list {allowed:?}"))?;
        if cpus.len() < 2 {
            return Err("--pin needs at least two CPUs".into());
        }
        let (server, others) = cpus.split_at(cpus.len() / 2);
        let join = |cpus: &[u32]| cpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let pinning = Self { server: join(server), others: join(others) };
        let moved = Command::new("taskset")
            .args(["-a", "-p", "-c", &pinning.others, &std::process::id().to_string()])
            .output()
            .map_err(|e| format!("--pin needs taskset (util-linux): {e}"))?;
        if !moved.status.success() {
            return Err(format!("taskset failed: {}", String::from_utf8_lossy(&moved.stderr).trim()).into());
        }
        Ok(pinning)
    }

    /// `program`, started on the server's CPUs.
    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("taskset");
        command.args(["-c", &self.server]).arg(program);
        command
    }

    /// `server on CPUs 0; driver, Redis and nginx on CPUs 1`.
    pub(crate) fn describe(&self) -> String {
        format!("server on CPUs {}; driver, Redis and nginx on CPUs {}", self.server, self.others)
    }
}

/// The command that starts a server process: this program, pinned when `pinning` says so.
pub(crate) fn server_command(pinning: Option<&Pinning>) -> Result<Command, Error> {
    let program = std::env::current_exe()?;
    Ok(match pinning {
        Some(pinning) => pinning.command(program),
        None => Command::new(program),
    })
}

/// The CPUs of a kernel CPU list (`0-3,6,8-9`), in order; `None` if it cannot be read.
fn cpu_list(list: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last): (u32, u32) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
        if last < first || last - first > 4096 {
            return None;
        }
        cpus.extend(first..=last);
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_read_as_the_kernel_writes_them() {
        assert_eq!(cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(cpu_list("0-3,6,8-9"), Some(vec![0, 1, 2, 3, 6, 8, 9]));
        assert_eq!(cpu_list("5"), Some(vec![5]));
        assert_eq!(cpu_list("3-1"), None);
        assert_eq!(cpu_list("a"), None);
        assert_eq!(cpu_list("0-99999"), None);
    }
}
