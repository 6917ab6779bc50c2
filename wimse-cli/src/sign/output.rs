//! How `wimse sign` writes a signed request for other clients: a curl command line, or header
//! lines (the raw HTTP/1.1 request is [`RawRequest::to_bytes`]).

use wimse_core::raw::RawRequest;

use super::request_url;

/// Fields the HTTP client sets itself from the URL and the body.
fn set_by_client(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("content-length")
}

/// A POSIX shell word: single-quoted, each `'` written as `'\''`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The request's header fields, `Name: value` a line (what `curl -H @file` reads), without
/// `Host` and `Content-Length`.
pub(super) fn header_lines(request: &RawRequest) -> String {
    let mut out = String::new();
    for (name, value) in request.headers.iter().filter(|(name, _)| !set_by_client(name)) {
        out.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value)));
    }
    out
}

/// A curl command line that sends exactly this request: its method, URL, fields and body.
/// curl's own defaults that would change what was signed are turned off: URL globbing and
/// dot-segment removal (the signature covers the path as written) and the form content type
/// it adds to a body sent without one.
pub(super) fn curl_command(request: &RawRequest) -> Result<String, String> {
    let url = request_url(request)?;
    // One option (with its argument) a line.
    let mut words = vec!["curl".to_owned()];
    match request.method.as_str() {
        "GET" if request.body.is_empty() => {}
        "HEAD" => words.push("--head".into()),
        method => words.push(format!("--request {}", quote(method))),
    }
    if url.contains(['[', ']', '{', '}']) {
        words.push("--globoff".into());
    }
    if request.path().contains("/.") {
        words.push("--path-as-is".into());
    }
    words.push(quote(&url));
    for (name, value) in request.headers.iter().filter(|(name, _)| !set_by_client(name)) {
        let value = std::str::from_utf8(value).map_err(|_| format!("the {name} field is not text"))?;
        // `Name;` is curl's way to send a field with an empty value (`Name:` would remove it).
        let field = if value.is_empty() { format!("{name};") } else { format!("{name}: {value}") };
        words.push(format!("-H {}", quote(&field)));
    }
    if !request.body.is_empty() {
        if !request.has_header("content-type") {
            words.push(format!("-H {}", quote("Content-Type:")));
        }
        let body = std::str::from_utf8(&request.body)
            .ok()
            .filter(|body| !body.contains('\0'))
            .ok_or("the body is not text a shell can quote: write --format raw, or --format headers and send the body with curl --data-binary @FILE")?;
        words.push(format!("--data-binary {}", quote(body)));
    }
    Ok(words.join(" \\\n  ") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(bytes: &[u8]) -> RawRequest {
        RawRequest::parse(bytes).unwrap()
    }

    #[test]
    fn curl_keeps_what_was_signed() {
        let post = request(b"POST http://127.0.0.1:8080/a/./b?x[0]=1 HTTP/1.1\r\nX-Note: it's\r\nX-Empty:\r\nContent-Length: 5\r\n\r\nhe'y\n");
        assert_eq!(
            curl_command(&post).unwrap(),
            "curl \\\n  --request 'POST' \\\n  --globoff \\\n  --path-as-is \\\n  'http://127.0.0.1:8080/a/./b?x[0]=1' \\\n  -H 'X-Note: it'\\''s' \\\n  -H 'X-Empty;' \\\n  -H 'Content-Type:' \\\n  --data-binary 'he'\\''y\n'\n"
        );
        let get = request(b"GET /orders HTTP/1.1\r\nHost: orders.example\r\nAccept: */*\r\n\r\n");
        assert_eq!(curl_command(&get).unwrap(), "curl \\\n  'https://orders.example/orders' \\\n  -H 'Accept: */*'\n");
        let typed = request(b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n\r\n{}");
        assert!(!curl_command(&typed).unwrap().contains("'Content-Type:'"));
        let binary = request(b"POST /x HTTP/1.1\r\nHost: h\r\n\r\n\xff\x00");
        assert!(curl_command(&binary).unwrap_err().contains("--format raw"));
        let hostless = request(b"GET /x HTTP/1.1\r\n\r\n");
        assert!(curl_command(&hostless).unwrap_err().contains("no Host"));
    }

    #[test]
    fn header_lines_leave_out_what_the_client_sets() {
        let signed = request(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nAuthorization: WPT a.b.c\r\n\r\n{}");
        assert_eq!(header_lines(&signed), "Authorization: WPT a.b.c\n");
    }
}
