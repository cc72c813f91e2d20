//! The control socket's request decoding, byte for byte as `control::server` does it: the
//! input is what a client wrote on one connection; it is cut into lines of at most
//! MAX_REQUEST + 1 bytes (`read_until` under `take`), an oversized line ends the connection
//! with an error reply, every other line is decoded lossily and given to `parse_request`, and
//! the reply is serialised. A request that parses must survive a round trip.
#![no_main]

use arborist::control::protocol::{parse_request, Request, Response, MAX_REQUEST};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while !rest.is_empty() {
        // take(MAX_REQUEST + 1).read_until(b'\n'): up to and including the newline, and never
        // more than MAX_REQUEST + 1 bytes.
        let limit = rest.len().min(MAX_REQUEST + 1);
        let end = rest[..limit]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(limit, |i| i + 1);
        let (line, tail) = rest.split_at(end);
        rest = tail;
        if line.len() > MAX_REQUEST {
            let reply = Response::error(format!(
                "request too large (limit {} KiB); closing the connection",
                MAX_REQUEST / 1024
            ));
            reply_line(&reply);
            return;
        }
        let text = String::from_utf8_lossy(line);
        match parse_request(&text) {
            Err(e) => {
                assert!(!e.is_empty());
                reply_line(&Response::error(e));
            }
            Ok(request) => {
                round_trip(&request);
                reply_line(&Response::message("ok"));
            }
        }
    }
});

/// What the server writes: one JSON object, one line.
fn reply_line(reply: &Response) {
    let text = serde_json::to_string(reply).expect("a reply always serialises");
    assert!(!text.contains('\n'), "a reply must be one line: {text:?}");
}

fn round_trip(request: &Request) {
    let text = serde_json::to_string(request).expect("a request always serialises");
    assert_eq!(
        parse_request(&text).as_ref(),
        Ok(request),
        "round trip of {text}"
    );
}
