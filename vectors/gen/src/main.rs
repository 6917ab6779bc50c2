//! Writes the conformance vectors into `vectors/`, or with `--check` says whether the committed
//! files are current (exit status 1 when one differs).

use std::process::ExitCode;

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => {
            eprintln!("usage: wimse-vectors [--check]   (unknown argument {other:?})");
            return ExitCode::from(2);
        }
    };
    let dir = wimse_vectors::vectors_dir();
    let mut stale = 0;
    for (name, text) in wimse_vectors::files() {
        let path = dir.join(name);
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() == Some(text.as_str()) {
            println!("{name}: current");
        } else if check {
            println!("{name}: differs from what the generator writes");
            stale += 1;
        } else if let Err(error) = std::fs::write(&path, &text) {
            eprintln!("{}: {error}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("{name}: written");
        }
    }
    if stale > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
