//! The backup site's cloud: Keystone v3 (token, project, catalog), Cinder v3 (manage-existing,
//! list, show, messages, unmanage) and Heat v1 (create, find, show, delete), over reqwest.
//!
//! Credentials are the stream's ([`SwiftAuth::KeystoneV3`]: `[openstack]`, `OS_*`, `OS_CLOUD`)
//! and the token request is the stream's ([`crate::stream::login::keystone_token`]); the
//! endpoints come from the token's catalog (`volumev3` / `block-storage`, `orchestration`).
//! Every answer is checked: a status outside 2xx, a body that is not the expected JSON or one
//! that lacks a field is an error that names the call (`cinder manage r0`, `heat create web`)
//! and carries the service's own message. A 401 re-authenticates once. Nothing is retried
//! otherwise: the recovery journal makes every step safe to run again.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::OrchError;
use crate::limits::*;
use crate::stream::auth::{Secret, SwiftAuth};
use crate::stream::login;
use crate::stream::swift::Outcome;

/// Cinder's microversion for manage-existing through `manageable_volumes` (3.8).
const CINDER_MICROVERSION: &str = "volume 3.8";

#[derive(Clone, Debug)]
struct Session {
    token: Secret,
    project_id: String,
    cinder: String,
    heat: String,
}

/// One cloud, reached with one set of credentials.
pub struct Cloud {
    http: reqwest::Client,
    auth: SwiftAuth,
    session: tokio::sync::Mutex<Option<Session>>,
}

/// A Cinder volume as drl needs it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    /// Cinder says "true" / "false".
    #[serde(default)]
    pub bootable: Value,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Volume {
    pub fn is_bootable(&self) -> bool {
        matches!(&self.bootable, Value::String(s) if s == "true")
            || self.bootable == Value::Bool(true)
    }
}

/// A Heat stack as drl needs it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stack {
    pub id: String,
    pub stack_name: String,
    pub stack_status: String,
    #[serde(default)]
    pub stack_status_reason: Option<String>,
    #[serde(default)]
    pub parameters: Option<BTreeMap<String, Value>>,
}

impl Cloud {
    pub fn new(auth: SwiftAuth) -> Result<Cloud, OrchError> {
        if !matches!(auth, SwiftAuth::KeystoneV3 { .. }) {
            return Err(OrchError::Config(
                "the orchestrator needs Keystone v3 credentials ([openstack], or OS_AUTH_URL .../v3, or OS_CLOUD); tempauth has no Cinder or Heat".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(DR_API_CONNECT_TIMEOUT_MS))
            .timeout(Duration::from_millis(DR_API_REQUEST_TIMEOUT_MS))
            .build()
            .map_err(|e| OrchError::Config(format!("HTTP client: {e}")))?;
        Ok(Cloud {
            http,
            auth,
            session: tokio::sync::Mutex::new(None),
        })
    }

    /// `[openstack]` from the config, else the OpenStack environment.
    pub fn from_config(auth: Option<SwiftAuth>) -> Result<Cloud, OrchError> {
        let auth = match auth {
            Some(a) => a,
            None => SwiftAuth::from_env()
                .map_err(|e| OrchError::Config(e.to_string()))?
                .ok_or_else(|| {
                    OrchError::Config(
                        "no cloud credentials: add an [openstack] section, or set OS_AUTH_URL/OS_USERNAME/OS_PASSWORD/OS_PROJECT_NAME or OS_CLOUD".into(),
                    )
                })?,
        };
        Cloud::new(auth)
    }

    pub fn auth_url(&self) -> &str {
        self.auth.auth_url()
    }

    async fn session(&self) -> Result<Session, OrchError> {
        let mut g = self.session.lock().await;
        if let Some(s) = g.as_ref() {
            return Ok(s.clone());
        }
        let url = self.auth.auth_url().to_string();
        let (token, body, turl) = match login::keystone_token(&self.http, &self.auth).await {
            Outcome::Done(t) => t,
            Outcome::Unauthorized => {
                return Err(OrchError::Auth {
                    url,
                    reason: "Keystone refused the credentials (401): check username, password, project and domains".into(),
                })
            }
            Outcome::Retry(why) => {
                return Err(OrchError::Unreachable {
                    call: "keystone token".into(),
                    reason: format!("{url}: {why}"),
                })
            }
            Outcome::Fail(e) => {
                return Err(OrchError::Auth {
                    url,
                    reason: e.to_string(),
                })
            }
        };
        let region = match &self.auth {
            SwiftAuth::KeystoneV3 { region, .. } => region.clone(),
            SwiftAuth::TempAuth { .. } => None,
        };
        let bad = |reason: String| OrchError::BadAnswer {
            call: "keystone token".into(),
            reason: format!("{turl}: {reason}"),
        };
        let s = Session {
            token,
            project_id: login::token_project_id(&body).map_err(bad)?,
            cinder: login::catalog_endpoint(
                &body,
                &["volumev3", "block-storage"],
                region.as_deref(),
            )
            .map_err(bad)?,
            heat: login::catalog_endpoint(&body, &["orchestration"], region.as_deref())
                .map_err(bad)?,
        };
        *g = Some(s.clone());
        Ok(s)
    }

    /// Authenticate now (a wrong password fails here, before anything changes).
    pub async fn login(&self) -> Result<(), OrchError> {
        self.session().await.map(|_| ())
    }

    /// The Cinder and Heat endpoints and the project ID (for `--dry-run`).
    pub async fn endpoints(&self) -> Result<(String, String, String), OrchError> {
        let s = self.session().await?;
        Ok((s.cinder, s.heat, s.project_id))
    }

    /// One API call: `path` is relative to the service's endpoint. Returns the status and
    /// the JSON body (`Null` when empty).
    async fn call(
        &self,
        call: &str,
        method: Method,
        service: Service,
        path: &str,
        body: Option<&Value>,
        microversion: Option<&str>,
    ) -> Result<(StatusCode, Value), OrchError> {
        let mut reauth = true;
        loop {
            let s = self.session().await?;
            let base = match service {
                Service::Cinder => &s.cinder,
                Service::Heat => &s.heat,
            };
            let url = format!("{base}{path}");
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("X-Auth-Token", s.token.expose())
                .header("Accept", "application/json");
            if let Some(v) = microversion {
                req = req.header("OpenStack-API-Version", v);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| OrchError::Unreachable {
                call: call.into(),
                reason: format!("{method} {url}: {}", e.without_url()),
            })?;
            let st = resp.status();
            if st == StatusCode::UNAUTHORIZED && reauth {
                reauth = false;
                let mut g = self.session.lock().await;
                if g.as_ref().is_some_and(|x| x.token == s.token) {
                    *g = None;
                }
                continue;
            }
            let bytes = read_body(resp, call).await?;
            if !st.is_success() {
                return Err(OrchError::Api {
                    call: call.into(),
                    status: st.as_u16(),
                    message: error_message(&bytes),
                });
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok((st, Value::Null));
            }
            let v = serde_json::from_slice(&bytes).map_err(|e| OrchError::BadAnswer {
                call: call.into(),
                reason: format!("{method} {url}: not JSON: {e}"),
            })?;
            return Ok((st, v));
        }
    }

    // ---- Cinder ----

    /// `POST manageable_volumes`: hand an existing backend object to Cinder.
    pub async fn manage_volume(
        &self,
        resource: &str,
        host: &str,
        source_name: &str,
        name: &str,
        bootable: bool,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Volume, OrchError> {
        let call = format!("cinder manage {resource}");
        let body = manage_body(host, source_name, name, bootable, metadata);
        let (_, v) = self
            .call(
                &call,
                Method::POST,
                Service::Cinder,
                "/manageable_volumes",
                Some(&body),
                Some(CINDER_MICROVERSION),
            )
            .await?;
        field(&call, v, "volume")
    }

    /// Every volume of the project (details), at most [`DR_VOLUMES_LISTED_COUNT_MAX`].
    pub async fn list_volumes(&self) -> Result<Vec<Volume>, OrchError> {
        let call = "cinder list volumes";
        let (_, v) = self
            .call(
                call,
                Method::GET,
                Service::Cinder,
                &format!("/volumes/detail?limit={DR_VOLUMES_LISTED_COUNT_MAX}"),
                None,
                Some(CINDER_MICROVERSION),
            )
            .await?;
        field(call, v, "volumes")
    }

    pub async fn show_volume(&self, resource: &str, id: &str) -> Result<Volume, OrchError> {
        let call = format!("cinder show {resource} ({id})");
        let (_, v) = self
            .call(
                &call,
                Method::GET,
                Service::Cinder,
                &format!("/volumes/{id}"),
                None,
                Some(CINDER_MICROVERSION),
            )
            .await?;
        field(&call, v, "volume")
    }

    /// Cinder's user messages about a volume (why it went to `error_managing`), newest last.
    pub async fn volume_messages(&self, id: &str) -> Result<Vec<String>, OrchError> {
        let call = format!("cinder messages of {id}");
        let (_, v) = self
            .call(
                &call,
                Method::GET,
                Service::Cinder,
                &format!("/messages?resource_uuid={id}"),
                None,
                Some(CINDER_MICROVERSION),
            )
            .await?;
        let msgs: Vec<Value> = field(&call, v, "messages")?;
        Ok(msgs
            .iter()
            .filter_map(|m| m.get("user_message").and_then(Value::as_str))
            .map(str::to_owned)
            .collect())
    }

    /// `os-unmanage`: Cinder forgets the volume; the data stays.
    pub async fn unmanage_volume(&self, resource: &str, id: &str) -> Result<(), OrchError> {
        let call = format!("cinder unmanage {resource} ({id})");
        self.call(
            &call,
            Method::POST,
            Service::Cinder,
            &format!("/volumes/{id}/action"),
            Some(&json!({"os-unmanage": null})),
            Some(CINDER_MICROVERSION),
        )
        .await
        .map(|_| ())
    }

    // ---- Heat ----

    /// The stack of this name, if any (deleted stacks are not listed).
    pub async fn find_stack(&self, name: &str) -> Result<Option<Stack>, OrchError> {
        let call = format!("heat find {name}");
        let (_, v) = self
            .call(
                &call,
                Method::GET,
                Service::Heat,
                &format!("/stacks?name={}", crate::stream::http::encode_path(name)),
                None,
                None,
            )
            .await?;
        let stacks: Vec<Stack> = field(&call, v, "stacks")?;
        let Some(s) = stacks.into_iter().find(|s| s.stack_name == name) else {
            return Ok(None);
        };
        self.show_stack(name, &s.id).await.map(Some)
    }

    pub async fn show_stack(&self, name: &str, id: &str) -> Result<Stack, OrchError> {
        let call = format!("heat show {name}");
        let (_, v) = self
            .call(
                &call,
                Method::GET,
                Service::Heat,
                &format!("/stacks/{}/{id}", crate::stream::http::encode_path(name)),
                None,
                None,
            )
            .await?;
        field(&call, v, "stack")
    }

    /// `POST stacks`; returns the new stack's ID.
    pub async fn create_stack(
        &self,
        name: &str,
        template: &Value,
        parameters: &BTreeMap<String, String>,
    ) -> Result<String, OrchError> {
        let call = format!("heat create {name}");
        let body = json!({
            "stack_name": name,
            "template": template,
            "parameters": parameters,
            "disable_rollback": true,
        });
        let (_, v) = self
            .call(
                &call,
                Method::POST,
                Service::Heat,
                "/stacks",
                Some(&body),
                None,
            )
            .await?;
        #[derive(Deserialize)]
        struct Created {
            id: String,
        }
        let c: Created = field(&call, v, "stack")?;
        Ok(c.id)
    }

    pub async fn delete_stack(&self, name: &str, id: &str) -> Result<(), OrchError> {
        let call = format!("heat delete {name}");
        self.call(
            &call,
            Method::DELETE,
            Service::Heat,
            &format!("/stacks/{}/{id}", crate::stream::http::encode_path(name)),
            None,
            None,
        )
        .await
        .map(|_| ())
    }
}

#[derive(Clone, Copy)]
enum Service {
    Cinder,
    Heat,
}

/// The body of `POST manageable_volumes`.
pub fn manage_body(
    host: &str,
    source_name: &str,
    name: &str,
    bootable: bool,
    metadata: &BTreeMap<String, String>,
) -> Value {
    json!({"volume": {
        "host": host,
        "ref": {"source-name": source_name},
        "name": name,
        "bootable": bootable,
        "metadata": metadata,
    }})
}

async fn read_body(mut r: reqwest::Response, call: &str) -> Result<Vec<u8>, OrchError> {
    let mut out = Vec::new();
    loop {
        match r.chunk().await {
            Ok(Some(c)) => {
                if (out.len() + c.len()) as u64 > DR_API_RESPONSE_BYTES_MAX {
                    return Err(OrchError::BadAnswer {
                        call: call.into(),
                        reason: format!("answer larger than {DR_API_RESPONSE_BYTES_MAX} bytes"),
                    });
                }
                out.extend_from_slice(&c);
            }
            Ok(None) => return Ok(out),
            Err(e) => {
                return Err(OrchError::Unreachable {
                    call: call.into(),
                    reason: format!("reading the answer: {}", e.without_url()),
                })
            }
        }
    }
}

/// The message of an OpenStack error answer: Cinder's `{"badRequest": {"message": ...}}`,
/// Heat's `{"error": {"message": ...}, "explanation": ...}`, or the first bytes of the body.
pub fn error_message(body: &[u8]) -> String {
    let cut = |s: &str| {
        s.chars()
            .take(SWIFT_ERROR_BODY_BYTES_MAX)
            .collect::<String>()
    };
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return cut(String::from_utf8_lossy(body).trim());
    };
    let msg = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            v.as_object().and_then(|o| {
                o.values()
                    .find_map(|x| x.get("message").and_then(Value::as_str).map(str::to_owned))
            })
        })
        .or_else(|| {
            v.get("explanation")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    cut(&msg.unwrap_or_else(|| v.to_string()))
}

/// `v[key]` as `T`, or an error naming the call.
fn field<T: serde::de::DeserializeOwned>(
    call: &str,
    mut v: Value,
    key: &str,
) -> Result<T, OrchError> {
    let inner = v
        .get_mut(key)
        .map(Value::take)
        .ok_or_else(|| OrchError::BadAnswer {
            call: call.into(),
            reason: format!("the answer has no \"{key}\""),
        })?;
    serde_json::from_value(inner).map_err(|e| OrchError::BadAnswer {
        call: call.into(),
        reason: format!("\"{key}\" is not what drl expects: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(br#"{"badRequest": {"message": "Invalid input", "code": 400}}"#),
            "Invalid input"
        );
        assert_eq!(
            error_message(br#"{"explanation": "x", "error": {"message": "Property error: boot", "type": "StackValidationFailed"}}"#),
            "Property error: boot"
        );
        assert_eq!(error_message(b"<html>oops</html>"), "<html>oops</html>");
    }

    #[test]
    fn fields_checked() {
        let v = json!({"volume": {"id": "v1", "status": "creating", "bootable": "true"}});
        let vol: Volume = field("c", v, "volume").unwrap();
        assert!(vol.is_bootable());
        let e = field::<Volume>("cinder show r0", json!({"volume": {"id": 3}}), "volume")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cinder show r0"), "{e}");
        let e = field::<Volume>("cinder show r0", json!({}), "volume")
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no \"volume\""), "{e}");
    }
}
