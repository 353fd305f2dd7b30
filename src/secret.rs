//! [`Secret`]: a password, key or token whose `Debug` and `Display` print `***`, so it cannot
//! leak through logs, `{:?}` or error messages. A leaf module: Swift and Keystone credentials,
//! the detection probe key and the orchestrator's tokens all hold one.

use std::fmt;

use serde::Deserialize;

/// A credential or token. Only [`Secret::expose`] gives the value, for the one header or JSON
/// field that carries it.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
