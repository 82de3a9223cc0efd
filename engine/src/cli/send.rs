//! `courier send`: sends HL7 files to an MLLP receiver and prints each ACK.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use courier_hl7::{LineEndings, Message, ParseOptions, ReceivedAck, split_messages};
use courier_mllp::{ClientSettings, MllpClient, MllpCodec};
use tokio_util::codec::Decoder;

/// Sends every message of every file, in order, over one connection.
pub fn send(files: &[PathBuf], to: &str, timeout: Duration, raw: bool) -> anyhow::Result<ExitCode> {
    let mut batches = Vec::new();
    for f in files {
        let messages = if raw {
            vec![Bytes::from(
                std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
            )]
        } else {
            read_messages(f)?
        };
        batches.push((f, messages));
    }
    super::runtime()?.block_on(async {
        let mut client = MllpClient::new(to, ClientSettings::default());
        let (mut accepted, mut refused) = (0usize, 0usize);
        for (file, messages) in batches {
            for (i, payload) in messages.into_iter().enumerate() {
                let label = format!("{}#{}", file.display(), i + 1);
                let control_id = Message::parse_with(payload.clone(), &lenient())
                    .ok()
                    .and_then(|m| m.control_id())
                    .unwrap_or_default();
                let reply = client
                    .request(&payload, timeout)
                    .await
                    .with_context(|| format!("{label}: sending to {to}"))?;
                match ReceivedAck::parse(&reply) {
                    Ok(ack) => {
                        let mut line = format!("{label}\t{control_id}\t{}", ack.code.as_str());
                        for t in ack.text.iter().chain(&ack.errors) {
                            line.push('\t');
                            line.push_str(t);
                        }
                        let echoed = ack.control_id == control_id;
                        if !echoed {
                            line.push_str(&format!(
                                "\tMSA-2 `{}` does not match the control id sent",
                                ack.control_id
                            ));
                        }
                        println!("{line}");
                        if ack.code.is_accept() && echoed {
                            accepted += 1;
                        } else {
                            refused += 1;
                        }
                    }
                    Err(e) => {
                        println!("{label}\t{control_id}\tunreadable ACK: {e}");
                        refused += 1;
                    }
                }
            }
        }
        eprintln!("{accepted} accepted, {refused} not accepted");
        Ok(if refused == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

fn lenient() -> ParseOptions {
    ParseOptions {
        line_endings: LineEndings::Lenient,
        ..ParseOptions::default()
    }
}

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
fn normalise_line_endings(data: &[u8]) -> Vec<u8> {
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
