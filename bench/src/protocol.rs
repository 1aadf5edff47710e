//! The line protocol between the bench and its child programs (`churn`, `scan-holder`): one
//! JSON message per line on the child's stdout, one command word per line on its stdin.

use std::io::{self, Write as _};

use anyhow::{bail, Result};
use serde::Serialize;

/// Writes `message` as one JSON line on stdout and flushes it (the bench waits for it).
pub fn say(message: &impl Serialize) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, message)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Checks that `line`, read from stdin, is `command`.
pub fn expect(line: &str, command: &str) -> Result<()> {
    if line.trim() != command {
        bail!("expected `{command}` on stdin, got {line:?}");
    }
    Ok(())
}

/// Asserts that each message reads back equal from the line [`say`] writes for it.
#[cfg(test)]
pub fn assert_round_trips<M>(messages: &[M])
where
    M: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    for m in messages {
        let line = serde_json::to_string(m).unwrap();
        assert_eq!(&serde_json::from_str::<M>(&line).unwrap(), m);
    }
}
