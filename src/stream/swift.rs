//! An async OpenStack Swift client on reqwest.
//!
//! - Auth: tempauth v1.0 (`X-Auth-User`/`X-Auth-Key` -> `X-Storage-Url` + `X-Auth-Token`) or
//!   Keystone v3 password auth (`POST /v3/auth/tokens` -> `X-Subject-Token`, Swift's URL from
//!   the catalog: type `object-store`, interface `public`, the configured region if any). The
//!   session is shared by clones; a 401 re-authenticates once per request.
//! - Retries: 5xx, 408, 429, 422 (body did not match the ETag we sent) and connection errors
//!   are retried with exponential backoff and jitter, at most
//!   [`SWIFT_RETRY_ATTEMPTS_MAX`](crate::limits::SWIFT_RETRY_ATTEMPTS_MAX) attempts.
//! - Integrity: every PUT sends the md5 as `ETag` and compares the `Etag` Swift answers; every
//!   in-memory GET checks `Content-Length` and, for plain objects, the md5 of the body.
//! - Secrets: tokens and keys travel only in headers; errors carry the method, the object path
//!   and the status, never a header.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rand::Rng;
use reqwest::{Method, Response, StatusCode};

use super::auth::{Secret, SwiftAuth};
use super::http::{
    encode_path, error_body, etag_of, http_err, is_retryable, is_slo, read_limited, LogLimit,
    ReadErr,
};
use super::login;
use super::store::{md5_hex, slo_etag, ByteStream, ObjectMeta, ObjectStore, SloSegment};
use super::StreamError;
use crate::limits::*;

/// Storage URL and token of one authenticated session.
#[derive(Clone, Debug)]
pub(super) struct Session {
    pub(super) storage_url: String,
    pub(super) token: Secret,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    auth: SwiftAuth,
    session: tokio::sync::Mutex<Option<Session>>,
    attempts_max: u32,
    base_delay_ms: u64,
    /// Retry warnings are a line per failed attempt: bounded per second.
    warn_limit: LogLimit,
}

/// A Swift account reached through one set of credentials. Cheap to clone (shared session).
#[derive(Debug, Clone)]
pub struct SwiftClient {
    inner: Arc<Inner>,
}

/// What one attempt of a request came to.
pub(crate) enum Outcome<T> {
    Done(T),
    /// Worth another attempt (5xx, connection error, truncated body, ...).
    Retry(String),
    /// 401: re-authenticate once, then try again.
    Unauthorized,
    Fail(StreamError),
}

impl SwiftClient {
    pub fn new(auth: SwiftAuth) -> Result<SwiftClient, StreamError> {
        Self::with_retry(auth, SWIFT_RETRY_ATTEMPTS_MAX, SWIFT_RETRY_BASE_DELAY_MS)
    }

    /// A client with its own retry bounds (tests use short delays).
    pub fn with_retry(
        auth: SwiftAuth,
        attempts_max: u32,
        base_delay_ms: u64,
    ) -> Result<SwiftClient, StreamError> {
        if attempts_max == 0 || attempts_max > SWIFT_RETRY_ATTEMPTS_MAX * 4 {
            return Err(StreamError::Config(format!(
                "retry attempts {attempts_max} out of 1..={}",
                SWIFT_RETRY_ATTEMPTS_MAX * 4
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(SWIFT_CONNECT_TIMEOUT_MS))
            .read_timeout(Duration::from_millis(SWIFT_REQUEST_TIMEOUT_MS))
            .build()
            .map_err(|e| StreamError::Config(format!("HTTP client: {e}")))?;
        Ok(SwiftClient {
            inner: Arc::new(Inner {
                http,
                auth,
                session: tokio::sync::Mutex::new(None),
                attempts_max,
                base_delay_ms: base_delay_ms.min(SWIFT_RETRY_DELAY_MAX_MS),
                warn_limit: LogLimit::default(),
            }),
        })
    }

    /// The storage URL of the current session (authenticating if needed).
    pub async fn storage_url(&self) -> Result<String, StreamError> {
        Ok(self.session().await?.storage_url)
    }

    async fn session(&self) -> Result<Session, StreamError> {
        let mut guard = self.inner.session.lock().await;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let s = self.authenticate().await?;
        *guard = Some(s.clone());
        Ok(s)
    }

    /// Forget `old` (unless another request already replaced it).
    async fn invalidate(&self, old: &Session) {
        let mut guard = self.inner.session.lock().await;
        if guard.as_ref().is_some_and(|s| s.token == old.token) {
            *guard = None;
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .inner
            .base_delay_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
        let max = exp.clamp(1, SWIFT_RETRY_DELAY_MAX_MS);
        Duration::from_millis(rand::rng().random_range(max / 2..=max))
    }

    async fn authenticate(&self) -> Result<Session, StreamError> {
        let url = self.inner.auth.auth_url().to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = match &self.inner.auth {
                SwiftAuth::TempAuth { url, user, key } => {
                    login::tempauth(&self.inner.http, url, user, key).await
                }
                SwiftAuth::KeystoneV3 { .. } => {
                    login::keystone(&self.inner.http, &self.inner.auth).await
                }
            };
            match r {
                Outcome::Done(s) => {
                    tracing::debug!(auth_url = %url, storage_url = %s.storage_url, "swift: authenticated");
                    return Ok(s);
                }
                Outcome::Fail(e) => return Err(e),
                Outcome::Unauthorized => {
                    return Err(StreamError::Auth {
                        url,
                        reason: "credentials refused (401)".into(),
                    })
                }
                Outcome::Retry(why) if attempt < self.inner.attempts_max => {
                    if let Some(suppressed) = self.inner.warn_limit.allow() {
                        tracing::warn!(auth_url = %url, attempt, reason = %why, suppressed, "swift: auth failed, retrying");
                    }
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Outcome::Retry(why) => {
                    return Err(StreamError::Auth {
                        url,
                        reason: format!("gave up after {attempt} attempts: {why}"),
                    })
                }
            }
        }
    }

    /// Run one request with re-auth on 401 (once) and retries with backoff.
    async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        target: &str,
        attempt_fn: F,
    ) -> Result<T, StreamError>
    where
        F: Fn(Session) -> Fut,
        Fut: std::future::Future<Output = Outcome<T>>,
    {
        let mut attempt = 0;
        let mut reauthed = false;
        loop {
            attempt += 1;
            let session = self.session().await?;
            match attempt_fn(session.clone()).await {
                Outcome::Done(v) => return Ok(v),
                Outcome::Fail(e) => return Err(e),
                Outcome::Unauthorized if !reauthed => {
                    tracing::info!(%method, %target, "swift: token refused, re-authenticating");
                    reauthed = true;
                    attempt -= 1;
                    self.invalidate(&session).await;
                }
                Outcome::Unauthorized => {
                    return Err(StreamError::Auth {
                        url: self.inner.auth.auth_url().into(),
                        reason: format!("{method} {target}: a fresh token was refused (401)"),
                    })
                }
                Outcome::Retry(last) if attempt >= self.inner.attempts_max => {
                    return Err(StreamError::RetriesExhausted {
                        method,
                        target: target.into(),
                        attempts: attempt,
                        last,
                    })
                }
                Outcome::Retry(why) => {
                    if let Some(suppressed) = self.inner.warn_limit.allow() {
                        tracing::warn!(%method, %target, attempt, reason = %why, suppressed, "swift: request failed, retrying");
                    }
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
            }
        }
    }

    fn request(&self, s: &Session, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}/{}", s.storage_url, encode_path(path));
        self.inner
            .http
            .request(method, url)
            .header("X-Auth-Token", s.token.expose())
    }

    /// Send and sort the status into retry / 401 / done.
    async fn send(rb: reqwest::RequestBuilder) -> Outcome<Response> {
        match rb.send().await {
            Err(e) => Outcome::Retry(e.without_url().to_string()),
            Ok(r) if r.status() == StatusCode::UNAUTHORIZED => Outcome::Unauthorized,
            Ok(r) if is_retryable(r.status()) => {
                Outcome::Retry(format!("status {}: {}", r.status(), error_body(r).await))
            }
            Ok(r) => Outcome::Done(r),
        }
    }
}

macro_rules! try_send {
    ($rb:expr) => {
        match SwiftClient::send($rb).await {
            Outcome::Done(r) => r,
            Outcome::Retry(w) => return Outcome::Retry(w),
            Outcome::Unauthorized => return Outcome::Unauthorized,
            Outcome::Fail(e) => return Outcome::Fail(e),
        }
    };
}

/// A 201 answer to a PUT: done when Swift's `Etag` is the md5 we expect.
fn created_with_etag(r: &Response, target: &str, want: &str) -> Outcome<String> {
    match etag_of(r) {
        Some(got) if got == want => Outcome::Done(got),
        Some(got) => Outcome::Fail(StreamError::EtagMismatch {
            object: target.to_string(),
            expected: want.to_string(),
            got,
        }),
        None => Outcome::Fail(StreamError::BadResponse {
            target: target.to_string(),
            reason: "PUT answer lacks Etag".into(),
        }),
    }
}

impl ObjectStore for SwiftClient {
    fn describe(&self) -> String {
        format!("swift ({})", self.inner.auth.auth_url())
    }

    async fn ensure_container(&self, container: &str) -> Result<(), StreamError> {
        self.call("PUT", container, |s| async move {
            let r = try_send!(self
                .request(&s, Method::PUT, container)
                .header("Content-Length", "0"));
            match r.status().as_u16() {
                201 | 202 | 204 => Outcome::Done(()),
                st => Outcome::Fail(http_err("PUT", container, st, r).await),
            }
        })
        .await
    }

    async fn put_md5(
        &self,
        container: &str,
        name: &str,
        data: Bytes,
        md5: &str,
    ) -> Result<String, StreamError> {
        let path = format!("{container}/{name}");
        let md5 = md5.to_string();
        let (p, m) = (&path, &md5);
        self.call("PUT", &path, |s| {
            let data = data.clone();
            async move {
                let rb = self
                    .request(&s, Method::PUT, p)
                    .header("ETag", m.as_str())
                    .body(data);
                let r = try_send!(rb);
                match r.status().as_u16() {
                    201 => created_with_etag(&r, p, m),
                    422 => {
                        Outcome::Retry("422: Swift computed another md5 than the ETag sent".into())
                    }
                    404 => Outcome::Fail(StreamError::NotFound {
                        object: format!("container {container}"),
                    }),
                    st => Outcome::Fail(http_err("PUT", p, st, r).await),
                }
            }
        })
        .await
    }

    async fn get(&self, container: &str, name: &str, max_bytes: u64) -> Result<Bytes, StreamError> {
        let path = format!("{container}/{name}");
        let p = &path;
        self.call("GET", &path, |s| async move {
            let r = try_send!(self.request(&s, Method::GET, p));
            match r.status().as_u16() {
                200 => {}
                404 => return Outcome::Fail(StreamError::NotFound { object: p.clone() }),
                st => return Outcome::Fail(http_err("GET", p, st, r).await),
            }
            let slo = is_slo(&r);
            let etag = etag_of(&r);
            let Some(len) = r.content_length() else {
                return Outcome::Fail(StreamError::BadResponse {
                    target: p.clone(),
                    reason: "GET answer lacks Content-Length".into(),
                });
            };
            if len > max_bytes {
                return Outcome::Fail(StreamError::TooLarge {
                    object: p.clone(),
                    size: len,
                    max: max_bytes,
                });
            }
            let body = match read_limited(r, max_bytes, p).await {
                Ok(b) => b,
                Err(ReadErr::Retry(w)) => return Outcome::Retry(w),
                Err(ReadErr::Fail(e)) => return Outcome::Fail(e),
            };
            if body.len() as u64 != len {
                return Outcome::Retry(format!("truncated body: {} of {len} bytes", body.len()));
            }
            if let (false, Some(e)) = (slo, etag) {
                let got = md5_hex(&body);
                if got != e {
                    return Outcome::Retry(format!("body md5 {got} differs from Etag {e}"));
                }
            }
            Outcome::Done(body)
        })
        .await
    }

    async fn get_range(
        &self,
        container: &str,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StreamError> {
        let path = format!("{container}/{name}");
        let p = &path;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let range = format!("bytes={offset}-{}", offset.saturating_add(len - 1));
        let r = &range;
        self.call("GET", &path, |s| async move {
            let r = try_send!(self.request(&s, Method::GET, p).header("Range", r.as_str()));
            let whole = match r.status().as_u16() {
                206 => false,
                // Swift ignores a range it cannot parse and sends the whole object.
                200 => true,
                // The object ends before `offset`.
                416 => return Outcome::Done(Bytes::new()),
                404 => return Outcome::Fail(StreamError::NotFound { object: p.clone() }),
                st => return Outcome::Fail(http_err("GET", p, st, r).await),
            };
            let max = if whole {
                offset.saturating_add(len)
            } else {
                len
            };
            let want = r.content_length();
            let body = match read_limited(r, max, p).await {
                Ok(b) => b,
                Err(ReadErr::Retry(w)) => return Outcome::Retry(w),
                Err(ReadErr::Fail(e)) => return Outcome::Fail(e),
            };
            if want.is_some_and(|w| w != body.len() as u64) {
                return Outcome::Retry(format!("truncated range body: {} bytes", body.len()));
            }
            if whole {
                let from = (offset as usize).min(body.len());
                let to = (offset.saturating_add(len) as usize).min(body.len());
                return Outcome::Done(body.slice(from..to));
            }
            Outcome::Done(body)
        })
        .await
    }

    async fn get_stream(
        &self,
        container: &str,
        name: &str,
    ) -> Result<(u64, ByteStream), StreamError> {
        let path = format!("{container}/{name}");
        let p = &path;
        self.call("GET", &path, |s| async move {
            let r = try_send!(self.request(&s, Method::GET, p));
            match r.status().as_u16() {
                200 => {}
                404 => return Outcome::Fail(StreamError::NotFound { object: p.clone() }),
                st => return Outcome::Fail(http_err("GET", p, st, r).await),
            }
            let Some(len) = r.content_length() else {
                return Outcome::Fail(StreamError::BadResponse {
                    target: p.clone(),
                    reason: "GET answer lacks Content-Length".into(),
                });
            };
            let target = p.clone();
            let stream = r.bytes_stream().map(move |c| {
                c.map_err(|e| StreamError::Connection {
                    method: "GET",
                    target: target.clone(),
                    source: e.without_url(),
                })
            });
            Outcome::Done((len, stream.boxed()))
        })
        .await
    }

    async fn head(&self, container: &str, name: &str) -> Result<Option<ObjectMeta>, StreamError> {
        let path = format!("{container}/{name}");
        let p = &path;
        self.call("HEAD", &path, |s| async move {
            let r = try_send!(self.request(&s, Method::HEAD, p));
            match r.status().as_u16() {
                200 | 204 => {}
                404 => return Outcome::Done(None),
                st => return Outcome::Fail(http_err("HEAD", p, st, r).await),
            }
            let len = r
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            match (len, etag_of(&r)) {
                (Some(bytes), Some(hash)) => Outcome::Done(Some(ObjectMeta {
                    name: name.to_string(),
                    bytes,
                    hash,
                })),
                _ => Outcome::Fail(StreamError::BadResponse {
                    target: p.clone(),
                    reason: "HEAD answer lacks Content-Length or Etag".into(),
                }),
            }
        })
        .await
    }

    async fn delete(&self, container: &str, name: &str) -> Result<(), StreamError> {
        let path = format!("{container}/{name}");
        let p = &path;
        self.call("DELETE", &path, |s| async move {
            let r = try_send!(self.request(&s, Method::DELETE, p));
            match r.status().as_u16() {
                200 | 204 | 404 => Outcome::Done(()),
                st => Outcome::Fail(http_err("DELETE", p, st, r).await),
            }
        })
        .await
    }

    async fn list(&self, container: &str, prefix: &str) -> Result<Vec<ObjectMeta>, StreamError> {
        let mut out: Vec<ObjectMeta> = Vec::new();
        loop {
            let marker = out.last().map(|o| o.name.clone()).unwrap_or_default();
            let m = &marker;
            let page: Vec<ObjectMeta> = self
                .call("GET", container, |s| async move {
                    let limit = SWIFT_LIST_PAGE_COUNT.to_string();
                    let q = [
                        ("format", "json"),
                        ("prefix", prefix),
                        ("marker", m.as_str()),
                        ("limit", limit.as_str()),
                    ];
                    let r = try_send!(self.request(&s, Method::GET, container).query(&q));
                    match r.status().as_u16() {
                        200 => {}
                        204 | 404 => return Outcome::Done(Vec::new()),
                        st => return Outcome::Fail(http_err("GET", container, st, r).await),
                    }
                    let body = match read_limited(r, 64 * 1024 * 1024, container).await {
                        Ok(b) => b,
                        Err(ReadErr::Retry(w)) => return Outcome::Retry(w),
                        Err(ReadErr::Fail(e)) => return Outcome::Fail(e),
                    };
                    match parse_listing_page(container, &body) {
                        Ok(v) => Outcome::Done(v),
                        Err(e) => Outcome::Fail(e),
                    }
                })
                .await?;
            if !add_listing_page(&mut out, page, container, prefix)? {
                return Ok(out);
            }
        }
    }

    async fn put_slo(
        &self,
        container: &str,
        name: &str,
        segments: &[SloSegment],
    ) -> Result<String, StreamError> {
        let path = format!("{container}/{name}");
        let body = Bytes::from(
            serde_json::to_vec(segments)
                .map_err(|e| StreamError::Config(format!("SLO manifest: {e}")))?,
        );
        let want = slo_etag(segments);
        let (p, w) = (&path, &want);
        self.call("PUT", &path, |s| {
            let body = body.clone();
            async move {
                let rb = self
                    .request(&s, Method::PUT, p)
                    .query(&[("multipart-manifest", "put")])
                    .body(body);
                let r = try_send!(rb);
                match r.status().as_u16() {
                    201 => created_with_etag(&r, p, w),
                    st => Outcome::Fail(http_err("PUT", p, st, r).await),
                }
            }
        })
        .await
    }

    async fn get_slo(
        &self,
        container: &str,
        name: &str,
    ) -> Result<Option<Vec<SloSegment>>, StreamError> {
        let path = format!("{container}/{name}");
        let p = &path;
        self.call("GET", &path, |s| async move {
            let r = try_send!(self
                .request(&s, Method::GET, p)
                .query(&[("multipart-manifest", "get"), ("format", "raw")]));
            match r.status().as_u16() {
                200 => {}
                404 => return Outcome::Fail(StreamError::NotFound { object: p.clone() }),
                st => return Outcome::Fail(http_err("GET", p, st, r).await),
            }
            if !is_slo(&r) {
                return Outcome::Done(None);
            }
            let body = match read_limited(r, 16 * 1024 * 1024, p).await {
                Ok(b) => b,
                Err(ReadErr::Retry(w)) => return Outcome::Retry(w),
                Err(ReadErr::Fail(e)) => return Outcome::Fail(e),
            };
            match parse_slo(p, &body) {
                Ok(v) => Outcome::Done(Some(v)),
                Err(e) => Outcome::Fail(e),
            }
        })
        .await
    }
}

/// One page of a container listing (`?format=json`), as Swift sent it.
pub(crate) fn parse_listing_page(
    container: &str,
    body: &[u8],
) -> Result<Vec<ObjectMeta>, StreamError> {
    serde_json::from_slice::<Vec<ObjectMeta>>(body).map_err(|e| StreamError::BadResponse {
        target: container.into(),
        reason: format!("listing is not the expected JSON: {e}"),
    })
}

/// Append a listing page to what the pages before it gave; `Ok(false)`: the listing is
/// complete (an empty page). A page must start past the last name (the marker asked for),
/// and the whole listing stays within [`SWIFT_LIST_OBJECTS_MAX`].
pub(crate) fn add_listing_page(
    out: &mut Vec<ObjectMeta>,
    page: Vec<ObjectMeta>,
    container: &str,
    prefix: &str,
) -> Result<bool, StreamError> {
    if page.is_empty() {
        return Ok(false);
    }
    let marker = out.last().map(|o| o.name.as_str()).unwrap_or_default();
    if page.first().is_some_and(|o| o.name.as_str() <= marker) && !marker.is_empty() {
        return Err(StreamError::BadResponse {
            target: container.into(),
            reason: "listing did not advance past the marker".into(),
        });
    }
    out.extend(page);
    if out.len() as u64 > SWIFT_LIST_OBJECTS_MAX {
        return Err(StreamError::TooLarge {
            object: format!("listing of {container}/{prefix}*"),
            size: out.len() as u64,
            max: SWIFT_LIST_OBJECTS_MAX,
        });
    }
    Ok(true)
}

/// A Static Large Object manifest (`?multipart-manifest=get&format=raw`) read from `path`.
pub(crate) fn parse_slo(path: &str, body: &[u8]) -> Result<Vec<SloSegment>, StreamError> {
    serde_json::from_slice::<Vec<SloSegment>>(body).map_err(|e| StreamError::BadResponse {
        target: path.into(),
        reason: format!("SLO manifest is not the expected JSON: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_debug_redacts_key() {
        let c = SwiftClient::new(SwiftAuth::TempAuth {
            url: "http://h/auth/v1.0".into(),
            user: "u".into(),
            key: Secret::new("topsecret"),
        })
        .unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("topsecret"), "{d}");
    }
}
