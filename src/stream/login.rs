//! How a [`SwiftClient`](super::swift::SwiftClient) logs in: tempauth v1.0 and Keystone v3
//! password auth (project-scoped token, Swift's public URL from the service catalog).
//!
//! Each function makes one attempt and sorts its result into done / retry / refused / failed;
//! the client owns the retry loop and the session. Credentials go out in one header or one
//! JSON body and are never part of a returned error.

use reqwest::StatusCode;
use serde::Deserialize;

use super::auth::{Secret, SwiftAuth};
use super::http::{error_body, is_retryable, read_limited, ReadErr};
use super::swift::{Outcome, Session};
use super::StreamError;
use crate::limits::SWIFT_AUTH_RESPONSE_BYTES_MAX;

pub(super) async fn tempauth(
    http: &reqwest::Client,
    url: &str,
    user: &str,
    key: &Secret,
) -> Outcome<Session> {
    let resp = match http
        .get(url)
        .header("X-Auth-User", user)
        .header("X-Auth-Key", key.expose())
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return Outcome::Retry(e.without_url().to_string()),
    };
    let st = resp.status();
    if st == StatusCode::UNAUTHORIZED || st == StatusCode::FORBIDDEN {
        return Outcome::Unauthorized;
    }
    if is_retryable(st) {
        return Outcome::Retry(format!("status {st}"));
    }
    if !st.is_success() {
        return Outcome::Fail(StreamError::Auth {
            url: url.into(),
            reason: format!("status {st}"),
        });
    }
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match (
        h("x-storage-url"),
        h("x-auth-token").or_else(|| h("x-storage-token")),
    ) {
        (Some(storage_url), Some(token)) => Outcome::Done(Session {
            storage_url: storage_url.trim_end_matches('/').into(),
            token: Secret::new(token),
        }),
        _ => Outcome::Fail(StreamError::BadResponse {
            target: url.into(),
            reason: "tempauth answer lacks X-Storage-Url or X-Auth-Token".into(),
        }),
    }
}

pub(super) async fn keystone(http: &reqwest::Client, auth: &SwiftAuth) -> Outcome<Session> {
    let SwiftAuth::KeystoneV3 {
        auth_url,
        username,
        password,
        project_name,
        user_domain_name,
        project_domain_name,
        region,
    } = auth
    else {
        return Outcome::Fail(StreamError::Config("not a Keystone config".into()));
    };
    let base = auth_url.trim_end_matches('/');
    let url = if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    };
    let body = serde_json::json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": username, "domain": {"name": user_domain_name}, "password": password.expose()}}},
        "scope": {"project": {"name": project_name, "domain": {"name": project_domain_name}}}
    }});
    let resp = match http.post(&url).json(&body).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Retry(e.without_url().to_string()),
    };
    let st = resp.status();
    if st == StatusCode::UNAUTHORIZED {
        return Outcome::Unauthorized;
    }
    if is_retryable(st) {
        return Outcome::Retry(format!("status {st}"));
    }
    if !st.is_success() {
        return Outcome::Fail(StreamError::Auth {
            url,
            reason: format!("status {st}: {}", error_body(resp).await),
        });
    }
    let Some(token) = resp
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(Secret::new)
    else {
        return Outcome::Fail(StreamError::BadResponse {
            target: url,
            reason: "Keystone answer lacks X-Subject-Token".into(),
        });
    };
    let body = match read_limited(resp, SWIFT_AUTH_RESPONSE_BYTES_MAX as u64, &url).await {
        Ok(b) => b,
        Err(ReadErr::Retry(why)) => return Outcome::Retry(why),
        Err(ReadErr::Fail(e)) => return Outcome::Fail(e),
    };
    match object_store_endpoint(&body, region.as_deref()) {
        Ok(storage_url) => Outcome::Done(Session { storage_url, token }),
        Err(reason) => Outcome::Fail(StreamError::BadResponse {
            target: url,
            reason,
        }),
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: TokenBody,
}
#[derive(Deserialize)]
struct TokenBody {
    #[serde(default)]
    catalog: Vec<CatalogEntry>,
}
#[derive(Deserialize)]
struct CatalogEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
}
#[derive(Deserialize)]
struct Endpoint {
    interface: String,
    url: String,
    region: Option<String>,
    region_id: Option<String>,
}

/// Swift's public URL from a Keystone v3 token answer.
pub fn object_store_endpoint(body: &[u8], region: Option<&str>) -> Result<String, String> {
    let t: TokenAnswer = serde_json::from_slice(body)
        .map_err(|e| format!("token answer is not the expected JSON: {e}"))?;
    let entry = t
        .token
        .catalog
        .iter()
        .find(|c| c.kind == "object-store")
        .ok_or("the catalog has no object-store service")?;
    entry
        .endpoints
        .iter()
        .find(|e| {
            e.interface == "public"
                && region.is_none_or(|r| {
                    e.region.as_deref() == Some(r) || e.region_id.as_deref() == Some(r)
                })
        })
        .map(|e| e.url.trim_end_matches('/').to_string())
        .ok_or_else(|| {
            format!(
                "no public object-store endpoint{}",
                region
                    .map(|r| format!(" in region {r}"))
                    .unwrap_or_default()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_selection() {
        let body = br#"{"token":{"catalog":[
            {"type":"identity","endpoints":[{"interface":"public","url":"http://ks/v3","region":"R1"}]},
            {"type":"object-store","endpoints":[
              {"interface":"internal","url":"http://int:8080/v1/AUTH_p","region":"R1","region_id":"R1"},
              {"interface":"public","url":"http://r1:8080/v1/AUTH_p/","region":"R1","region_id":"R1"},
              {"interface":"public","url":"http://r2:8080/v1/AUTH_p","region":"R2","region_id":"R2"}]}]}}"#;
        assert_eq!(
            object_store_endpoint(body, None).unwrap(),
            "http://r1:8080/v1/AUTH_p"
        );
        assert_eq!(
            object_store_endpoint(body, Some("R2")).unwrap(),
            "http://r2:8080/v1/AUTH_p"
        );
        assert!(object_store_endpoint(body, Some("R3"))
            .unwrap_err()
            .contains("region R3"));
        assert!(object_store_endpoint(br#"{"token":{"catalog":[]}}"#, None)
            .unwrap_err()
            .contains("no object-store"));
        assert!(object_store_endpoint(b"<html>", None)
            .unwrap_err()
            .contains("JSON"));
    }
}
