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
    let (token, body, url) = match keystone_token(http, auth).await {
        Outcome::Done(t) => t,
        Outcome::Retry(why) => return Outcome::Retry(why),
        Outcome::Unauthorized => return Outcome::Unauthorized,
        Outcome::Fail(e) => return Outcome::Fail(e),
    };
    let region = match auth {
        SwiftAuth::KeystoneV3 { region, .. } => region.as_deref(),
        SwiftAuth::TempAuth { .. } => None,
    };
    match object_store_endpoint(&body, region) {
        Ok(storage_url) => Outcome::Done(Session { storage_url, token }),
        Err(reason) => Outcome::Fail(StreamError::BadResponse {
            target: url,
            reason,
        }),
    }
}

/// One Keystone v3 password authentication, project-scoped: the token, the answer's body
/// (catalog, project) and the URL it was sent to. Shared by the Swift client and the recovery
/// orchestrator's OpenStack clients (`orchestrator::openstack`).
pub(crate) async fn keystone_token(
    http: &reqwest::Client,
    auth: &SwiftAuth,
) -> Outcome<(Secret, bytes::Bytes, String)> {
    let SwiftAuth::KeystoneV3 {
        auth_url,
        username,
        password,
        project_name,
        user_domain_name,
        project_domain_name,
        region: _,
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
    match read_limited(resp, SWIFT_AUTH_RESPONSE_BYTES_MAX as u64, &url).await {
        Ok(b) => Outcome::Done((token, b, url)),
        Err(ReadErr::Retry(why)) => Outcome::Retry(why),
        Err(ReadErr::Fail(e)) => Outcome::Fail(e),
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
    project: Option<TokenProject>,
}
#[derive(Deserialize)]
struct TokenProject {
    id: String,
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
    catalog_endpoint(body, &["object-store"], region)
}

/// The public URL of the first service of one of `kinds` (catalog types, in order of
/// preference: `["volumev3", "block-storage"]`) in a Keystone v3 token answer.
pub fn catalog_endpoint(
    body: &[u8],
    kinds: &[&str],
    region: Option<&str>,
) -> Result<String, String> {
    let t: TokenAnswer = serde_json::from_slice(body)
        .map_err(|e| format!("token answer is not the expected JSON: {e}"))?;
    let entry = kinds
        .iter()
        .find_map(|k| t.token.catalog.iter().find(|c| c.kind == *k))
        .ok_or_else(|| format!("the catalog has no {} service", kinds.join(" or ")))?;
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
                "no public {} endpoint{}",
                entry.kind,
                region
                    .map(|r| format!(" in region {r}"))
                    .unwrap_or_default()
            )
        })
}

/// The id of the project a Keystone v3 token answer is scoped to.
pub fn token_project_id(body: &[u8]) -> Result<String, String> {
    let t: TokenAnswer = serde_json::from_slice(body)
        .map_err(|e| format!("token answer is not the expected JSON: {e}"))?;
    t.token
        .project
        .map(|p| p.id)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| "the token is not scoped to a project".into())
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
        assert_eq!(
            token_project_id(br#"{"token":{"project":{"id":"p1"}}}"#).unwrap(),
            "p1"
        );
        assert!(token_project_id(br#"{"token":{}}"#).is_err());
        assert!(object_store_endpoint(b"<html>", None)
            .unwrap_err()
            .contains("JSON"));
    }
}
