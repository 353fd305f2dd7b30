//! Small HTTP pieces of the Swift client: status classes, headers, bounded body reads, path
//! encoding, and the per-client limit on log lines a misbehaving Swift can cause.

use bytes::{Bytes, BytesMut};
use reqwest::{Response, StatusCode};

use super::StreamError;
use crate::limits::{LOG_LINES_PER_SOURCE_PER_SECOND_MAX, SWIFT_ERROR_BODY_BYTES_MAX};

/// At most [`LOG_LINES_PER_SOURCE_PER_SECOND_MAX`] lines per second; the rest are counted and
/// reported with the next line that passes.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    state: std::sync::Mutex<(u64, u32, u64)>, // (second, lines this second, suppressed)
}

impl LogLimit {
    /// `Some(suppressed so far)` when a line may be written now.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 != now {
            g.0 = now;
            g.1 = 0;
        }
        if g.1 >= LOG_LINES_PER_SOURCE_PER_SECOND_MAX {
            g.2 += 1;
            return None;
        }
        g.1 += 1;
        Some(std::mem::take(&mut g.2))
    }
}

pub(crate) fn is_retryable(st: StatusCode) -> bool {
    st.is_server_error() || st == StatusCode::REQUEST_TIMEOUT || st == StatusCode::TOO_MANY_REQUESTS
}

pub(crate) fn is_slo(r: &Response) -> bool {
    r.headers()
        .get("x-static-large-object")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The Etag header without quotes.
pub(crate) fn etag_of(r: &Response) -> Option<String> {
    r.headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_ascii_lowercase())
}

/// The first bytes of an error answer, for the message.
pub(crate) async fn error_body(r: Response) -> String {
    match r.bytes().await {
        Ok(b) => {
            let n = b.len().min(SWIFT_ERROR_BODY_BYTES_MAX);
            String::from_utf8_lossy(&b[..n]).trim().to_string()
        }
        Err(_) => String::new(),
    }
}

pub(crate) async fn http_err(
    method: &'static str,
    target: &str,
    status: u16,
    r: Response,
) -> StreamError {
    StreamError::Http {
        method,
        target: target.to_string(),
        status,
        body: error_body(r).await,
    }
}

pub(crate) enum ReadErr {
    Retry(String),
    Fail(StreamError),
}

/// Read a body of at most `max` bytes.
pub(crate) async fn read_limited(
    mut r: Response,
    max: u64,
    target: &str,
) -> Result<Bytes, ReadErr> {
    let mut buf = BytesMut::with_capacity(r.content_length().unwrap_or(0).min(max) as usize);
    loop {
        match r.chunk().await {
            Ok(Some(c)) => {
                if (buf.len() + c.len()) as u64 > max {
                    return Err(ReadErr::Fail(StreamError::TooLarge {
                        object: target.into(),
                        size: (buf.len() + c.len()) as u64,
                        max,
                    }));
                }
                buf.extend_from_slice(&c);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => return Err(ReadErr::Retry(format!("reading body: {}", e.without_url()))),
        }
    }
}

/// Percent-encode an object path, keeping `/` and RFC 3986 unreserved characters.
pub fn encode_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_paths() {
        assert_eq!(encode_path("c/a b/ü?#%"), "c/a%20b/%C3%BC%3F%23%25");
        assert_eq!(
            encode_path("c/p/snap-1/chunks/0000000a"),
            "c/p/snap-1/chunks/0000000a"
        );
    }

    #[test]
    fn log_limit_bounds_lines_per_second() {
        let l = LogLimit::default();
        let passed = (0..100).filter(|_| l.allow().is_some()).count() as u32;
        // Two seconds may straddle the loop; never more than that.
        assert!(
            (LOG_LINES_PER_SOURCE_PER_SECOND_MAX..=2 * LOG_LINES_PER_SOURCE_PER_SECOND_MAX)
                .contains(&passed),
            "{passed}"
        );
    }
}
