//! The shaper's control surface, without sockets: `shaping.set` requests applied to a
//! [`ShapingConfig`], and the `drl shaping show` table rendered from `shaping.get`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{Class, ShapingConfig, CLASSES};
use crate::units::{format_bytes, format_rate, parse_rate, parse_size};

/// `shaping.set` parameters. Rates and sizes are strings with units ("100Mbit", "256KiB");
/// "off" removes the link rate (count only) or a ceiling.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRequest {
    pub link_rate: Option<String>,
    pub burst: Option<String>,
    #[serde(default)]
    pub share: BTreeMap<String, u32>,
    #[serde(default)]
    pub ceil: BTreeMap<String, String>,
}

fn rate_or_off(text: &str) -> Result<Option<u64>, String> {
    match text {
        "off" | "none" => Ok(None),
        t => parse_rate(t).map(Some),
    }
}

/// The config after `req`, checked; on error the key and the reason.
pub fn apply_set(cur: &ShapingConfig, req: &SetRequest) -> Result<ShapingConfig, (String, String)> {
    let mut c = cur.clone();
    if let Some(l) = &req.link_rate {
        c.link_bytes_per_s = rate_or_off(l).map_err(|r| ("link-rate".to_owned(), r))?;
        // A burst that was the old default follows the new link rate.
        if cur.burst_bytes == ShapingConfig::default_burst(cur.link_bytes_per_s) {
            c.burst_bytes = ShapingConfig::default_burst(c.link_bytes_per_s);
        }
    }
    if let Some(b) = &req.burst {
        c.burst_bytes = parse_size(b).map_err(|r| ("burst".to_owned(), r))?;
    }
    for (name, &share) in &req.share {
        let class: Class = name.parse().map_err(|r| (format!("share.{name}"), r))?;
        c.classes[class as usize].share = share;
    }
    for (name, ceil) in &req.ceil {
        let class: Class = name.parse().map_err(|r| (format!("ceil.{name}"), r))?;
        c.classes[class as usize].ceil_bytes_per_s =
            rate_or_off(ceil).map_err(|r| (format!("class.{class}.ceil"), r))?;
    }
    c.check()?;
    Ok(c)
}

/// `CLASS=VALUE` from the command line.
pub fn split_assignment(text: &str) -> Result<(Class, &str), String> {
    let (c, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected CLASS=VALUE"))?;
    Ok((c.parse()?, v))
}

/// The `drl shaping show` table from a `shaping.get` (or `status`'s `shaping`) object.
pub fn render_show(v: &Value) -> String {
    let rate = |x: &Value| x.as_u64().map_or("-".to_owned(), format_rate);
    let mut out = format!(
        "link-rate {}  burst {}\n",
        v["link_bytes_per_s"]
            .as_u64()
            .map_or("none (counting only)".to_owned(), format_rate),
        v["burst_bytes"]
            .as_u64()
            .map_or("-".to_owned(), format_bytes)
    );
    let header = [
        "CLASS",
        "SHARE",
        "GUARANTEE",
        "CEIL",
        "RATE-NOW",
        "BYTES",
        "QUEUED",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let empty = vec![];
    for c in v["classes"].as_array().unwrap_or(&empty) {
        table.push(vec![
            c["class"].as_str().unwrap_or("?").to_owned(),
            c["share"].as_u64().map_or("-".into(), |s| s.to_string()),
            rate(&c["guarantee_bytes_per_s"]),
            rate(&c["ceil_bytes_per_s"]),
            rate(&c["rate_bytes_per_s"]),
            c["granted_bytes"].as_u64().map_or("-".into(), format_bytes),
            c["queued_bytes"].as_u64().map_or("-".into(), format_bytes),
        ]);
    }
    out.push_str(&crate::table::align_columns(&table));
    out
}

/// Every class name, for help texts.
pub fn class_names() -> String {
    CLASSES
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::Shaper;

    #[test]
    fn set_changes_link_shares_and_ceilings_and_checks_them() {
        let cur = ShapingConfig::default();
        let req = SetRequest {
            link_rate: Some("100Mbit".into()),
            share: [("image".to_owned(), 5)].into(),
            ceil: [("snapshot".to_owned(), "20Mbit".to_owned())].into(),
            ..Default::default()
        };
        let c = apply_set(&cur, &req).unwrap();
        assert_eq!(c.link_bytes_per_s, Some(12_500_000));
        assert_eq!(c.burst_bytes, 64 * 1024);
        assert_eq!(c.classes[Class::Image as usize].share, 5);
        assert_eq!(
            c.classes[Class::Snapshot as usize].ceil_bytes_per_s,
            Some(2_500_000)
        );
        // 1 Gbit: the default burst follows the link rate.
        let c2 = apply_set(
            &c,
            &SetRequest {
                link_rate: Some("1Gbit".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c2.burst_bytes, 625_000);
        // Back to counting only needs the ceiling gone first.
        let e = apply_set(
            &c,
            &SetRequest {
                link_rate: Some("off".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.0, "class.snapshot.ceil");
        let req = SetRequest {
            link_rate: Some("off".into()),
            ceil: [("snapshot".to_owned(), "off".to_owned())].into(),
            ..Default::default()
        };
        assert_eq!(apply_set(&c, &req).unwrap().link_bytes_per_s, None);
        let e = apply_set(
            &c,
            &SetRequest {
                share: [("bulk".to_owned(), 1)].into(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.1.contains("unknown traffic class"), "{e:?}");
        let e = apply_set(
            &c,
            &SetRequest {
                share: [("resync".to_owned(), 0)].into(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.0, "class.resync.share");
        assert!(split_assignment("image").is_err());
        assert_eq!(
            split_assignment("image=20Mbit").unwrap(),
            (Class::Image, "20Mbit")
        );
    }

    #[test]
    fn show_renders_every_class() {
        let s = Shaper::new(
            apply_set(
                &ShapingConfig::default(),
                &SetRequest {
                    link_rate: Some("100Mbit".into()),
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let v = serde_json::to_value(s.stats()).unwrap();
        let t = render_show(&v);
        assert!(
            t.starts_with("link-rate 100.0Mbit  burst 64.0KiB\n")
                || t.starts_with("link-rate 100.0Mbit  burst 64KiB\n"),
            "{t}"
        );
        assert!(t.contains("replication  50"), "{t}");
        assert!(t.contains("50.0Mbit"), "{t}"); // replication's guarantee: 50/100 of the link
        assert_eq!(t.lines().count(), 6, "{t}");
    }
}
