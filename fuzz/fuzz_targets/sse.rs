//! The server-sent-events parser of upstream streams: never panics, and the events do not depend
//! on how the bytes were cut into network reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_providers::sse::SseParser;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = SseParser::default().feed(stream);
    let cut = usize::from(cut) % (stream.len() + 1);
    let mut parser = SseParser::default();
    let pieces = parser.feed(&stream[..cut]).and_then(|mut first| {
        first.extend(parser.feed(&stream[cut..])?);
        Ok(first)
    });
    if let (Ok(whole), Ok(pieces)) = (whole, pieces) {
        assert_eq!(whole, pieces);
    }
});
