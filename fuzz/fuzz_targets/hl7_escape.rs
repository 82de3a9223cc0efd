//! Escape decoding and encoding on arbitrary bytes, in any valid delimiter set: neither
//! panics; `decode(encode(x)) == x`; the encoded form holds no structural byte; and
//! re-encoding decoded text keeps its meaning, `decode(encode(decode(x))) == decode(x)`.
#![no_main]

use courier_hl7::{Delimiters, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The input starts with MSH-1 and a length-prefixed MSH-2; an invalid set falls back to
    // `|^~\&`, so every input exercises the codec.
    let (delims, text) = match data {
        [fs, n, rest @ ..] => {
            let n = usize::from(n % 6).min(rest.len());
            match Delimiters::from_msh(*fs, &rest[..n]) {
                Ok(d) => (d, &rest[n..]),
                Err(_) => (Delimiters::default(), data),
            }
        }
        _ => (Delimiters::default(), data),
    };

    let escaped = encode(text, &delims);
    assert_eq!(
        &decode(&escaped, &delims)[..],
        text,
        "decode inverts encode"
    );
    if delims.escape.is_some() {
        let structural = |b: u8| {
            b == delims.field
                || b == delims.component
                || b == delims.repetition
                || b == delims.subcomponent
                || b == b'\r'
                || b == b'\n'
                || Some(b) == delims.truncation
        };
        assert!(!escaped.iter().any(|&b| structural(b)), "{escaped:?}");
    }

    let decoded = decode(text, &delims);
    let again = encode(&decoded, &delims);
    assert_eq!(
        decode(&again, &delims),
        decoded,
        "encode keeps what decode read"
    );
});
