//! External servers the tests start themselves, on loopback: `redis-server` alone or as a
//! three-node Redis Cluster, and a throwaway PostgreSQL cluster.
//!
//! A test that needs a server it cannot find prints `skipped: <server> not found` and passes,
//! unless `WIMSE_REQUIRE_<SERVER>` is set to a true value (`1`, `true`, `yes` or `on`, in any
//! case; `.ci/run` installs the servers and sets it), in which case a missing server is a
//! failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Finds `binary` on `PATH`.
pub fn find_binary(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(binary)).find(|candidate| candidate.is_file())
}

/// Reads a `WIMSE_REQUIRE_*` value: `Some(true)` for `1`, `true`, `yes`, `on`, `Some(false)`
/// for `0`, `false`, `no`, `off` and the empty string (any case, surrounding blanks ignored),
/// `None` for anything else.
pub fn flag_value(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "" | "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Whether `WIMSE_REQUIRE_<var>` asks for the server `var` (unset: no). A value that is neither
/// true nor false panics: a misspelt setting in CI must not turn into silently skipped tests.
pub fn required(var: &str) -> bool {
    let variable = format!("WIMSE_REQUIRE_{var}");
    match std::env::var(&variable) {
        Err(std::env::VarError::NotPresent) => false,
        Err(std::env::VarError::NotUnicode(_)) => panic!("{variable} is not UTF-8"),
        Ok(value) => flag_value(&value)
            .unwrap_or_else(|| panic!("{variable}={value:?}: expected 1, true, yes or on (or 0, false, no, off)")),
    }
}

/// Prints `skipped: <what>` where it is seen: straight to the process's stderr, since the test
/// harness captures `println!` of passing tests.
pub fn skipped(what: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: {what}");
}

/// `Some(path)` of `binary`, or `None` after printing `skipped: <binary> not found`; panics
/// instead when [`required`]`(var)`.
pub fn require_binary(binary: &str, var: &str) -> Option<PathBuf> {
    if let Some(path) = find_binary(binary) {
        return Some(path);
    }
    if required(var) {
        panic!("{binary} not found, and WIMSE_REQUIRE_{var} requires it");
    }
    skipped(&format!("{binary} not found"));
    None
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server on port {port} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server` on a loopback port, without persistence, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port, or `None` (the test is skipped) when `redis-server` is not
    /// installed and `WIMSE_REQUIRE_REDIS` is not set.
    pub fn start() -> Option<Self> {
        let binary = require_binary("redis-server", "REDIS")?;
        Some(Self::spawn(binary, free_port(), Vec::new()))
    }

    fn spawn(binary: PathBuf, port: u16, extra: Vec<String>) -> Self {
        let mut server = Self { binary, port, extra, child: None };
        server.restart();
        server
    }

    /// The `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Its process id (to read its CPU time), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it if running and starts an empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let mut args = vec![
            "--port".to_owned(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ];
        args.extend(self.extra.iter().cloned());
        let child = Command::new(&self.binary)
            .args(&args)
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        wait_for_port(self.port);
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        signal(self.child.as_ref().expect("running"), "STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        signal(self.child.as_ref().expect("running"), "CONT");
    }

    /// Runs one command and returns its reply as text (for test set-up and assertions).
    pub fn command(&self, args: &[&str]) -> String {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(5)).expect("redis connection");
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        let value: redis::Value = cmd.query(&mut connection).expect("redis command");
        format!("{value:?}")
    }

    /// Number of keys in the current database.
    pub fn key_count(&self) -> usize {
        let reply = self.command(&["DBSIZE"]);
        reply.trim_start_matches("int(").trim_end_matches(')').parse().unwrap_or(usize::MAX)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server must be resumed to die cleanly.
            let _ = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
        }
        self.kill();
    }
}

/// A Redis Cluster of three masters on loopback, slots split evenly, no replicas.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts the cluster, or `None` when `redis-server` is missing (see [`RedisServer::start`]).
    pub fn start() -> Option<Self> {
        let binary = require_binary("redis-server", "REDIS")?;
        let dir = TempDir::new("wimse-redis-cluster");
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                let port = free_port();
                let conf = dir.path().join(format!("nodes-{i}-{port}.conf"));
                let extra = vec![
                    "--cluster-enabled".to_owned(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    conf.display().to_string(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                ];
                RedisServer::spawn(binary.clone(), port, extra)
            })
            .collect();
        let cluster = Self { nodes, _dir: dir };
        cluster.form();
        Some(cluster)
    }

    fn form(&self) {
        const SLOTS: u32 = 16384;
        let per = SLOTS / 3;
        for (i, node) in self.nodes.iter().enumerate() {
            let first = per * i as u32;
            let last = if i == 2 { SLOTS - 1 } else { per * (i as u32 + 1) - 1 };
            node.command(&["CLUSTER", "ADDSLOTSRANGE", &first.to_string(), &last.to_string()]);
        }
        for node in &self.nodes[1..] {
            self.nodes[0].command(&["CLUSTER", "MEET", "127.0.0.1", &node.port().to_string()]);
        }
        self.wait_ok();
    }

    /// Waits (bounded) until every node reports `cluster_state:ok` and knows all three.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self.nodes.iter().all(|n| {
                let info = n.command(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            });
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "the Redis Cluster did not form");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Restarts every node empty and forms the cluster again (data lost on all of them).
    pub fn restart_all_empty(&mut self) {
        for node in &mut self.nodes {
            node.kill();
            // The cluster configuration file would bring the old membership back; start clean.
            if let Some(conf) = node.extra.iter().position(|a| a == "--cluster-config-file") {
                let _ = std::fs::remove_file(&node.extra[conf + 1]);
            }
            node.restart();
        }
        self.form();
    }

    /// Keys held across the cluster.
    pub fn key_count(&self) -> usize {
        self.nodes.iter().map(RedisServer::key_count).sum()
    }
}

/// The processes whose parent is `parent` (from `/proc`).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().is_some_and(|stat| {
                // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    .is_some_and(|ppid| ppid == parent)
            })
        })
        .collect()
}

/// Finds PostgreSQL's server binaries: `postgres` on `PATH`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (where Debian installs them, off `PATH`).
fn find_postgres() -> Option<PathBuf> {
    if let Some(path) = find_binary("postgres") {
        return Some(path.canonicalize().unwrap_or(path));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin/postgres"))))
        .filter(|(_, path)| path.is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, path)| path)
}

fn output(command: &mut Command) -> String {
    let out = command.output().expect("command runs");
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A throwaway PostgreSQL cluster: `initdb` into a temporary directory, `postgres` on a
/// loopback port with trust authentication for the local user `wimse`, its socket inside its
/// data directory, no fsync. As root (which PostgreSQL refuses), it runs as the `postgres`
/// user, else `nobody`. It and its backends are killed when dropped.
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    /// uid and gid to run as, when the tests run as root.
    run_as: Option<(u32, u32)>,
    tls: bool,
    child: Option<Child>,
}

impl PostgresServer {
    /// Creates and starts one on a free port, or `None` (the test is skipped, printing
    /// `skipped: postgres not found`) when PostgreSQL is not installed and
    /// `WIMSE_REQUIRE_POSTGRES` is not set.
    pub fn start() -> Option<Self> {
        let Some(postgres) = find_postgres() else {
            // Not on PATH either: prints the skip line, or panics when it is required.
            require_binary("postgres", "POSTGRES");
            return None;
        };
        let bin = postgres.parent().expect("bin directory").to_path_buf();
        let dir = TempDir::new("wimse-postgres");
        let run_as = (output(Command::new("id").arg("-u")) == "0").then(|| {
            let user = if output(Command::new("getent").arg("passwd")).lines().any(|l| l.starts_with("postgres:")) {
                "postgres"
            } else {
                "nobody"
            };
            let uid = output(Command::new("id").args(["-u", user])).parse().expect("uid");
            let gid = output(Command::new("id").args(["-g", user])).parse().expect("gid");
            (uid, gid)
        });
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the cluster directory");
        }
        let mut server = Self { bin, dir, port: 0, run_as, tls: false, child: None };
        let data = server.data();
        let status = server
            .command("initdb")
            .args(["-D", &data, "-U", "wimse", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed");
        // A port found free may be taken before PostgreSQL binds it (by anything on this
        // machine): PostgreSQL then exits, and another port is tried.
        for _ in 0..5 {
            server.port = free_port();
            if server.launch() {
                return Some(server);
            }
        }
        panic!("postgres did not start on any of 5 free ports");
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// A command for one of the server binaries, as the unprivileged user when needed.
    fn command(&self, binary: &str) -> Command {
        let program = self.bin.join(binary);
        let mut command = match self.run_as {
            Some((uid, gid)) => {
                // setpriv execs in place: the process is PostgreSQL itself, so signals reach it.
                let mut command = Command::new("setpriv");
                command.args([
                    format!("--reuid={uid}"),
                    format!("--regid={gid}"),
                    "--clear-groups".to_owned(),
                    "--".to_owned(),
                ]);
                command.arg(program);
                command
            }
            None => Command::new(program),
        };
        command.current_dir(self.dir.path());
        command
    }

    /// A libpq connection string for the database `postgres` as user `wimse`.
    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=wimse dbname=postgres connect_timeout=5", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client program of the same installation (`pg_dump`, `pg_restore`, `psql`), connecting
    /// to this server as `wimse` over TCP: `-h 127.0.0.1 -p <port> -U wimse` are given.
    pub fn client(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "wimse"]);
        command
    }

    /// Restarts it serving TLS too, with this certificate chain and key (PEM), written into
    /// its data directory owner-only as PostgreSQL requires.
    pub fn enable_tls(&mut self, chain_pem: &str, key_pem: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        let data = self.dir.path().join("data");
        for (name, contents) in [("server.crt", chain_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, contents).expect("write TLS file");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown TLS file");
            }
        }
        self.tls = true;
        self.restart();
    }

    /// Starts it (again) on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.launch(), "postgres exited at start (port {} taken?)", self.port);
    }

    /// Starts the server on `self.port` and waits until it accepts connections; `false` when it
    /// exited instead (the port was taken), so that a listener that is not ours is never
    /// mistaken for it.
    fn launch(&mut self) -> bool {
        let data = self.data();
        let mut command = self.command("postgres");
        if self.tls {
            command.args(["-c", "ssl=on", "-c", "ssl_cert_file=server.crt", "-c", "ssl_key_file=server.key"]);
        }
        command
            .args(["-D", &data, "-p", &self.port.to_string(), "-k", &data])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command.spawn().expect("postgres starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            assert!(Instant::now() < deadline, "postgres on port {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
        // Accepting TCP is not yet accepting queries; callers retry their first connection.
        std::thread::sleep(Duration::from_millis(300));
        // Still running: the port it listens on is its own.
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        self.child = Some(child);
        true
    }

    /// Signals the server and every process it started (each backend is a process group of
    /// its own, so signalling the group is not enough).
    fn signal_group(&self, name: &str) {
        let child = self.child.as_ref().expect("running");
        let mut pids = vec![child.id()];
        pids.extend(children_of(child.id()));
        // A backend may exit between listing and signalling: its "no such process" is fine.
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .args(pids.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status();
        assert!(status.is_ok(), "kill -{name} failed");
    }

    /// Freezes every process of the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal_group("STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        self.signal_group("CONT");
    }

    /// Stops it (fast shutdown; the data stays).
    pub fn stop(&mut self) {
        if self.child.is_some() {
            self.signal_group("CONT");
            self.signal_group("INT");
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let mut pids = vec![child.id()];
            pids.extend(children_of(child.id()));
            let _ =
                Command::new("kill").arg("-KILL").args(pids.iter().map(u32::to_string)).stderr(Stdio::null()).status();
            let _ = child.wait();
        }
    }
}

/// A temporary directory removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/<prefix>-<pid>-<n>`.
    pub fn new(prefix: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        Self(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to the file `name` in it; returns the file's path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write a temporary file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Python with Authlib, Flask and joserfc: `WIMSE_OAUTH_PYTHON`, else `python3` on `PATH`.
/// Without one, prints `skipped: authlib not found` and returns `None`, or panics when
/// [`required`]`("OAUTH_AS")`.
pub fn oauth_python() -> Option<PathBuf> {
    let candidates =
        std::env::var_os("WIMSE_OAUTH_PYTHON").map(PathBuf::from).into_iter().chain(find_binary("python3"));
    for python in candidates {
        let ok = Command::new(&python)
            .args(["-c", "import authlib, flask, joserfc"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(python);
        }
    }
    if required("OAUTH_AS") {
        panic!(
            "no Python with authlib, flask and joserfc (WIMSE_OAUTH_PYTHON), and WIMSE_REQUIRE_OAUTH_AS requires it"
        );
    }
    skipped("authlib not found");
    None
}

/// The third-party OAuth fixture (Authlib server, joserfc client).
pub fn authlib_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oauth/authlib_fixture.py")
}

/// An RFC 7523 authorization server built on Authlib, on a loopback port, trusting one platform
/// issuer with the given JWKS. Killed when dropped.
#[derive(Debug)]
pub struct AuthlibServer {
    port: u16,
    _dir: TempDir,
    child: Child,
}

impl AuthlibServer {
    /// Starts it, or `None` when no suitable Python is installed (see [`oauth_python`]).
    pub fn start(issuer: &str, jwks: &serde_json::Value) -> Option<Self> {
        let python = oauth_python()?;
        let port = free_port();
        let dir = TempDir::new("wimse-authlib");
        let config = serde_json::json!({
            "issuer": issuer, "jwks": jwks, "port": port,
            "token_endpoint": format!("http://127.0.0.1:{port}/token"),
        });
        let path = dir.write_file("config.json", &config.to_string());
        let child = Command::new(python)
            .arg(authlib_fixture())
            .arg("server")
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the Authlib server starts");
        wait_for_port(port);
        Some(Self { port, _dir: dir, child })
    }

    /// Its token endpoint (also the audience it requires).
    pub fn token_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }
}

impl Drop for AuthlibServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Shared Signals transmitter written on joserfc and Flask (`oauth/ssf_transmitter.py`), on
/// a loopback port, with one poll stream per `(bearer token, audience)`. Killed when dropped.
#[derive(Debug)]
pub struct SsfTransmitter {
    port: u16,
    _dir: TempDir,
    child: Child,
}

impl SsfTransmitter {
    /// Starts it, or `None` when no suitable Python is installed (see [`oauth_python`]).
    pub fn start(issuer: &str, streams: &[(&str, &str)]) -> Option<Self> {
        let python = oauth_python()?;
        let port = free_port();
        let dir = TempDir::new("wimse-ssf");
        let streams: Vec<serde_json::Value> =
            streams.iter().map(|(token, audience)| serde_json::json!({"token": token, "audience": audience})).collect();
        let config = serde_json::json!({ "issuer": issuer, "port": port, "streams": streams });
        let path = dir.write_file("config.json", &config.to_string());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("oauth/ssf_transmitter.py");
        let child = Command::new(python)
            .arg(script)
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the SSF transmitter starts");
        wait_for_port(port);
        Some(Self { port, _dir: dir, child })
    }

    /// Its base URL (`/jwks`, `/emit`, `/poll`, `/errors`).
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for SsfTransmitter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::flag_value;

    #[test]
    fn require_flags_accept_every_usual_spelling() {
        for yes in ["1", "true", "TRUE", "True", "yes", "Yes", "on", "ON", " 1 "] {
            assert_eq!(flag_value(yes), Some(true), "{yes:?}");
        }
        for no in ["", "0", "false", "FALSE", "no", "No", "off", "OFF"] {
            assert_eq!(flag_value(no), Some(false), "{no:?}");
        }
        for unknown in ["2", "y", "enabled", "tru", "1 1"] {
            assert_eq!(flag_value(unknown), None, "{unknown:?}");
        }
    }
}

/// A process of a test (a proxy, a non-Rust application), on a loopback port, killed when
/// dropped.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    port: u16,
    name: &'static str,
}

impl Spawned {
    /// Starts `command` and waits (10 s at most) until `port` accepts connections; panics with
    /// `log`'s content if the process exits first.
    fn start(name: &'static str, mut command: Command, port: u16, log: &Path) -> Self {
        let mut child = command.spawn().unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("{name} exited ({status}) before listening on {port}:\n{log}");
            }
            assert!(Instant::now() < deadline, "{name} did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, name }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its process id (for nginx, the master's: its workers are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.name;
    }
}

/// `nginx` (on `PATH`, or Debian's `/usr/sbin/nginx`), or `None` after `skipped: nginx not
/// found` unless `WIMSE_REQUIRE_NGINX` is set.
fn nginx_binary() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/sbin/nginx");
    if find_binary("nginx").is_none() && debian.is_file() {
        return Some(debian);
    }
    require_binary("nginx", "NGINX")
}

/// Starts nginx in `dir` (its configuration, logs, temporary files and pid file live there) on
/// `port` (from [`free_port`]), with one `server` block that includes `server_include` verbatim, and the
/// `upstreams` (name, loopback port) it names. `None`: nginx is not installed (skipped).
pub fn start_nginx(dir: &Path, port: u16, server_include: &Path, upstreams: &[(&str, u16)]) -> Option<Spawned> {
    let binary = nginx_binary()?;
    let d = dir.display();
    let upstream_blocks: String = upstreams
        .iter()
        .map(|(name, port)| format!("  upstream {name} {{ server 127.0.0.1:{port}; keepalive 32; }}\n"))
        .collect();
    let conf = format!(
        "worker_processes 1;\nerror_log {d}/nginx-error.log info;\npid {d}/nginx.pid;\nevents {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/nginx-body;\n  proxy_temp_path {d}/nginx-proxy;\n\
         fastcgi_temp_path {d}/nginx-fastcgi;\n  uwsgi_temp_path {d}/nginx-uwsgi;\n  scgi_temp_path {d}/nginx-scgi;\n\
         {upstream_blocks}  server {{\n    listen 127.0.0.1:{port};\n    include {};\n  }}\n}}\n",
        server_include.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx.conf");
    let mut command = Command::new(binary);
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Some(Spawned::start("nginx", command, port, &dir.join("nginx-error.log")))
}

/// Starts Caddy in `dir` on `port` (from [`free_port`]): global options for a test (no admin endpoint, no
/// automatic HTTPS, state kept in `dir`), then `import` of `caddyfile` verbatim, with `env`
/// and `WIMSE_SITE=http://127.0.0.1:<port>` for its `{$VAR}` placeholders. `None`: Caddy is
/// not installed and `WIMSE_REQUIRE_CADDY` is not set (skipped).
pub fn start_caddy(dir: &Path, port: u16, caddyfile: &Path, env: &[(&str, String)]) -> Option<Spawned> {
    let binary = require_binary("caddy", "CADDY")?;
    let conf = format!("{{\n\tadmin off\n\tauto_https off\n}}\nimport {}\n", caddyfile.display());
    let path = dir.join("Caddyfile.test");
    std::fs::write(&path, conf).expect("Caddyfile");
    let log = dir.join("caddy.log");
    let mut command = Command::new(binary);
    command
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("XDG_DATA_HOME", dir)
        .env("XDG_CONFIG_HOME", dir)
        .env("HOME", dir)
        .env("WIMSE_SITE", format!("http://127.0.0.1:{port}"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map(Stdio::from).unwrap_or_else(|_| Stdio::null()));
    Some(Spawned::start("caddy", command, port, &log))
}

/// Runs `python3 script <port>` on a free port with `env`, its output in `dir/<name>.log`.
/// `None`: no `python3` (skipped unless `WIMSE_REQUIRE_PYTHON` is set).
pub fn start_python(dir: &Path, name: &'static str, script: &Path, env: &[(&str, String)]) -> Option<Spawned> {
    let binary = require_binary("python3", "PYTHON")?;
    let port = free_port();
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("log");
    let mut command = Command::new(binary);
    command
        .arg("-u")
        .arg(script)
        .arg(port.to_string())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(out.try_clone().map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
        .stderr(Stdio::from(out));
    Some(Spawned::start(name, command, port, &log))
}
