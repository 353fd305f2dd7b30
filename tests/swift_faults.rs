//! The Swift client against a failure-injecting HTTP server (a real socket, a scripted
//! answer per request): token expiry and re-auth, 5xx retries, wrong ETags, missing headers,
//! truncated bodies, bad JSON. What a real Swift cannot be made to do on demand.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use drl::stream::auth::{Secret, SwiftAuth};
use drl::stream::store::{md5_hex, ObjectStore};
use drl::stream::swift::SwiftClient;
use drl::stream::StreamError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    token: Option<String>,
    body: Vec<u8>,
}

/// An answer: status, extra headers, body, and a Content-Length override (to lie).
struct Ans {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    content_length: Option<usize>,
}

fn ans(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Ans {
    Ans {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.to_vec(),
        content_length: None,
    }
}

type Log = Arc<Mutex<Vec<Req>>>;
type Handler = Arc<dyn Fn(&Req, usize) -> Ans + Send + Sync>;

/// Serve `handler` on 127.0.0.1; returns the base URL and the log of requests.
async fn serve(handler: Handler) -> (String, Arc<Mutex<Vec<Req>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let (handler, log) = (handler.clone(), log2.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 65536];
                let head_end = loop {
                    let n = s.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.split("\r\n");
                let mut first = lines.next().unwrap_or("").split(' ');
                let method = first.next().unwrap_or("").to_string();
                let path = first.next().unwrap_or("").to_string();
                let mut len = 0usize;
                let mut token = None;
                for l in lines {
                    if let Some((k, v)) = l.split_once(": ") {
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => len = v.parse().unwrap_or(0),
                            "x-auth-token" => token = Some(v.to_string()),
                            _ => {}
                        }
                    }
                }
                while buf.len() < head_end + len {
                    let n = s.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                let req = Req {
                    method,
                    path,
                    token,
                    body: buf[head_end..].to_vec(),
                };
                let nth = {
                    let mut g = log.lock().unwrap();
                    g.push(req.clone());
                    g.len() - 1
                };
                let a = handler(&req, nth);
                let mut out = format!(
                    "HTTP/1.1 {} X\r\nConnection: close\r\nContent-Length: {}\r\n",
                    a.status,
                    a.content_length.unwrap_or(a.body.len())
                );
                for (k, v) in &a.headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let _ = s.write_all(out.as_bytes()).await;
                if req.method != "HEAD" {
                    let _ = s.write_all(&a.body).await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (base, log)
}

fn client(base: &str) -> SwiftClient {
    let auth = SwiftAuth::TempAuth {
        url: format!("{base}/auth/v1.0"),
        user: "a:b".into(),
        key: Secret::new("k3y-s3cret"),
    };
    SwiftClient::with_retry(auth, 3, 5).unwrap()
}

/// tempauth: answer tokens t1, t2, ... in order.
fn auth_answer(base: &str, log: &[Req]) -> Ans {
    let n = log.iter().filter(|r| r.path.starts_with("/auth")).count();
    let url = format!("{base}/v1/AUTH_a");
    let tok = format!("t{n}");
    ans(
        200,
        &[
            ("X-Storage-Url", url.as_str()),
            ("X-Auth-Token", tok.as_str()),
        ],
        b"",
    )
}

#[tokio::test]
async fn expired_token_reauthenticates_once() {
    let base_cell = Arc::new(Mutex::new(String::new()));
    let b2 = base_cell.clone();
    let log_cell: Arc<Mutex<Option<Log>>> = Arc::new(Mutex::new(None));
    let l2 = log_cell.clone();
    let (base, log) = serve(Arc::new(move |r: &Req, _| {
        let base = b2.lock().unwrap().clone();
        if r.path.starts_with("/auth") {
            let log = l2.lock().unwrap().clone().unwrap();
            let snapshot = log.lock().unwrap().clone();
            return auth_answer(&base, &snapshot);
        }
        // Token t1 "expired": only t2 is accepted.
        if r.token.as_deref() != Some("t2") {
            return ans(401, &[], b"Unauthorized");
        }
        let md5 = md5_hex(&r.body);
        ans(201, &[("Etag", &format!("\"{md5}\""))], b"")
    }))
    .await;
    *base_cell.lock().unwrap() = base.clone();
    *log_cell.lock().unwrap() = Some(log.clone());
    let c = client(&base);
    let etag = c.put("c", "o", Bytes::from_static(b"data")).await.unwrap();
    assert_eq!(etag, md5_hex(b"data"));
    let paths: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        paths,
        [
            "GET /auth/v1.0",
            "PUT /v1/AUTH_a/c/o",
            "GET /auth/v1.0",
            "PUT /v1/AUTH_a/c/o"
        ]
    );
}

#[tokio::test]
async fn token_refused_twice_is_an_auth_error() {
    let base_cell = Arc::new(Mutex::new(String::new()));
    let b2 = base_cell.clone();
    let (base, log) = serve(Arc::new(move |r: &Req, n| {
        if r.path.starts_with("/auth") {
            let url = format!("{}/v1/AUTH_a", b2.lock().unwrap());
            let t = format!("t{n}");
            return ans(
                200,
                &[
                    ("X-Storage-Url", url.as_str()),
                    ("X-Auth-Token", t.as_str()),
                ],
                b"",
            );
        }
        ans(401, &[], b"")
    }))
    .await;
    *base_cell.lock().unwrap() = base.clone();
    let e = client(&base).head("c", "o").await.unwrap_err();
    assert!(matches!(e, StreamError::Auth { .. }), "{e}");
    assert!(!format!("{e:?}").contains("k3y-s3cret"));
    assert_eq!(
        log.lock().unwrap().len(),
        4,
        "auth, HEAD, re-auth, HEAD: no loop"
    );
}

/// A server whose storage part is `f`; auth always succeeds with token "t".
async fn storage(
    f: impl Fn(&Req, usize) -> Ans + Send + Sync + 'static,
) -> (SwiftClient, Arc<Mutex<Vec<Req>>>) {
    let base_cell = Arc::new(Mutex::new(String::new()));
    let b2 = base_cell.clone();
    let (base, log) = serve(Arc::new(move |r: &Req, n| {
        if r.path.starts_with("/auth") {
            let url = format!("{}/v1/AUTH_a", b2.lock().unwrap());
            return ans(
                200,
                &[("X-Storage-Url", url.as_str()), ("X-Auth-Token", "t")],
                b"",
            );
        }
        f(r, n)
    }))
    .await;
    *base_cell.lock().unwrap() = base.clone();
    (client(&base), log)
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    // Two 503s, then success.
    let (c, log) = storage(|r, n| {
        if n <= 2 {
            return ans(503, &[], b"busy");
        }
        ans(201, &[("Etag", &md5_hex(&r.body))], b"")
    })
    .await;
    c.put("c", "o", Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(log.lock().unwrap().len(), 4);
    // Always 500: bounded attempts, a message with the status.
    let (c, log) = storage(|_, _| ans(500, &[], b"boom")).await;
    let e = c.delete("c", "o").await.unwrap_err();
    assert!(
        matches!(e, StreamError::RetriesExhausted { attempts: 3, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("500"), "{e}");
    assert_eq!(log.lock().unwrap().len(), 4, "auth + 3 attempts");
}

#[tokio::test]
async fn wrong_or_missing_etag_on_put() {
    let (c, _) =
        storage(|_, _| ans(201, &[("Etag", "0123456789abcdef0123456789abcdef")], b"")).await;
    let e = c.put("c", "o", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(e, StreamError::EtagMismatch { .. }), "{e}");
    let (c, _) = storage(|_, _| ans(201, &[], b"")).await;
    let e = c.put("c", "o", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(e.to_string().contains("lacks Etag"), "{e}");
}

#[tokio::test]
async fn truncated_or_altered_get_bodies() {
    // Announces 10 bytes, sends 4: retried, then reported.
    let (c, log) = storage(|_, _| Ans {
        content_length: Some(10),
        ..ans(200, &[], b"abcd")
    })
    .await;
    let e = c.get("c", "o", 100).await.unwrap_err();
    assert!(matches!(e, StreamError::RetriesExhausted { .. }), "{e}");
    assert_eq!(log.lock().unwrap().len(), 4);
    // Body does not match its Etag.
    let (c, _) = storage(|_, _| ans(200, &[("Etag", &md5_hex(b"good"))], b"evil")).await;
    let e = c.get("c", "o", 100).await.unwrap_err().to_string();
    assert!(e.contains("differs from Etag"), "{e}");
}

#[tokio::test]
async fn bad_listing_json_and_auth_headers() {
    let (c, _) = storage(|_, _| ans(200, &[], b"<html>not json</html>")).await;
    let e = c.list("c", "").await.unwrap_err().to_string();
    assert!(e.contains("listing is not the expected JSON"), "{e}");
    // tempauth answer without a storage URL.
    let (base, _) = serve(Arc::new(|_: &Req, _| {
        ans(200, &[("X-Auth-Token", "t")], b"")
    }))
    .await;
    let e = client(&base).head("c", "o").await.unwrap_err().to_string();
    assert!(e.contains("lacks X-Storage-Url"), "{e}");
}
