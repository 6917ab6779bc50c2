//! Reading inputs and writing outputs.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use wimse_core::jose::{Jwk, SigningKey};

use crate::Output;

/// Inputs larger than this are refused: no command needs more, and nothing is read unbounded.
const MAX_INPUT: u64 = 1 << 20;

/// Reads a file, or standard input for `-`.
pub(crate) fn read_input(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin().take(MAX_INPUT + 1).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_INPUT + 1).read_to_end(&mut bytes))
    };
    read.map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_INPUT {
        return Err(format!("{}: larger than {MAX_INPUT} bytes", path.display()));
    }
    Ok(bytes)
}

pub(crate) fn read_text(path: &Path) -> Result<String, String> {
    String::from_utf8(read_input(path)?).map_err(|_| format!("{}: not UTF-8", path.display()))
}

/// A token file's content without surrounding whitespace.
pub(crate) fn read_token(path: &Path) -> Result<String, String> {
    Ok(read_text(path)?.trim().to_owned())
}

pub(crate) fn read_jwk(path: &Path) -> Result<Jwk, String> {
    Jwk::from_json(&read_text(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

pub(crate) fn read_signing_key(path: &Path) -> Result<SigningKey, String> {
    SigningKey::from_jwk(&read_jwk(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

pub(crate) fn write_output(out: &Output, text: &str) -> Result<(), String> {
    match &out.out {
        Some(path) => std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display())),
        None => std::io::stdout().write_all(text.as_bytes()).map_err(|e| e.to_string()),
    }
}

/// Writes private key material: owner-only (0600), through an exclusive temporary file and a
/// rename; to standard output without `-o`.
pub(crate) fn write_private(out: Option<&Path>, text: &str) -> Result<(), String> {
    match out {
        Some(path) => wimse_core::client::cred::write_atomically(path, text.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display())),
        None => std::io::stdout().write_all(text.as_bytes()).map_err(|e| e.to_string()),
    }
}

pub(crate) fn now_or(now: Option<u64>) -> u64 {
    now.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}
