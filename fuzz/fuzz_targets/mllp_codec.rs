//! The MLLP codec on arbitrary bytes in arbitrary reads: it never panics, never yields a frame
//! over the limit or holding a framing byte, never buffers much more than the limit, and
//! yields the same frames, the same error and the same counts however the bytes are split.
#![no_main]

use bytes::{Bytes, BytesMut};
use courier_mllp::MllpCodec;
use courier_mllp::codec::{END_BLOCK, START_BLOCK};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Picks the frame size limit: small ones make oversize frames common.
    limit: u8,
    /// Read boundaries, as offsets modulo the stream length.
    cuts: Vec<u16>,
    /// Whether to also feed the stream one byte per read.
    bytewise: bool,
    stream: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Bytes>,
    error: Option<String>,
    skipped: u64,
    discarded: u64,
}

/// Feeds `chunks` one read at a time, decoding after each until it wants more, stopping at the
/// first error as `Framed` does, then signals end of stream.
fn run(limit: usize, chunks: &[&[u8]]) -> Outcome {
    let mut codec = MllpCodec::new(limit);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut error = None;
    'reads: for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let result = codec.decode(&mut buf);
            // The codec holds at most the limit, plus the read that pushed it over.
            assert!(
                buf.len() <= limit + chunk.len() + 2,
                "{} bytes buffered, limit {limit}",
                buf.len()
            );
            match result {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e.to_string());
                    break 'reads;
                }
            }
        }
    }
    if error.is_none() {
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
    }
    for f in &frames {
        assert!(
            f.len() <= limit,
            "a frame of {} bytes, limit {limit}",
            f.len()
        );
        assert!(!f.iter().any(|&b| b == START_BLOCK || b == END_BLOCK));
    }
    Outcome {
        frames,
        error,
        skipped: codec.skipped_bytes(),
        discarded: codec.discarded_frames(),
    }
}

fuzz_target!(|input: Input| {
    let limit = match input.limit {
        0..=127 => usize::from(input.limit % 16),
        128..=254 => usize::from(input.limit),
        255 => 1 << 20,
    };
    let stream = &input.stream[..];
    let whole = run(limit, &[stream]);

    let mut points: Vec<usize> = input
        .cuts
        .iter()
        .map(|&c| usize::from(c) % (stream.len() + 1))
        .collect();
    points.sort_unstable();
    let mut chunks = Vec::with_capacity(points.len() + 1);
    let mut last = 0;
    for p in points {
        chunks.push(&stream[last..p]);
        last = p;
    }
    chunks.push(&stream[last..]);
    assert_eq!(run(limit, &chunks), whole, "split at {chunks:?}");

    if input.bytewise && stream.len() <= 4096 {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(limit, &bytes), whole, "one byte per read");
    }
});
