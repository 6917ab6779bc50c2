//! Who is calling: the kernel's peer credentials of the socket (uid, gid, pid, recorded when
//! the caller connected) and what `/proc/<pid>` says about that process.
//!
//! A pid can be reused: the caller may exit and another process may get its pid before the
//! agent reads `/proc`. Attestation therefore refuses a process that started after the
//! connection was accepted (pid reuse), one whose effective uid or gid differs from the
//! socket's (setuid since connecting), and one that changes while it is read. What it cannot
//! see: a caller that forks, keeps the connection in the child and executes another binary in
//! the parent is attested by the parent's new executable. `uid`/`gid` selectors do not have this
//! weakness; an `exe` selector identifies a binary that a caller able to start it can claim, so
//! combine it with `uid` where that matters.
//!
//! An `exe` selector is matched by the file, not by its path: the device and inode behind
//! `/proc/<pid>/exe` must be those of the configured path as the agent sees it. A path is only
//! a name in the caller's mount namespace, where an unprivileged user namespace can bind-mount
//! any binary over `/usr/bin/payments`.
//! The fork-then-exec case above remains.

use std::path::{Path, PathBuf};
use std::time::Instant;

/// The socket's peer credentials and when the connection was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Effective user id at connect time.
    pub uid: u32,
    /// Effective group id at connect time.
    pub gid: u32,
    /// The connecting process (absent on systems that do not report it).
    pub pid: Option<i32>,
    /// When the agent accepted the connection.
    pub accepted: Instant,
}

/// An attested caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Process id.
    pub pid: i32,
    /// Its executable's path as the caller's mount namespace names it (for logs), when the
    /// agent may read it.
    pub exe: Option<PathBuf>,
    /// Its executable's file: device and inode, when the agent may read it.
    pub exe_file: Option<(u64, u64)>,
}

impl Caller {
    /// Whether the caller runs the file at `path` (as the agent's mount namespace sees it):
    /// the same device and inode, whatever the caller's namespace calls it. Reads the file
    /// system: call it off the async runtime's threads.
    pub fn runs(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(running) = self.exe_file else { return false };
        std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == running)
    }
}

/// Why a caller could not be attested (answered with `PermissionDenied`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    /// The kernel reported no pid for the peer.
    #[error("the caller's process id is unknown")]
    NoPid,
    /// The process is gone.
    #[error("the calling process exited before it could be attested")]
    ProcessGone,
    /// The pid now belongs to a process that started after the connection.
    #[error("the caller's pid belongs to a process started after the connection (pid reused)")]
    PidReused,
    /// The process's credentials are not the socket's.
    #[error("the calling process's uid/gid changed since it connected")]
    CredentialsChanged,
    /// The process changed while it was read.
    #[error("the calling process changed during attestation")]
    Changed,
    /// `/proc` could not be read or parsed.
    #[error("the caller could not be attested: {0}")]
    Proc(String),
}

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux architecture).
const TICKS_PER_SECOND: u64 = 100;
/// Process start times have 10 ms granularity and uptime is read at 10 ms; this much slack
/// keeps a process that connected right after starting from looking reused.
const START_SLACK_MS: u64 = 20;

/// Reads callers' processes from `/proc` (or another root, for tests).
#[derive(Debug, Clone)]
pub struct Attestor {
    proc_root: PathBuf,
}

impl Attestor {
    /// An attestor of this machine's processes.
    pub fn new() -> std::io::Result<Self> {
        Self::with_proc_root("/proc")
    }

    /// An attestor reading `proc_root` instead of `/proc` (its `uptime` and `<pid>/` entries).
    /// Fails when `uptime` cannot be read.
    pub fn with_proc_root(proc_root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let attestor = Self { proc_root: proc_root.into() };
        attestor.uptime_ms().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(attestor)
    }

    /// Milliseconds since boot (the clock of process start times), read now.
    fn uptime_ms(&self) -> Result<u64, AttestationError> {
        let uptime = read(&self.proc_root.join("uptime"))?;
        let seconds: f64 =
            uptime.split_whitespace().next().and_then(|s| s.parse().ok()).ok_or_else(|| malformed("uptime"))?;
        Ok((seconds * 1000.0) as u64)
    }

    /// Attests `peer`. Reads `/proc`: call it off the async runtime's threads.
    pub fn attest(&self, peer: &PeerCredentials) -> Result<Caller, AttestationError> {
        let pid = peer.pid.filter(|pid| *pid > 0).ok_or(AttestationError::NoPid)?;
        // The accept time on the boot clock: read now, minus the (short) monotonic time since.
        // Reading it now rather than anchoring it once keeps it right across a machine suspend.
        let accepted_at_ms = self.uptime_ms()?.saturating_sub(peer.accepted.elapsed().as_millis() as u64);
        let dir = self.proc_root.join(pid.to_string());
        let started = start_time_ms(&dir)?;
        if started > accepted_at_ms + START_SLACK_MS {
            return Err(AttestationError::PidReused);
        }
        let (uid, gid) = effective_ids(&dir)?;
        if (uid, gid) != (peer.uid, peer.gid) {
            return Err(AttestationError::CredentialsChanged);
        }
        // Another user's executable may be unreadable without privileges: no `exe` then.
        let exe = std::fs::read_link(dir.join("exe")).ok();
        // The file the process runs (the link resolves in the kernel, not by its path text).
        let exe_file = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(dir.join("exe")).ok().map(|m| (m.dev(), m.ino()))
        };
        if start_time_ms(&dir)? != started || effective_ids(&dir)? != (uid, gid) {
            return Err(AttestationError::Changed);
        }
        Ok(Caller { uid, gid, pid, exe, exe_file })
    }
}

fn read(path: &Path) -> Result<String, AttestationError> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => AttestationError::ProcessGone,
        _ => AttestationError::Proc(format!("{}: {e}", path.display())),
    })
}

/// Field 22 of `stat` (start time in ticks since boot), in milliseconds.
fn start_time_ms(dir: &Path) -> Result<u64, AttestationError> {
    let stat = read(&dir.join("stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces and parentheses.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or_else(|| malformed("stat"))?;
    let ticks: u64 =
        after_name.split_whitespace().nth(19).and_then(|s| s.parse().ok()).ok_or_else(|| malformed("stat"))?;
    Ok(ticks.saturating_mul(1000 / TICKS_PER_SECOND))
}

/// The effective uid and gid from `status` (`Uid:`/`Gid:` lines: real, effective, saved, fs).
fn effective_ids(dir: &Path) -> Result<(u32, u32), AttestationError> {
    let status = read(&dir.join("status"))?;
    let effective = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|id| id.parse::<u32>().ok())
            .ok_or_else(|| malformed("status"))
    };
    Ok((effective("Uid:")?, effective("Gid:")?))
}

fn malformed(file: &str) -> AttestationError {
    AttestationError::Proc(format!("malformed /proc {file}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `/proc` with one process, `uptime` seconds after boot.
    fn fake_proc(pid: i32, start_ticks: u64, uid: u32, exe: &str) -> wimse_testkit::servers::TempDir {
        let root = wimse_testkit::servers::TempDir::new("attest");
        set_uptime(&root, 1000);
        let dir = root.path().join(pid.to_string());
        std::fs::create_dir(&dir).unwrap();
        let stat = format!(
            "{pid} (my (odd) name) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 1 1 0 0 20 0 1 0 {start_ticks} 1000 100\n"
        );
        std::fs::write(dir.join("stat"), stat).unwrap();
        std::fs::write(
            dir.join("status"),
            format!("Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t20\t20\t20\t20\n"),
        )
        .unwrap();
        std::os::unix::fs::symlink(exe, dir.join("exe")).unwrap();
        root
    }

    fn set_uptime(root: &wimse_testkit::servers::TempDir, seconds: u64) {
        root.write_file("uptime", &format!("{seconds}.00 1500.00\n"));
    }

    /// A connection from `pid` accepted just now.
    fn peer(pid: i32, uid: u32) -> PeerCredentials {
        PeerCredentials { uid, gid: 20, pid: Some(pid), accepted: Instant::now() }
    }

    #[test]
    fn reads_the_process() {
        let root = fake_proc(42, 50_000, 1001, "/usr/bin/payments");
        let attestor = Attestor::with_proc_root(root.path()).unwrap();
        let caller = attestor.attest(&peer(42, 1001)).unwrap();
        assert_eq!(
            (caller.uid, caller.gid, caller.pid, caller.exe.as_deref()),
            (1001, 20, 42, Some(Path::new("/usr/bin/payments")))
        );
    }

    /// A selector names a file: a copy at another inode, or the same path text naming another
    /// file (a bind mount in the caller's namespace), does not match.
    #[test]
    fn executables_are_matched_by_file_not_by_path() {
        let bin = wimse_testkit::servers::TempDir::new("attest-bin");
        let real = bin.write_file("payments", "#!/bin/true\n");
        let copy = bin.write_file("impostor", "#!/bin/true\n");
        let root = fake_proc(42, 50_000, 1001, real.to_str().unwrap());
        let caller = Attestor::with_proc_root(root.path()).unwrap().attest(&peer(42, 1001)).unwrap();
        assert!(caller.runs(&real));
        assert!(!caller.runs(&copy), "same content, another file");
        assert!(!caller.runs(Path::new("/nonexistent/payments")));
        // The caller's namespace names its own binary /usr/bin/payments; the agent's file there differs.
        let root = fake_proc(42, 50_000, 1001, copy.to_str().unwrap());
        let mut caller = Attestor::with_proc_root(root.path()).unwrap().attest(&peer(42, 1001)).unwrap();
        caller.exe = Some(real.clone());
        assert!(!caller.runs(&real));
    }

    #[test]
    fn refuses_reused_pids_changed_credentials_and_gone_processes() {
        // Started at 600 s since boot, the connection was accepted at 500 s: another process.
        let root = fake_proc(42, 60_000, 1001, "/usr/bin/payments");
        let attestor = Attestor::with_proc_root(root.path()).unwrap();
        set_uptime(&root, 500);
        assert_eq!(attestor.attest(&peer(42, 1001)), Err(AttestationError::PidReused));
        // Accepted 1 s ago, boot clock now at 601 s: the process started before.
        set_uptime(&root, 601);
        let earlier =
            PeerCredentials { accepted: Instant::now() - std::time::Duration::from_secs(1), ..peer(42, 1001) };
        assert!(attestor.attest(&earlier).is_ok(), "within the start-time slack");
        set_uptime(&root, 900);
        assert_eq!(attestor.attest(&peer(42, 0)), Err(AttestationError::CredentialsChanged));
        assert_eq!(attestor.attest(&peer(43, 1001)), Err(AttestationError::ProcessGone));
        assert_eq!(attestor.attest(&PeerCredentials { pid: None, ..peer(42, 1001) }), Err(AttestationError::NoPid));
        std::fs::write(root.path().join("42/stat"), "42 (x) S").unwrap();
        assert!(matches!(attestor.attest(&peer(42, 1001)), Err(AttestationError::Proc(_))));
    }

    #[test]
    fn attests_this_process() {
        let attestor = Attestor::new().unwrap();
        let me = std::process::id() as i32;
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let id = |name: &str| -> u32 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse()
                .unwrap()
        };
        let peer = PeerCredentials { uid: id("Uid:"), gid: id("Gid:"), pid: Some(me), accepted: Instant::now() };
        let caller = attestor.attest(&peer).unwrap();
        assert_eq!(caller.exe, std::env::current_exe().ok());
        assert!(caller.runs(&std::env::current_exe().unwrap()));
        // A connection accepted before this process started cannot have come from it.
        let uptime: f64 =
            std::fs::read_to_string("/proc/uptime").unwrap().split_whitespace().next().unwrap().parse().unwrap();
        if let Some(boot) = Instant::now().checked_sub(std::time::Duration::from_secs_f64(uptime - 0.5)) {
            assert_eq!(attestor.attest(&PeerCredentials { accepted: boot, ..peer }), Err(AttestationError::PidReused));
        }
    }
}
