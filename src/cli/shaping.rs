//! `drl shaping show|set|tc`: the WAN shaper's live view and settings, and the tc rules that
//! enforce the same split on the host's egress device.

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::{call_and_print, exit, Global};
use crate::shaping::control::{render_show, split_assignment};
use crate::shaping::tc::{script, tc_commands};
use crate::shaping::{Class, ClassConfig, ShapingConfig};
use crate::units::parse_rate;

#[derive(Subcommand, Debug)]
pub enum ShapingCmd {
    /// Per-class settings and counters: share, guarantee, ceiling, rate now, bytes, queued.
    Show(ShowArgs),
    /// Change the link rate, shares or ceilings at once, under load (not saved to the config).
    ///
    /// Rates like "100Mbit" or "12MiB/s"; "off" removes the link rate (count only) or a ceiling.
    /// Example: drl shaping set --link-rate 100Mbit --share replication=60 --ceil image=20Mbit
    Set(SetArgs),
    /// Print (or with --apply install) tc htb classes and DSCP filters that enforce drl's split
    /// on the host's egress device DEV: drl's classes under one parent capped at drl's
    /// link-rate, and a default class with the rest of the physical link for all other traffic.
    ///
    /// drl's settings come from the running daemon, or from --config if it is not reachable.
    Tc(TcArgs),
}

#[derive(Args, Debug)]
pub struct TcArgs {
    /// The egress device (e.g. eth0, bond0).
    pub dev: String,
    /// The physical link rate (default: the device's speed from /sys/class/net/DEV/speed).
    #[arg(long, value_name = "RATE")]
    pub link_rate: Option<String>,
    /// Run the commands (needs CAP_NET_ADMIN) instead of printing them.
    #[arg(long)]
    pub apply: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Machine-readable JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    /// The link cap over all of drl's WAN traffic, or "off".
    #[arg(long, value_name = "RATE")]
    pub link_rate: Option<String>,
    /// The burst (and largest single grant), e.g. "256KiB".
    #[arg(long, value_name = "SIZE")]
    pub burst: Option<String>,
    /// A class's relative share, CLASS=N (replication, resync, snapshot, image); repeatable.
    #[arg(long, value_name = "CLASS=N")]
    pub share: Vec<String>,
    /// A class's ceiling, CLASS=RATE or CLASS=off; repeatable.
    #[arg(long, value_name = "CLASS=RATE")]
    pub ceil: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &Global, c: &ShapingCmd) -> i32 {
    match c {
        ShapingCmd::Tc(a) => tc(g, a),
        ShapingCmd::Show(a) => call_and_print(g, "shaping.get", json!({}), a.json, render_show),
        ShapingCmd::Set(a) => {
            let mut p = Map::new();
            if let Some(l) = &a.link_rate {
                p.insert("link_rate".into(), json!(l));
            }
            if let Some(b) = &a.burst {
                p.insert("burst".into(), json!(b));
            }
            let mut share = Map::new();
            for s in &a.share {
                match split_assignment(s).and_then(|(c, v)| {
                    v.parse::<u32>()
                        .map(|n| (c, n))
                        .map_err(|e| format!("{s:?}: {e}"))
                }) {
                    Ok((c, n)) => {
                        share.insert(c.name().into(), json!(n));
                    }
                    Err(e) => {
                        eprintln!("drl shaping set: --share {e}");
                        return exit::USAGE;
                    }
                }
            }
            let mut ceil = Map::new();
            for s in &a.ceil {
                match split_assignment(s) {
                    Ok((c, v)) => {
                        ceil.insert(c.name().into(), json!(v));
                    }
                    Err(e) => {
                        eprintln!("drl shaping set: --ceil {e}");
                        return exit::USAGE;
                    }
                }
            }
            if !share.is_empty() {
                p.insert("share".into(), Value::Object(share));
            }
            if !ceil.is_empty() {
                p.insert("ceil".into(), Value::Object(ceil));
            }
            if p.is_empty() {
                eprintln!("drl shaping set: nothing to change (give --link-rate, --burst, --share or --ceil)");
                return exit::USAGE;
            }
            call_and_print(g, "shaping.set", Value::Object(p), a.json, render_show)
        }
    }
}

/// drl's shaping settings: from the daemon, else from the config file.
fn current_config(g: &Global) -> Result<ShapingConfig, String> {
    let live = super::runtime().block_on(async {
        let path = super::socket_path(g)?;
        let mut c = crate::control::Client::connect(&path)
            .await
            .map_err(|e| e.to_string())?;
        c.call("shaping.get", json!({}))
            .await
            .map_err(|e| e.to_string())
    });
    match live {
        Ok(v) => config_from_stats(&v)
            .ok_or_else(|| format!("the daemon's shaping.get answer is not understood: {v}")),
        Err(daemon_err) => {
            let Some(file) = &g.config else {
                return Err(format!(
                    "cannot ask the daemon ({daemon_err}) and no --config to read [shaping] from"
                ));
            };
            eprintln!(
                "drl shaping tc: daemon not reachable ({daemon_err}); using [shaping] of {}",
                file.display()
            );
            crate::config::load(file, &super::node_name(g))
                .map(|c| c.shaping)
                .map_err(|e| e.to_string())
        }
    }
}

fn config_from_stats(v: &Value) -> Option<ShapingConfig> {
    let mut c = ShapingConfig {
        link_bytes_per_s: v["link_bytes_per_s"].as_u64(),
        burst_bytes: v["burst_bytes"].as_u64()?,
        ..Default::default()
    };
    for cl in v["classes"].as_array()? {
        let class: Class = cl["class"].as_str()?.parse().ok()?;
        c.classes[class as usize] = ClassConfig {
            share: u32::try_from(cl["share"].as_u64()?).ok()?,
            ceil_bytes_per_s: cl["ceil_bytes_per_s"].as_u64(),
        };
    }
    Some(c)
}

fn device_speed(dev: &str) -> Result<u64, String> {
    let p = format!("/sys/class/net/{dev}/speed");
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e} (give --link-rate)"))?;
    match text.trim().parse::<i64>() {
        Ok(mbit) if mbit > 0 => Ok(mbit as u64 * 1_000_000 / 8),
        _ => Err(format!(
            "{p}: {:?} is not a speed (virtual device?): give --link-rate",
            text.trim()
        )),
    }
}

fn tc(g: &Global, a: &TcArgs) -> i32 {
    let phys = match a
        .link_rate
        .as_deref()
        .map_or_else(|| device_speed(&a.dev), parse_rate)
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("drl shaping tc: {e}");
            return exit::USAGE;
        }
    };
    let cfg = match current_config(g) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drl shaping tc: {e}");
            return exit::UNREACHABLE;
        }
    };
    let cmds = match tc_commands(&a.dev, phys, &cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drl shaping tc: {e}");
            return exit::USAGE;
        }
    };
    if !a.apply {
        print!("{}", script(&cmds));
        return exit::OK;
    }
    for c in &cmds {
        match std::process::Command::new("tc").args(c).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                eprintln!(
                    "drl shaping tc: tc {} failed: {}",
                    c.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                return exit::FAILED;
            }
            Err(e) => {
                eprintln!("drl shaping tc: cannot run tc: {e}");
                return exit::FAILED;
            }
        }
    }
    println!("installed {} tc commands on {}", cmds.len(), a.dev);
    exit::OK
}
