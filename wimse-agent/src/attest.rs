//! Who is calling: the kernel's peer credentials of the socket (uid, gid, pid, recorded when
//! the caller connected) and what `/proc/<pid>` says about that process.
//!
//! A connection is attested once, when the agent accepts it: the process, its start time and
//! the executable file it runs are recorded ([`ConnectedPeer`]). Each call on the connection is
//! attested again and must find the same process running the same executable file: a process
//! that connected and then called `exec` (and any process it handed the connection to, such as a
//! child that kept the socket across a fork) is refused with
//! [`AttestationError::ExecutableChanged`], a connecting process that exited with
//! [`AttestationError::ProcessGone`]. Re-executing the same file is not a change.
//!
//! A pid can be reused: the caller may exit and another process may get its pid before the
//! agent reads `/proc`. Where the kernel gives a pidfd for the peer (`SO_PEERPIDFD`, Linux 6.5
//! and later), the accept-time attestation checks through it that the process read in `/proc`
//! is the one that connected; later calls require the same start time. On older kernels the
//! start time must precede the accept. A process whose effective uid or gid differs from the
//! socket's (setuid since connecting), or that changes while it is read, is refused too.
//!
//! What remains possible: a process that calls `exec` between its `connect` and the agent's
//! accept-time attestation (microseconds when the agent is idle, longer when it is busy) is
//! attested as the executable it started, and so is any process holding that connection. More
//! generally an `exe` selector identifies a binary, not who controls the process running it:
//! whoever can start that binary chooses its environment (`LD_PRELOAD`, a debugger, the race
//! above) and can obtain its identity. `uid`/`gid` selectors do not depend on the executable;
//! combine `exe` with a `uid` that only the intended workload runs as where that matters. The
//! connection is served as long as its connecting process runs the attested file: a process it
//! hands the socket to while it does (by `fork`, or over `SCM_RIGHTS`) is served as it. On
//! older kernels, a connecting process that exits and whose pid is taken by a process started
//! before the accept is not told apart.
//!
//! An `exe` selector is matched by the file, not by its path: the device and inode behind
//! `/proc/<pid>/exe` must be those of the configured path as the agent sees it. A path is only
//! a name in the caller's mount namespace, where an unprivileged user namespace can bind-mount
//! any binary over `/usr/bin/payments`.

use std::os::fd::{AsFd, OwnedFd};
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
    /// When the process started, in milliseconds since boot (10 ms resolution).
    pub started_ms: u64,
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
    #[error("the process that opened this connection has exited")]
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
    /// The connecting process runs another executable file than when its connection was
    /// accepted: it called `exec` since (the connection may be held by another process).
    #[error(
        "the process that opened this connection runs another executable than when it connected (exec after connect); open a new connection"
    )]
    ExecutableChanged,
}

impl AttestationError {
    /// A short name for metrics and logs (`wimse_agent_refused_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoPid => "no_pid",
            Self::ProcessGone => "process_gone",
            Self::PidReused => "pid_reused",
            Self::CredentialsChanged => "credentials_changed",
            Self::Changed => "process_changed",
            Self::Proc(_) => "proc_unreadable",
            Self::ExecutableChanged => "executable_changed",
        }
    }
}

/// A connection's peer, attested when the agent accepted the connection.
#[derive(Debug, Clone)]
pub struct ConnectedPeer {
    /// The socket's peer credentials.
    pub credentials: PeerCredentials,
    /// The connecting process at accept time, or why it could not be attested.
    pub at_accept: Result<Caller, AttestationError>,
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
        Ok(Caller { uid, gid, pid, exe, exe_file, started_ms: started })
    }

    /// Attests a connection as it is accepted. `pidfd` (from [`peer_pidfd`]) proves that the
    /// process read in `/proc` is the one that connected, not a later owner of its pid. Reads
    /// `/proc`: call it off the async runtime's threads.
    pub fn attest_connection(&self, credentials: PeerCredentials, pidfd: Option<OwnedFd>) -> ConnectedPeer {
        let at_accept = self.attest(&credentials).and_then(|caller| {
            // After the reads: a pidfd's process still holding the pid held it all along.
            match pidfd.map(|fd| pidfd_pid(&fd)).transpose()? {
                Some(pid) if pid != caller.pid => Err(AttestationError::ProcessGone),
                _ => Ok(caller),
            }
        });
        ConnectedPeer { credentials, at_accept }
    }

    /// Attests a call on the connection of `peer`: the process that connected, still running
    /// the executable it ran when the connection was accepted. Reads `/proc`: call it off the
    /// async runtime's threads.
    pub fn attest_call(&self, peer: &ConnectedPeer) -> Result<Caller, AttestationError> {
        let accepted = peer.at_accept.as_ref().map_err(Clone::clone)?;
        let now = self.attest(&peer.credentials)?;
        if now.started_ms != accepted.started_ms {
            return Err(AttestationError::PidReused);
        }
        match (accepted.exe_file, now.exe_file) {
            (Some(_), None) => Err(AttestationError::ProcessGone), // a zombie has no executable
            (before, after) if before != after => Err(AttestationError::ExecutableChanged),
            _ => Ok(now),
        }
    }
}

/// A pidfd for the process at the other end of `socket` (`SO_PEERPIDFD`), where the kernel
/// offers one (Linux 6.5 and later); `None` elsewhere.
pub fn peer_pidfd(socket: &impl AsFd) -> Option<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::PeerPidfd).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        None
    }
}

/// The pid of a pidfd's process (`Pid:` in its fdinfo), or `ProcessGone` once it has exited
/// and been reaped (`-1`), when its pid may belong to another process.
fn pidfd_pid(pidfd: &OwnedFd) -> Result<i32, AttestationError> {
    use std::os::fd::AsRawFd;
    let info = read(Path::new(&format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())))?;
    let pid = info
        .lines()
        .find_map(|line| line.strip_prefix("Pid:"))
        .and_then(|pid| pid.trim().parse::<i32>().ok())
        .ok_or_else(|| malformed("fdinfo of a pidfd"))?;
    if pid > 0 { Ok(pid) } else { Err(AttestationError::ProcessGone) }
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

    /// A call is served while the connecting process runs the file it ran at accept; another
    /// file (an exec since), a new start time (pid reuse) or no process is refused, and an
    /// accept-time failure stays.
    #[test]
    fn calls_need_the_process_and_executable_of_the_accept() {
        let bin = wimse_testkit::servers::TempDir::new("attest-exec");
        let python = bin.write_file("python", "#!/bin/true\n");
        let sleeper = bin.write_file("sleeper", "#!/bin/true\n");
        let root = fake_proc(42, 50_000, 1001, python.to_str().unwrap());
        let attestor = Attestor::with_proc_root(root.path()).unwrap();
        let connected = attestor.attest_connection(peer(42, 1001), None);
        let at_accept = connected.at_accept.clone().unwrap();
        assert!(at_accept.runs(&python));
        assert_eq!(attestor.attest_call(&connected), Ok(at_accept.clone()));

        let exe = root.path().join("42/exe");
        std::fs::remove_file(&exe).unwrap();
        std::os::unix::fs::symlink(&sleeper, &exe).unwrap();
        assert_eq!(attestor.attest_call(&connected), Err(AttestationError::ExecutableChanged));
        // The same file again (a re-exec) is no change.
        std::fs::remove_file(&exe).unwrap();
        std::os::unix::fs::symlink(&python, &exe).unwrap();
        assert_eq!(attestor.attest_call(&connected), Ok(at_accept));
        // A zombie has no executable any more.
        std::fs::remove_file(&exe).unwrap();
        assert_eq!(attestor.attest_call(&connected), Err(AttestationError::ProcessGone));
        std::os::unix::fs::symlink(&python, &exe).unwrap();

        // Another process with the pid, started (a tick) later.
        let stat = std::fs::read_to_string(root.path().join("42/stat")).unwrap();
        std::fs::write(root.path().join("42/stat"), stat.replace(" 50000 ", " 50001 ")).unwrap();
        assert_eq!(attestor.attest_call(&connected), Err(AttestationError::PidReused));
        std::fs::remove_dir_all(root.path().join("42")).unwrap();
        assert_eq!(attestor.attest_call(&connected), Err(AttestationError::ProcessGone));

        let refused = attestor.attest_connection(peer(43, 1001), None);
        assert_eq!(refused.at_accept, Err(AttestationError::ProcessGone));
        assert_eq!(attestor.attest_call(&refused), Err(AttestationError::ProcessGone));
    }

    /// Through a pidfd, a peer that exited and was reaped before the accept is told apart from
    /// a process that has its pid now (here: a fake `/proc` entry that started earlier).
    #[tokio::test]
    async fn a_pidfd_tells_the_connecting_process_from_a_later_owner_of_its_pid() {
        // This process on both ends: its own pid.
        let (ours, _theirs) = tokio::net::UnixStream::pair().unwrap();
        let Some(pidfd) = peer_pidfd(&ours) else {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "skipped: no SO_PEERPIDFD (Linux 6.5+)");
            return;
        };
        assert_eq!(pidfd_pid(&pidfd), Ok(std::process::id() as i32));

        let Some(python) = wimse_testkit::servers::find_binary("python3") else {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "skipped: python3 not found");
            return;
        };
        let dir = wimse_testkit::servers::TempDir::new("attest-pidfd");
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let connect = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])";
        let status = tokio::process::Command::new(python).args(["-c", connect]).arg(&path).status().await.unwrap();
        assert!(status.success(), "connected, exited, reaped");
        let (stream, _) = listener.accept().await.unwrap();
        let cred = stream.peer_cred().unwrap();
        let pid = cred.pid().unwrap();
        let pidfd = peer_pidfd(&stream).expect("a pidfd");
        assert_eq!(pidfd_pid(&pidfd), Err(AttestationError::ProcessGone));

        // `/proc` shows a process with that pid, started before the accept and with the same uid.
        let root = fake_proc(pid, 50_000, cred.uid(), "/usr/bin/payments");
        let status = std::fs::read_to_string(root.path().join(format!("{pid}/status"))).unwrap();
        let gid = cred.gid();
        std::fs::write(root.path().join(format!("{pid}/status")), status.replace("\t20", &format!("\t{gid}"))).unwrap();
        let attestor = Attestor::with_proc_root(root.path()).unwrap();
        let credentials = PeerCredentials { uid: cred.uid(), gid, pid: Some(pid), accepted: Instant::now() };
        assert!(attestor.attest_connection(credentials, None).at_accept.is_ok(), "without the pidfd: fooled");
        let connected = attestor.attest_connection(credentials, Some(pidfd));
        assert_eq!(connected.at_accept, Err(AttestationError::ProcessGone));
    }
}
