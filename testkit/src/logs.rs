//! Captures every `tracing` event of the test process (all threads: actix workers and tokio
//! tasks included) as text, so tests can assert what was logged — and what was not.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// The captured log lines (`LEVEL target: message field=value ...`, no colours).
#[derive(Debug, Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

struct Writer(Arc<Mutex<Vec<u8>>>);

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// The process-wide capture, installed on first use as the global subscriber.
    pub fn global() -> &'static Logs {
        static LOGS: OnceLock<Logs> = OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let buffer = logs.0.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::TRACE)
                .with_writer(move || Writer(buffer.clone()))
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber in tests");
            logs
        })
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// The lines that contain every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.text().lines().filter(|line| needles.iter().all(|n| line.contains(n))).map(str::to_owned).collect()
    }
}
