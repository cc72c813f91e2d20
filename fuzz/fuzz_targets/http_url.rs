//! `HttpUrl::parse`, the `ready: {http: URL}` probe address. A URL that parses has a host,
//! a path starting with `/` without spaces or control characters (it goes into the probe's
//! request line), and says the same thing when written back out as the probe writes its
//! `Host:` header. The host is an IPv6 address or a name of letters, digits, `.`, `-` and
//! `_`; the port is not 0.
#![no_main]

use arborist::config::HttpUrl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(url) = HttpUrl::parse(text) else {
        return;
    };
    assert_eq!(url.url, text);
    assert!(!url.host.is_empty());
    assert!(url.path.starts_with('/'), "path {:?} of {text:?}", url.path);
    assert!(!url
        .path
        .contains(|c: char| c.is_whitespace() || c.is_control()));
    assert!(
        url.host.parse::<std::net::Ipv6Addr>().is_ok()
            || url
                .host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')),
        "host {:?} of {text:?}",
        url.host
    );
    assert_ne!(url.port, 0, "{text:?}");
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    let again = format!("http://{host}:{}{}", url.port, url.path);
    let reparsed = HttpUrl::parse(&again)
        .unwrap_or_else(|e| panic!("{text:?} parsed, but {again:?} does not: {e}"));
    assert_eq!(
        (&reparsed.host, reparsed.port, &reparsed.path),
        (&url.host, url.port, &url.path),
        "{text:?} and {again:?} differ"
    );
});
