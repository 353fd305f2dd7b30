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

use super::units::{ByteSize, DurationMs, Rate};
use super::ConfigError;
use crate::shaping::resync::ResyncTuning;
use crate::shaping::{Class, ShapingConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawShaping {
    pub link_rate: Option<Rate>,
    pub burst: Option<ByteSize>,
    #[serde(default)]
    pub class: BTreeMap<String, RawClass>,
    pub resync: Option<RawResync>,
}

/// `[shaping.resync]`: the adaptive resync rate (DRBD's c-plan-ahead, c-fill-target,
/// c-min-rate, c-max-rate).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawResync {
    pub plan_ahead: Option<DurationMs>,
    pub fill_target: Option<ByteSize>,
    pub min_rate: Option<Rate>,
    pub max_rate: Option<Rate>,
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

pub(super) fn resync_tuning(
    raw: Option<&RawShaping>,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<ResyncTuning, ConfigError> {
    use crate::limits::{REPL_FRAME_DATA_BYTES_MAX, REPL_SEND_BUFFER_BYTES_MAX};
    let mut t = ResyncTuning::default();
    let Some(r) = raw.and_then(|s| s.resync.as_ref()) else {
        return Ok(t);
    };
    if let Some(p) = r.plan_ahead {
        if !(100..=60_000).contains(&p.0) {
            return Err(invalid(
                "shaping.resync.plan-ahead".into(),
                format!("{} ms: must be 100ms to 60s", p.0),
            ));
        }
        t.plan_ahead_ms = p.0;
    }
    if let Some(f) = r.fill_target {
        let min = u64::from(REPL_FRAME_DATA_BYTES_MAX);
        if !(min..=REPL_SEND_BUFFER_BYTES_MAX).contains(&f.bytes()) {
            return Err(invalid(
                "shaping.resync.fill-target".into(),
                format!("{} bytes: must be from one frame ({min}) to the send buffer ({REPL_SEND_BUFFER_BYTES_MAX})", f.bytes()),
            ));
        }
        t.fill_target_bytes = f.bytes();
    }
    if let Some(m) = r.min_rate {
        t.min_rate_bytes_per_s = m.0;
    }
    t.max_rate_bytes_per_s = r.max_rate.map(|m| m.0);
    if t.max_rate_bytes_per_s
        .is_some_and(|max| max < t.min_rate_bytes_per_s)
    {
        return Err(invalid(
            "shaping.resync.max-rate".into(),
            "below min-rate".into(),
        ));
    }
    Ok(t)
}
