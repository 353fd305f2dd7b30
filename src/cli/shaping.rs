//! `drl shaping show|set|tc`: the WAN shaper's live view and settings, and the tc rules that
//! enforce the same split on the host's egress device.

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::{call_and_print, exit, Global};
use crate::shaping::control::{render_show, split_assignment};

#[derive(Subcommand, Debug)]
pub enum ShapingCmd {
    /// Per-class settings and counters: share, guarantee, ceiling, rate now, bytes, queued.
    Show(ShowArgs),
    /// Change the link rate, shares or ceilings at once, under load (not saved to the config).
    ///
    /// Rates like "100Mbit" or "12MiB/s"; "off" removes the link rate (count only) or a ceiling.
    /// Example: drl shaping set --link-rate 100Mbit --share replication=60 --ceil image=20Mbit
    Set(SetArgs),
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
                match split_assignment(s).and_then(|(c, v)| v.parse::<u32>().map(|n| (c, n)).map_err(|e| format!("{s:?}: {e}"))) {
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
