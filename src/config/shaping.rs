//! `[shaping]`: the link cap and the traffic classes of the WAN shaper.
//!
//! ```toml
//! [shaping]
//! link-rate = "100Mbit"       # the cap over all of drl's WAN traffic; without it drl only counts
//! burst = "256KiB"            # default: 5 ms of link-rate, at least 64KiB
//! [shaping.class.replication]
//! share = 50                  # relative weights; defaults 50 / 25 / 15 / 10
//! [shaping.class.image]
//! share = 10
//! ceil = "20Mbit"             # optional ceiling (needs link-rate)
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::units::{ByteSize, Rate};
use super::ConfigError;
use crate::shaping::{Class, ShapingConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawShaping {
    pub link_rate: Option<Rate>,
    pub burst: Option<ByteSize>,
    #[serde(default)]
    pub class: BTreeMap<String, RawClass>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawClass {
    pub share: Option<u32>,
    pub ceil: Option<Rate>,
}

pub(super) fn shaping_config(
    raw: Option<&RawShaping>,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<ShapingConfig, ConfigError> {
    let mut c = ShapingConfig::default();
    let Some(raw) = raw else { return Ok(c) };
    c.link_bytes_per_s = raw.link_rate.map(|r| r.0);
    c.burst_bytes = raw.burst.map_or(
        ShapingConfig::default_burst(c.link_bytes_per_s),
        ByteSize::bytes,
    );
    for (name, rc) in &raw.class {
        let class: Class = name
            .parse()
            .map_err(|reason| invalid(format!("shaping.class.{name}"), reason))?;
        let cc = &mut c.classes[class as usize];
        if let Some(s) = rc.share {
            cc.share = s;
        }
        cc.ceil_bytes_per_s = rc.ceil.map(|r| r.0);
    }
    c.check()
        .map_err(|(key, reason)| invalid(format!("shaping.{key}"), reason))?;
    Ok(c)
}
