//! Swift credentials: tempauth (v1.0) and Keystone v3 password auth, from drl's config or from
//! the usual OpenStack environment.
//!
//! Environment, in this order:
//! 1. `OS_CLOUD`: the named cloud from clouds.yaml (`OS_CLIENT_CONFIG_FILE`, ./clouds.yaml,
//!    ~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml — the first that exists);
//! 2. `OS_AUTH_URL` + `OS_USERNAME` + `OS_PASSWORD` (+ `OS_PROJECT_NAME`, domains, region):
//!    Keystone v3, or tempauth when the URL ends in `/auth/v1.0`;
//! 3. `ST_AUTH` + `ST_USER` + `ST_KEY` (python-swiftclient's tempauth variables).
//!
//! Passwords, keys and tokens are held in [`Secret`], whose `Debug` and `Display` print
//! `***`: they cannot leak through logs, `{:?}` or error messages. clouds.yaml is parsed with
//! `serde_yaml_ng` (the maintained fork of serde_yaml).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::StreamError;

pub use crate::secret::Secret;

/// How to authenticate to Swift.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SwiftAuth {
    /// tempauth / swauth v1.0: `GET url` with X-Auth-User/X-Auth-Key.
    #[serde(rename = "tempauth")]
    TempAuth {
        url: String,
        user: String,
        key: Secret,
    },
    /// Keystone v3 password auth, project-scoped; Swift from the catalog (`object-store`,
    /// interface public, `region` when given).
    KeystoneV3 {
        auth_url: String,
        username: String,
        password: Secret,
        project_name: String,
        user_domain_name: String,
        project_domain_name: String,
        region: Option<String>,
    },
}

impl SwiftAuth {
    /// The URL the credentials are sent to (for messages).
    pub fn auth_url(&self) -> &str {
        match self {
            SwiftAuth::TempAuth { url, .. } => url,
            SwiftAuth::KeystoneV3 { auth_url, .. } => auth_url,
        }
    }

    /// From the process environment (see the module doc). `Ok(None)` when nothing is set.
    pub fn from_env() -> Result<Option<SwiftAuth>, StreamError> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let mut paths = Vec::new();
        if let Some(p) = std::env::var_os("OS_CLIENT_CONFIG_FILE") {
            paths.push(PathBuf::from(p));
        }
        paths.push(PathBuf::from("clouds.yaml"));
        if let Some(h) = home {
            paths.push(h.join(".config/openstack/clouds.yaml"));
        }
        paths.push(PathBuf::from("/etc/openstack/clouds.yaml"));
        Self::from_env_with(&|k| std::env::var(k).ok().filter(|v| !v.is_empty()), &paths)
    }

    /// [`SwiftAuth::from_env`] with an explicit variable lookup and clouds.yaml search path.
    pub fn from_env_with(
        var: &dyn Fn(&str) -> Option<String>,
        clouds_paths: &[PathBuf],
    ) -> Result<Option<SwiftAuth>, StreamError> {
        if let Some(cloud) = var("OS_CLOUD") {
            let path = clouds_paths.iter().find(|p| p.is_file()).ok_or_else(|| {
                StreamError::Config(format!(
                    "OS_CLOUD={cloud} but no clouds.yaml found (looked in {})",
                    clouds_paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            return from_clouds_yaml(path, &cloud, var).map(Some);
        }
        if let Some(auth_url) = var("OS_AUTH_URL") {
            let need = |k: &str| {
                var(k).ok_or_else(|| {
                    StreamError::Config(format!("OS_AUTH_URL is set but {k} is not"))
                })
            };
            let username = need("OS_USERNAME")?;
            let password = Secret::new(need("OS_PASSWORD")?);
            if is_tempauth_url(&auth_url) {
                return Ok(Some(SwiftAuth::TempAuth {
                    url: auth_url,
                    user: username,
                    key: password,
                }));
            }
            let project_name = var("OS_PROJECT_NAME")
                .or_else(|| var("OS_TENANT_NAME"))
                .ok_or_else(|| {
                    StreamError::Config("OS_AUTH_URL is set but OS_PROJECT_NAME is not".into())
                })?;
            return Ok(Some(SwiftAuth::KeystoneV3 {
                auth_url,
                username,
                password,
                project_name,
                user_domain_name: var("OS_USER_DOMAIN_NAME").unwrap_or_else(|| "Default".into()),
                project_domain_name: var("OS_PROJECT_DOMAIN_NAME")
                    .unwrap_or_else(|| "Default".into()),
                region: var("OS_REGION_NAME"),
            }));
        }
        if let (Some(url), Some(user), Some(key)) = (var("ST_AUTH"), var("ST_USER"), var("ST_KEY"))
        {
            return Ok(Some(SwiftAuth::TempAuth {
                url,
                user,
                key: Secret::new(key),
            }));
        }
        Ok(None)
    }
}

fn is_tempauth_url(url: &str) -> bool {
    let u = url.trim_end_matches('/');
    u.ends_with("/auth/v1.0") || u.ends_with("/v1.0")
}

#[derive(Deserialize)]
struct CloudsFile {
    clouds: HashMap<String, Cloud>,
}

#[derive(Deserialize)]
struct Cloud {
    #[serde(default)]
    auth: CloudAuth,
    auth_type: Option<String>,
    region_name: Option<String>,
}

#[derive(Deserialize, Default)]
struct CloudAuth {
    auth_url: Option<String>,
    username: Option<String>,
    password: Option<Secret>,
    project_name: Option<String>,
    user_domain_name: Option<String>,
    project_domain_name: Option<String>,
    domain_name: Option<String>,
}

/// Read cloud `name` from a clouds.yaml file. `OS_PASSWORD` fills a password the file leaves
/// out (a common split: secure.yaml or the environment hold it).
fn from_clouds_yaml(
    path: &Path,
    name: &str,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<SwiftAuth, StreamError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StreamError::io(path.display(), "read clouds.yaml", e))?;
    // serde_yaml_ng errors quote positions, not values; still, keep only the message kind.
    let file: CloudsFile = serde_yaml_ng::from_str(&text).map_err(|e| {
        StreamError::Config(format!("{}: not a valid clouds.yaml: {e}", path.display()))
    })?;
    let cloud = file
        .clouds
        .get(name)
        .ok_or_else(|| StreamError::Config(format!("{}: no cloud named {name}", path.display())))?;
    let a = &cloud.auth;
    let missing = |f: &str| {
        StreamError::Config(format!(
            "{}: cloud {name}: auth.{f} is missing",
            path.display()
        ))
    };
    let auth_url = a.auth_url.clone().ok_or_else(|| missing("auth_url"))?;
    let username = a.username.clone().ok_or_else(|| missing("username"))?;
    let password = a
        .password
        .clone()
        .or_else(|| var("OS_PASSWORD").map(Secret::new))
        .ok_or_else(|| missing("password"))?;
    let tempauth = matches!(
        cloud.auth_type.as_deref(),
        Some("v1password") | Some("tempauth")
    ) || is_tempauth_url(&auth_url);
    if tempauth {
        return Ok(SwiftAuth::TempAuth {
            url: auth_url,
            user: username,
            key: password,
        });
    }
    match cloud.auth_type.as_deref() {
        None | Some("password") | Some("v3password") => {}
        Some(other) => {
            return Err(StreamError::Config(format!(
                "{}: cloud {name}: auth_type {other} is not supported (password, v3password, v1password)",
                path.display()
            )))
        }
    }
    let domain = a.domain_name.clone();
    Ok(SwiftAuth::KeystoneV3 {
        auth_url,
        username,
        password,
        project_name: a
            .project_name
            .clone()
            .ok_or_else(|| missing("project_name"))?,
        user_domain_name: a
            .user_domain_name
            .clone()
            .or(domain.clone())
            .unwrap_or_else(|| "Default".into()),
        project_domain_name: a
            .project_domain_name
            .clone()
            .or(domain)
            .unwrap_or_else(|| "Default".into()),
        region: cloud.region_name.clone().or_else(|| var("OS_REGION_NAME")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn secret_never_printed() {
        let a = SwiftAuth::TempAuth {
            url: "http://h/auth/v1.0".into(),
            user: "test:tester".into(),
            key: Secret::new("hunter2"),
        };
        let dbg = format!("{a:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("***"));
        assert_eq!(format!("{}", Secret::new("hunter2")), "***");
    }

    #[test]
    fn keystone_from_os_env() {
        let e = env(&[
            ("OS_AUTH_URL", "http://ks:5000/v3"),
            ("OS_USERNAME", "alice"),
            ("OS_PASSWORD", "pw"),
            ("OS_PROJECT_NAME", "proj"),
            ("OS_REGION_NAME", "RegionTwo"),
        ]);
        let a = SwiftAuth::from_env_with(&e, &[]).unwrap().unwrap();
        match a {
            SwiftAuth::KeystoneV3 {
                username,
                password,
                project_name,
                user_domain_name,
                region,
                ..
            } => {
                assert_eq!(username, "alice");
                assert_eq!(password.expose(), "pw");
                assert_eq!(project_name, "proj");
                assert_eq!(user_domain_name, "Default");
                assert_eq!(region.as_deref(), Some("RegionTwo"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tempauth_from_env_and_missing_pieces() {
        let e = env(&[
            ("OS_AUTH_URL", "http://127.0.0.1:8080/auth/v1.0"),
            ("OS_USERNAME", "test:tester"),
            ("OS_PASSWORD", "testing"),
        ]);
        assert!(matches!(
            SwiftAuth::from_env_with(&e, &[]).unwrap(),
            Some(SwiftAuth::TempAuth { .. })
        ));
        let e = env(&[
            ("ST_AUTH", "http://x/auth/v1.0"),
            ("ST_USER", "a:b"),
            ("ST_KEY", "k"),
        ]);
        assert!(matches!(
            SwiftAuth::from_env_with(&e, &[]).unwrap(),
            Some(SwiftAuth::TempAuth { .. })
        ));
        let e = env(&[("OS_AUTH_URL", "http://ks/v3"), ("OS_USERNAME", "a")]);
        let err = SwiftAuth::from_env_with(&e, &[]).unwrap_err().to_string();
        assert!(err.contains("OS_PASSWORD"), "{err}");
        assert!(SwiftAuth::from_env_with(&env(&[]), &[]).unwrap().is_none());
    }

    #[test]
    fn clouds_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("clouds.yaml");
        std::fs::write(
            &p,
            "clouds:\n  dr:\n    auth:\n      auth_url: http://ks:5000/v3\n      username: bob\n      password: s3cret\n      project_name: backup\n      user_domain_name: Users\n    region_name: R1\n  ta:\n    auth_type: v1password\n    auth:\n      auth_url: http://127.0.0.1:8080/auth/v1.0\n      username: test:tester\n      password: testing\n",
        )
        .unwrap();
        let e = env(&[("OS_CLOUD", "dr")]);
        let a = SwiftAuth::from_env_with(&e, &[dir.path().join("nope.yaml"), p.clone()])
            .unwrap()
            .unwrap();
        assert!(!format!("{a:?}").contains("s3cret"));
        match a {
            SwiftAuth::KeystoneV3 {
                user_domain_name,
                project_domain_name,
                region,
                project_name,
                ..
            } => {
                assert_eq!(user_domain_name, "Users");
                assert_eq!(project_domain_name, "Default");
                assert_eq!(region.as_deref(), Some("R1"));
                assert_eq!(project_name, "backup");
            }
            other => panic!("{other:?}"),
        }
        let e = env(&[("OS_CLOUD", "ta")]);
        assert!(matches!(
            SwiftAuth::from_env_with(&e, std::slice::from_ref(&p)).unwrap(),
            Some(SwiftAuth::TempAuth { .. })
        ));
        let e = env(&[("OS_CLOUD", "missing")]);
        let err = SwiftAuth::from_env_with(&e, &[p]).unwrap_err().to_string();
        assert!(err.contains("no cloud named missing"), "{err}");
    }
}
