//! The MLLP frame codec: bytes in, payloads out, and back.
//!
//! A frame is `<VT 0x0B> payload <FS 0x1C><CR 0x0D>`. [`MllpCodec`] plugs into
//! `tokio_util::codec::Framed`, so the listener and the client never touch the framing bytes
//! themselves, and it is tested byte by byte without a socket. It knows nothing of what the
//! payload means: HL7 parsing lives elsewhere.
//!
//! # Leniency, and what happens to bad input
//!
//! Senders in the field get MLLP wrong in a few well-known ways; the codec absorbs them and
//! counts what it threw away, so the connection can log it (counts only — payload bytes carry
//! patient data and are never handed to a logger from here):
//!
//! * **Bytes before a start block** (line noise, a stray `\n` after the end block, a sender
//!   that never sends `<VT>`) are dropped as they arrive and counted: [`skipped_bytes`],
//!   [`take_skipped`].
//! * **A start block inside an open frame** means the previous frame was never closed: the
//!   unfinished frame is discarded, counted ([`discarded_frames`], [`take_discarded`]), and the
//!   new frame starts at the new `<VT>`.
//! * **`<FS>` not followed by `<CR>`**: some senders omit the `<CR>`. `<FS>` alone ends the
//!   frame, and the payload is yielded at once — the codec never waits for the byte after
//!   `<FS>`, which would hang a sender that omits `<CR>` and then waits for its ACK. If the next
//!   byte to arrive is `<CR>` it is consumed as the rest of the end block; any other byte is
//!   left alone and decoded as usual (a `<VT>` starts the next frame, anything else is skipped).
//! * **A frame over the limit** fails with [`CodecError::FrameTooLarge`] as soon as the
//!   buffered payload exceeds `max_frame_size`, so a stream that never sends an end block
//!   holds at most about one limit's worth of memory. The buffer is then cleared and the
//!   codec goes back to looking for a start block; callers are expected to close the
//!   connection (`Framed` stops reading after any decode error).
//! * **End of stream inside a frame** is reported by [`Decoder::decode_eof`] as
//!   [`CodecError::Truncated`] with the number of payload bytes that were buffered: the sender
//!   cannot have had an ACK for it, so it is not lost, but the connection should say so.
//!
//! [`skipped_bytes`]: MllpCodec::skipped_bytes
//! [`take_skipped`]: MllpCodec::take_skipped
//! [`discarded_frames`]: MllpCodec::discarded_frames
//! [`take_discarded`]: MllpCodec::take_discarded

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Start block: `<VT>`, vertical tab.
pub const START_BLOCK: u8 = 0x0B;
/// First byte of the end block: `<FS>`, file separator.
pub const END_BLOCK: u8 = 0x1C;
/// Second byte of the end block: `<CR>`, carriage return.
pub const CARRIAGE_RETURN: u8 = 0x0D;

/// Default limit on one frame's payload: 16 MiB. Large enough for an ORU with an embedded
/// PDF; small enough that a runaway sender cannot exhaust memory.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;

/// What went wrong while framing or unframing.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A frame's payload exceeded the configured limit. When decoding this is raised as soon
    /// as the buffered payload passes the limit, before the end block arrives.
    #[error("frame exceeds the max_frame_size limit of {limit} bytes")]
    FrameTooLarge {
        /// The `max_frame_size` limit in force, in bytes.
        limit: usize,
    },
    /// The stream ended inside a frame (start block seen, no end block).
    #[error("stream ended inside a frame with {buffered} payload bytes buffered")]
    Truncated {
        /// How many payload bytes had been received for the unfinished frame.
        buffered: usize,
    },
    /// A payload given to the encoder contains a byte that would end or restart the frame
    /// on the wire, so the peer would see different frames than were sent.
    #[error("payload byte {byte:#04x} at offset {offset} is reserved for MLLP framing")]
    ReservedByte {
        /// The offending byte (`<VT>` or `<FS>`).
        byte: u8,
        /// Its offset in the payload.
        offset: usize,
    },
    /// Reading or writing the underlying stream failed.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
}

/// Where the decoder is between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Outside a frame, looking for a start block.
    Idle,
    /// Inside a frame; the buffer holds payload only (the `<VT>` is consumed). `scanned`
    /// payload bytes are known to hold neither `<FS>` nor `<VT>`, so a frame arriving in
    /// many small reads is scanned once, not once per read.
    InFrame { scanned: usize },
    /// A frame just ended at `<FS>`; a `<CR>`, if it comes next, belongs to that end block.
    AfterEnd,
}

/// MLLP framing for `tokio_util::codec::Framed`: decodes payloads (without the framing
/// bytes) and encodes payloads into frames.
///
/// The decoded payload is split off the read buffer without copying. See the
/// [module documentation](self) for how malformed input is handled.
#[derive(Debug, Clone)]
pub struct MllpCodec {
    max_frame_size: usize,
    state: State,
    skipped_bytes: u64,
    discarded_frames: u64,
    untaken_skipped: u64,
    untaken_discarded: u64,
}

impl MllpCodec {
    /// A codec whose frames may carry at most `max_frame_size` payload bytes, in either
    /// direction.
    pub fn new(max_frame_size: usize) -> Self {
        Self {
            max_frame_size,
            state: State::Idle,
            skipped_bytes: 0,
            discarded_frames: 0,
            untaken_skipped: 0,
            untaken_discarded: 0,
        }
    }

    /// The payload size limit this codec enforces.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// Total bytes skipped outside frames since the codec was created.
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped_bytes
    }

    /// Bytes skipped outside frames since the last call; resets the count to zero. The
    /// connection calls this after each decoded frame to log each occurrence once.
    pub fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.untaken_skipped)
    }

    /// Total unfinished frames discarded because a new start block arrived inside them.
    pub fn discarded_frames(&self) -> u64 {
        self.discarded_frames
    }

    /// Unfinished frames discarded since the last call; resets the count to zero.
    pub fn take_discarded(&mut self) -> u64 {
        std::mem::take(&mut self.untaken_discarded)
    }

    fn skip(&mut self, buf: &mut BytesMut, n: usize) {
        buf.advance(n);
        self.skipped_bytes += n as u64;
        self.untaken_skipped += n as u64;
    }

    /// Makes room for more of a large frame that has filled the buffer, by half again what is
    /// buffered (at most up to the frame limit). Left to the reader, a full buffer doubles, so
    /// a 1 MiB message would end in a 2 MiB allocation that stays as long as the message does
    /// (its bytes are shared, not copied, all the way to the store).
    fn grow(&self, buf: &mut BytesMut) {
        const LARGE: usize = 64 * 1024;
        let len = buf.len();
        if len < LARGE || buf.capacity() - len >= LARGE / 16 {
            return;
        }
        let want = (len + len / 2).min(self.max_frame_size.saturating_add(2));
        if want > len {
            let mut bigger = BytesMut::with_capacity(want);
            bigger.extend_from_slice(buf);
            *buf = bigger;
        }
    }

    fn too_large(&mut self, buf: &mut BytesMut) -> CodecError {
        // Drop what we hold so memory stays bounded even if the caller keeps decoding;
        // the rest of the oversize frame will be skipped up to the next start block.
        buf.clear();
        self.state = State::Idle;
        CodecError::FrameTooLarge {
            limit: self.max_frame_size,
        }
    }

    pub(crate) fn check_payload(&self, payload: &[u8]) -> Result<(), CodecError> {
        if payload.len() > self.max_frame_size {
            return Err(CodecError::FrameTooLarge {
                limit: self.max_frame_size,
            });
        }
        match payload
            .iter()
            .position(|&b| b == START_BLOCK || b == END_BLOCK)
        {
            Some(offset) => Err(CodecError::ReservedByte {
                byte: payload[offset],
                offset,
            }),
            None => Ok(()),
        }
    }

    fn encode_payload(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
        // Check before writing anything, so a refused payload leaves the write buffer intact.
        self.check_payload(payload)?;
        dst.reserve(payload.len() + 3);
        dst.put_u8(START_BLOCK);
        dst.put_slice(payload);
        dst.put_u8(END_BLOCK);
        dst.put_u8(CARRIAGE_RETURN);
        Ok(())
    }
}

impl Default for MllpCodec {
    /// A codec with the [`DEFAULT_MAX_FRAME_SIZE`] limit.
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl Decoder for MllpCodec {
    type Item = Bytes;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        loop {
            match self.state {
                State::AfterEnd => {
                    let Some(&next) = buf.first() else {
                        return Ok(None);
                    };
                    if next == CARRIAGE_RETURN {
                        buf.advance(1);
                    }
                    self.state = State::Idle;
                }
                State::Idle => match buf.iter().position(|&b| b == START_BLOCK) {
                    Some(start) => {
                        self.skip(buf, start);
                        buf.advance(1);
                        self.state = State::InFrame { scanned: 0 };
                    }
                    None => {
                        // Garbage is dropped as it arrives so it cannot grow the buffer.
                        let n = buf.len();
                        self.skip(buf, n);
                        return Ok(None);
                    }
                },
                State::InFrame { scanned } => {
                    let found = buf[scanned..]
                        .iter()
                        .position(|&b| b == END_BLOCK || b == START_BLOCK)
                        .map(|rel| scanned + rel);
                    let payload_len = found.unwrap_or(buf.len());
                    if payload_len > self.max_frame_size {
                        return Err(self.too_large(buf));
                    }
                    match found {
                        None => {
                            self.state = State::InFrame { scanned: buf.len() };
                            self.grow(buf);
                            return Ok(None);
                        }
                        Some(at) if buf[at] == START_BLOCK => {
                            // The previous frame was never closed: resynchronise on the new
                            // start block rather than glue two messages together.
                            buf.advance(at + 1);
                            self.discarded_frames += 1;
                            self.untaken_discarded += 1;
                            self.state = State::InFrame { scanned: 0 };
                        }
                        Some(at) => {
                            let payload = buf.split_to(at).freeze();
                            buf.advance(1);
                            self.state = State::AfterEnd;
                            // Consume a <CR> that is already here, so an idle connection's
                            // buffer ends empty.
                            if buf.first() == Some(&CARRIAGE_RETURN) {
                                buf.advance(1);
                                self.state = State::Idle;
                            }
                            return Ok(Some(payload));
                        }
                    }
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        let state = std::mem::replace(&mut self.state, State::Idle);
        if let State::InFrame { .. } = state {
            let buffered = buf.len();
            buf.clear();
            return Err(CodecError::Truncated { buffered });
        }
        Ok(None)
    }
}

impl Encoder<&[u8]> for MllpCodec {
    type Error = CodecError;

    /// Frames `payload`. Fails without writing if it exceeds `max_frame_size` or contains
    /// `<VT>` or `<FS>`, which the peer would read as frame boundaries.
    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_payload(payload, dst)
    }
}

impl Encoder<Bytes> for MllpCodec {
    type Error = CodecError;

    /// Frames `payload`; see the `&[u8]` implementation.
    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_payload(&payload, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A large frame read the way `FramedRead` reads (grow by `reserve(1)` when full, then
    /// fill the spare room) ends in a buffer about 1.5 times its size, not twice.
    #[test]
    fn a_large_frame_grows_the_buffer_by_half_not_double() {
        let payload = vec![b'x'; 1 << 20];
        let mut wire = vec![START_BLOCK];
        wire.extend_from_slice(&payload);
        wire.extend_from_slice(&[END_BLOCK, CARRIAGE_RETURN]);
        let mut codec = MllpCodec::new(4 << 20);
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let mut sent = 0;
        let mut largest = 0;
        let frame = loop {
            if buf.len() == buf.capacity() {
                buf.reserve(1);
            }
            let n = (buf.capacity() - buf.len()).min(wire.len() - sent);
            buf.extend_from_slice(&wire[sent..sent + n]);
            sent += n;
            largest = largest.max(buf.capacity());
            if let Some(frame) = codec.decode(&mut buf).unwrap() {
                break frame;
            }
            assert!(
                sent < wire.len(),
                "the whole frame was read without a frame coming out"
            );
        };
        assert_eq!(frame, payload);
        assert!(
            largest <= (1 << 20) * 8 / 5,
            "the buffer grew to {largest} bytes for a {} byte frame",
            payload.len()
        );
    }

    /// What a run of the decoder produced: frames in order, then the error that stopped it
    /// (as text), and the counters.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        frames: Vec<Bytes>,
        error: Option<String>,
        skipped: u64,
        discarded: u64,
    }

    /// Feeds `chunks` one read at a time, decoding after each as `Framed` does, stopping at
    /// the first error (as `Framed` does), then signals end of stream.
    fn run(max: usize, chunks: &[&[u8]]) -> Outcome {
        let mut codec = MllpCodec::new(max);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut error = None;
        'reads: for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match codec.decode(&mut buf) {
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
        Outcome {
            frames,
            error,
            skipped: codec.skipped_bytes(),
            discarded: codec.discarded_frames(),
        }
    }

    fn whole(max: usize, stream: &[u8]) -> Outcome {
        run(max, &[stream])
    }

    fn split_at_every_offset(max: usize, stream: &[u8]) {
        let expected = whole(max, stream);
        for i in 0..=stream.len() {
            let (a, b) = stream.split_at(i);
            assert_eq!(run(max, &[a, b]), expected, "split at {i}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(max, &bytes), expected, "one byte per read");
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![START_BLOCK];
        v.extend_from_slice(payload);
        v.extend_from_slice(&[END_BLOCK, CARRIAGE_RETURN]);
        v
    }

    fn frames(list: &[Bytes]) -> Vec<&[u8]> {
        list.iter().map(|b| b.as_ref()).collect()
    }

    #[test]
    fn one_frame() {
        let out = whole(1024, &frame(b"MSH|^~\\&|A\rPID|1\r"));
        assert_eq!(frames(&out.frames), vec![&b"MSH|^~\\&|A\rPID|1\r"[..]]);
        assert_eq!((out.skipped, out.discarded, out.error), (0, 0, None));
    }

    #[test]
    fn empty_payload_is_a_frame() {
        let out = whole(1024, &frame(b""));
        assert_eq!(frames(&out.frames), vec![&b""[..]]);
        assert_eq!(out.error, None);
    }

    #[test]
    fn many_frames_in_one_read() {
        let mut stream = Vec::new();
        for i in 0..50 {
            stream.extend(frame(format!("message {i}").as_bytes()));
        }
        let out = whole(1024, &stream);
        assert_eq!(out.frames.len(), 50);
        for (i, f) in out.frames.iter().enumerate() {
            assert_eq!(f.as_ref(), format!("message {i}").as_bytes());
        }
        assert_eq!((out.skipped, out.discarded, out.error), (0, 0, None));
    }

    #[test]
    fn split_reads_at_every_offset() {
        let mut stream = frame(b"first");
        stream.extend(frame(b""));
        stream.extend(frame(b"third\rwith segments\r"));
        split_at_every_offset(1024, &stream);
        assert_eq!(whole(1024, &stream).frames.len(), 3);
    }

    #[test]
    fn garbage_before_and_between_frames_is_skipped_and_counted() {
        let mut stream = b"noise".to_vec();
        stream.extend(frame(b"one"));
        stream.extend(b"\n\n");
        stream.extend(frame(b"two"));
        stream.extend(b"trailing");
        let out = whole(1024, &stream);
        assert_eq!(frames(&out.frames), vec![&b"one"[..], b"two"]);
        assert_eq!(out.skipped, 5 + 2 + 8);
        assert_eq!((out.discarded, out.error), (0, None));
        split_at_every_offset(1024, &stream);
    }

    #[test]
    fn take_skipped_reports_each_occurrence_once() {
        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::from(&b"xx"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(codec.take_skipped(), 2);
        assert_eq!(codec.take_skipped(), 0);
        buf.extend_from_slice(b"yyy\x0bz\x1c\r");
        assert_eq!(codec.decode(&mut buf).unwrap().as_deref(), Some(&b"z"[..]));
        assert_eq!(codec.take_skipped(), 3);
        assert_eq!(codec.skipped_bytes(), 5);
    }

    #[test]
    fn start_block_inside_open_frame_resynchronises() {
        let mut stream = vec![START_BLOCK];
        stream.extend(b"never closed");
        stream.extend(frame(b"good"));
        let out = whole(1024, &stream);
        assert_eq!(frames(&out.frames), vec![&b"good"[..]]);
        assert_eq!((out.discarded, out.skipped, out.error), (1, 0, None));
        split_at_every_offset(1024, &stream);

        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::from(&stream[..]);
        codec.decode(&mut buf).unwrap();
        assert_eq!(codec.take_discarded(), 1);
        assert_eq!(codec.take_discarded(), 0);
        assert_eq!(codec.discarded_frames(), 1);
    }

    #[test]
    fn end_block_without_carriage_return_ends_the_frame() {
        // <CR> omitted, next frame follows directly.
        let stream = b"\x0bone\x1c\x0btwo\x1c\r";
        let out = whole(1024, stream);
        assert_eq!(frames(&out.frames), vec![&b"one"[..], b"two"]);
        assert_eq!((out.skipped, out.discarded, out.error), (0, 0, None));
        split_at_every_offset(1024, stream);

        // The byte after <FS> is not consumed: here it is counted as skipped.
        let out = whole(1024, b"\x0bone\x1cX\x0btwo\x1c");
        assert_eq!(frames(&out.frames), vec![&b"one"[..], b"two"]);
        assert_eq!(out.skipped, 1);
    }

    #[test]
    fn frame_is_yielded_without_waiting_for_the_carriage_return() {
        // A sender that omits <CR> then waits for its ACK must get it.
        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::from(&b"\x0bmsg\x1c"[..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap().as_deref(),
            Some(&b"msg"[..])
        );
        assert!(buf.is_empty());
        // The <CR> arriving in the next read belongs to that end block: not skipped.
        buf.extend_from_slice(b"\r");
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(codec.skipped_bytes(), 0);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversize_frame_fails_before_its_end_block() {
        let limit = 16;
        let mut codec = MllpCodec::new(limit);
        let mut buf = BytesMut::from(&b"\x0b0123456789abcdef"[..]);
        // Exactly at the limit: still waiting.
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"g");
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, CodecError::FrameTooLarge { limit: 16 }),
            "{err}"
        );
        assert!(err.to_string().contains("max_frame_size"));
        assert!(buf.is_empty(), "buffer released after the error");
    }

    #[test]
    fn frame_at_the_limit_passes_and_one_over_fails() {
        let at = whole(4, &frame(b"abcd"));
        assert_eq!(frames(&at.frames), vec![&b"abcd"[..]]);
        let over = whole(4, &frame(b"abcde"));
        assert!(over.frames.is_empty());
        assert_eq!(
            over.error.as_deref(),
            Some("frame exceeds the max_frame_size limit of 4 bytes")
        );
        split_at_every_offset(4, &frame(b"abcde"));
    }

    #[test]
    fn memory_stays_bounded_without_an_end_block() {
        let limit = 64 * 1024;
        let mut codec = MllpCodec::new(limit);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[START_BLOCK]);
        let chunk = vec![b'A'; 8 * 1024];
        let mut fed = 0usize;
        let err = loop {
            buf.extend_from_slice(&chunk);
            fed += chunk.len();
            assert!(
                buf.len() <= limit + chunk.len(),
                "buffer grew past the limit"
            );
            match codec.decode(&mut buf) {
                Ok(None) => {}
                Ok(Some(_)) => panic!("no frame expected"),
                Err(e) => break e,
            }
            assert!(fed < 1024 * 1024, "no error after {fed} bytes");
        };
        assert!(matches!(err, CodecError::FrameTooLarge { .. }));
        assert!(fed <= limit + chunk.len());
    }

    #[test]
    fn garbage_does_not_grow_the_buffer() {
        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::new();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..64 {
            buf.extend_from_slice(&chunk);
            assert_eq!(codec.decode(&mut buf).unwrap(), None);
            assert!(buf.is_empty());
        }
        assert_eq!(codec.skipped_bytes(), 64 * 64 * 1024);
    }

    #[test]
    fn eof_inside_a_frame_is_truncated() {
        let out = whole(1024, b"\x0bpartial");
        assert!(out.frames.is_empty());
        assert_eq!(
            out.error.as_deref(),
            Some("stream ended inside a frame with 7 payload bytes buffered")
        );
        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::from(&b"\x0bpartial"[..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(CodecError::Truncated { buffered: 7 })
        ));
    }

    #[test]
    fn eof_after_end_block_without_carriage_return_is_clean() {
        let out = whole(1024, b"\x0bdone\x1c");
        assert_eq!(frames(&out.frames), vec![&b"done"[..]]);
        assert_eq!(out.error, None);
    }

    #[test]
    fn payload_is_not_copied() {
        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::from(&b"\x0bzero-copy\x1c\r"[..]);
        let base = buf.as_ptr() as usize;
        let frame = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.as_ptr() as usize, base + 1);
    }

    #[test]
    fn encode_frames_payload() {
        let mut codec = MllpCodec::new(1024);
        let mut dst = BytesMut::new();
        codec.encode(&b"MSH|x"[..], &mut dst).unwrap();
        codec.encode(Bytes::from_static(b""), &mut dst).unwrap();
        assert_eq!(&dst[..], b"\x0bMSH|x\x1c\r\x0b\x1c\r");
        let out = whole(1024, &dst);
        assert_eq!(frames(&out.frames), vec![&b"MSH|x"[..], b""]);
    }

    #[test]
    fn encode_refuses_reserved_bytes_and_oversize_without_writing() {
        let mut codec = MllpCodec::new(4);
        let mut dst = BytesMut::new();
        let err = codec.encode(&b"a\x1cb"[..], &mut dst).unwrap_err();
        assert!(matches!(
            err,
            CodecError::ReservedByte {
                byte: END_BLOCK,
                offset: 1
            }
        ));
        let err = codec.encode(&b"\x0b"[..], &mut dst).unwrap_err();
        assert!(matches!(
            err,
            CodecError::ReservedByte {
                byte: START_BLOCK,
                offset: 0
            }
        ));
        let err = codec.encode(&b"abcde"[..], &mut dst).unwrap_err();
        assert!(matches!(err, CodecError::FrameTooLarge { limit: 4 }));
        assert!(dst.is_empty());
    }

    /// Streams rich in framing bytes, so the interesting paths are hit often.
    fn stream_strategy() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            4 => proptest::collection::vec(b'a'..=b'e', 0..6).prop_map(|p| frame(&p)),
            1 => Just(vec![START_BLOCK]),
            1 => Just(vec![END_BLOCK]),
            1 => Just(vec![CARRIAGE_RETURN]),
            1 => Just(vec![END_BLOCK, CARRIAGE_RETURN]),
            2 => proptest::collection::vec(any::<u8>(), 0..8),
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
    }

    /// Turns cut points into read boundaries.
    fn split_by<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&stream[last..p]);
            last = p;
        }
        chunks.push(&stream[last..]);
        chunks
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// However a byte stream is split into reads, the codec yields the same frames,
        /// the same error and the same counts; no frame is over the limit.
        #[test]
        fn same_frames_however_the_stream_is_split(
            stream in stream_strategy(),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
            max in prop_oneof![Just(3usize), Just(8), Just(1024)],
        ) {
            let expected = whole(max, &stream);
            prop_assert!(expected.frames.iter().all(|f| f.len() <= max), "a frame over {}", max);
            let chunks = split_by(&stream, &cuts);
            prop_assert_eq!(run(max, &chunks), expected);
        }

        /// Whatever payloads are encoded come back out unchanged.
        #[test]
        fn encoded_payloads_round_trip(
            payloads in proptest::collection::vec(
                proptest::collection::vec(
                    any::<u8>().prop_filter("not a framing byte", |b| *b != START_BLOCK && *b != END_BLOCK),
                    0..32,
                ),
                0..8,
            ),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut codec = MllpCodec::new(1024);
            let mut wire = BytesMut::new();
            for p in &payloads {
                codec.encode(&p[..], &mut wire).unwrap();
            }
            let out = run(1024, &split_by(&wire, &cuts));
            let got: Vec<Vec<u8>> = out.frames.iter().map(|f| f.to_vec()).collect();
            prop_assert_eq!(got, payloads);
            prop_assert_eq!((out.skipped, out.discarded, out.error), (0, 0, None));
        }
    }
}
