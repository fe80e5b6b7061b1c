//! Progress for long steps: what is happening, and how long it took.
use std::time::Instant;

pub fn run<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    eprintln!("==> {what}…");
    let started = Instant::now();
    let result = f();
    match &result {
        Ok(_) => eprintln!("    done: {what} ({:.1}s)", started.elapsed().as_secs_f64()),
        Err(_) => eprintln!("    FAILED: {what} ({:.1}s)", started.elapsed().as_secs_f64()),
    }
    result
}

pub fn note(message: &str) {
    eprintln!("    {message}");
}
