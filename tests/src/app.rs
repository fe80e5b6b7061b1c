//! Shared by the test app (src/bin/testapp.rs) and the tests: the deterministic byte pattern the
//! app serves, and its hash.
use sha2::{Digest as _, Sha256};

/// Byte `i` of the pattern `/bytes/N` serves (a period of 251, so misplaced chunks show).
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Fills `buf` with the pattern starting at `offset`.
pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + i as u64);
    }
}

/// Hex SHA-256 of the first `n` bytes of the pattern.
pub fn pattern_sha256(n: u64) -> String {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut offset = 0;
    while offset < n {
        let len = (n - offset).min(buf.len() as u64) as usize;
        fill_pattern(&mut buf[..len], offset);
        hasher.update(&buf[..len]);
        offset += len as u64;
    }
    hex(&hasher.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The marker the app puts in every `GET /` body: tests look for it on the wire.
pub const MARKER: &str = "LOCKMESH-PLAINTEXT-MARKER";
