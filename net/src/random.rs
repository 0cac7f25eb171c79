//! Random ids and numbers from the operating system's generator. A failing generator
//! is an error, never a weaker fallback.

use crate::{Error, Result};

/// Fills `out` from the operating system's generator.
pub fn fill(out: &mut [u8]) -> Result<()> {
    getrandom::getrandom(out).map_err(Error::Random)
}

/// A session or request id: 128 random bits, as 32 hex digits.
pub fn id() -> Result<String> {
    let mut bytes = [0u8; 16];
    fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// A random `u32` (e.g. an RTP SSRC).
pub fn u32() -> Result<u32> {
    let mut bytes = [0u8; 4];
    fill(&mut bytes)?;
    Ok(u32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn ids_are_32_hex_digits_and_differ() {
        let (a, b) = (super::id().unwrap(), super::id().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
