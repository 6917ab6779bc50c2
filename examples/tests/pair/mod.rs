//! An example pair on loopback: a server in its own process, whose first line says where it
//! serves and whose second line is the command that runs its client, ending ` -- ARGS`.
// Each test binary including this module uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Output, Stdio};

/// The server process, killed (and its demo directory removed) when dropped.
pub(crate) struct Server {
    child: Child,
    dir: Option<String>,
    /// Its first line (where it serves).
    pub(crate) first_line: String,
    /// The arguments of the client command it printed.
    pub(crate) client_args: Vec<String>,
    /// Its output after those two lines.
    pub(crate) lines: Lines<BufReader<ChildStdout>>,
}

impl Server {
    /// Starts `binary` on `127.0.0.1:0`; its last client argument is the demo directory.
    pub(crate) fn start(binary: &str) -> Self {
        let mut child =
            Command::new(binary).arg("127.0.0.1:0").stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first_line = lines.next().unwrap().unwrap();
        let command = lines.next().unwrap().unwrap();
        let client_args: Vec<String> =
            command.rsplit_once(" -- ").expect(&command).1.split(' ').map(str::to_owned).collect();
        let dir = client_args.last().cloned();
        Self { child, dir, first_line, client_args, lines }
    }

    /// Runs the client `binary` with the arguments the server printed; it must succeed.
    pub(crate) fn run_client(&self, binary: &str) -> String {
        let out: Output = Command::new(binary).args(&self.client_args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Killed, the server does not clean up after itself.
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
