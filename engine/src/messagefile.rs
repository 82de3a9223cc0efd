//! Reading HL7 from files as an integrator keeps them: one message, several, a batch, or MLLP
//! frames, with Unix or Windows line endings. `courier send`, `courier parse` and
//! `courier test` read message files the same way.

use std::path::Path;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use courier_hl7::{ParseOptions, split_messages};
use courier_mllp::MllpCodec;
use tokio_util::codec::Decoder;

/// Reads a file of HL7: MLLP frames, or ER7 with one message, several, or a batch. Line
/// endings are normalised to `\r`, as the wire wants them.
pub fn read_messages(path: &Path) -> anyhow::Result<Vec<Bytes>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let start = data
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    if data.get(start) == Some(&0x0b) {
        let mut codec = MllpCodec::new(usize::MAX / 2);
        let mut buf = BytesMut::from(&data[..]);
        let mut frames = Vec::new();
        while let Some(frame) = codec
            .decode_eof(&mut buf)
            .with_context(|| format!("{}: bad MLLP framing", path.display()))?
        {
            frames.push(frame);
        }
        if frames.is_empty() {
            bail!("{}: no complete MLLP frame", path.display());
        }
        return Ok(frames);
    }
    let normalised = normalise_line_endings(&data);
    let batch = split_messages(Bytes::from(normalised), &ParseOptions::default())
        .with_context(|| format!("{}", path.display()))?;
    Ok(batch.messages)
}

/// `\r\n` and `\n` become `\r`; trailing blank lines are dropped.
pub fn normalise_line_endings(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' if data.get(i + 1) == Some(&b'\n') => {
                out.push(b'\r');
                i += 2;
                continue;
            }
            b'\n' => out.push(b'\r'),
            b => out.push(b),
        }
        i += 1;
    }
    while out.ends_with(b"\r\r") {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_endings_become_cr() {
        assert_eq!(
            normalise_line_endings(b"MSH|a\nPID|b\n\n"),
            b"MSH|a\rPID|b\r"
        );
        assert_eq!(
            normalise_line_endings(b"MSH|a\r\nPID|b\r\n"),
            b"MSH|a\rPID|b\r"
        );
        assert_eq!(normalise_line_endings(b"MSH|a\rPID|b"), b"MSH|a\rPID|b");
    }
}
