//! `drl shaping tc DEV`: the tc htb hierarchy that enforces drl's split on the host's egress
//! device, so that the VMs' own traffic keeps the rest of the physical link.
//!
//! ```text
//! 1:    htb root, default 1:20
//! 1:1   the physical link (PHYS)
//! 1:10    drl, rate = ceil = drl's link-rate
//! 1:11      replication   rate = its guarantee, ceil = its ceiling or drl's link-rate, prio 0
//! 1:12      resync        prio 1
//! 1:13      snapshot      prio 2
//! 1:14      image         prio 3
//! 1:20    everything else (the VMs): rate = PHYS - drl's link-rate, ceil = PHYS
//! ```
//!
//! Packets are sorted by their DSCP (set by drl on its sockets, see [`super::mark_socket`]):
//! one u32 `dsfield` filter per class for IPv4 and one `ip6 priority` filter for IPv6. What
//! matches no filter goes to 1:20. Resync shares the replication TCP connection, whose packets
//! all carry the replication DSCP: tc cannot split those two (drl's own shaper does).

use super::{Class, ShapingConfig, CLASSES};

/// The tc class id of a drl class (1:11 .. 1:14).
pub fn classid(c: Class) -> String {
    format!("1:{}", 11 + c as u8)
}

fn bits(bytes_per_s: u64) -> String {
    format!("{}bit", bytes_per_s.saturating_mul(8))
}

/// The `tc` commands (argument lists, without the leading "tc") for `dev`, given the physical
/// link rate in bytes per second and drl's settings.
pub fn tc_commands(
    dev: &str,
    phys_bytes_per_s: u64,
    cfg: &ShapingConfig,
) -> Result<Vec<Vec<String>>, String> {
    let Some(drl) = cfg.link_bytes_per_s else {
        return Err("drl has no link-rate (it only counts): set [shaping] link-rate or `drl shaping set --link-rate` first".into());
    };
    if drl >= phys_bytes_per_s {
        return Err(format!(
            "drl's link-rate {} is not below the physical rate {}: nothing would be left for the VMs' traffic",
            crate::units::format_rate(drl),
            crate::units::format_rate(phys_bytes_per_s)
        ));
    }
    let v = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let burst = format!("{}b", cfg.burst_bytes);
    let mut out = vec![
        v(&[
            "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "20",
        ]),
        v(&[
            "class",
            "replace",
            "dev",
            dev,
            "parent",
            "1:",
            "classid",
            "1:1",
            "htb",
            "rate",
            &bits(phys_bytes_per_s),
            "ceil",
            &bits(phys_bytes_per_s),
        ]),
        v(&[
            "class",
            "replace",
            "dev",
            dev,
            "parent",
            "1:1",
            "classid",
            "1:10",
            "htb",
            "rate",
            &bits(drl),
            "ceil",
            &bits(drl),
            "burst",
            &burst,
        ]),
    ];
    for &c in &CLASSES {
        let g = cfg.guarantee_bytes_per_s(c).unwrap_or(0).max(1);
        let ceil = cfg.classes[c as usize]
            .ceil_bytes_per_s
            .unwrap_or(drl)
            .max(g);
        let prio = (c as u8).to_string();
        out.push(v(&[
            "class",
            "replace",
            "dev",
            dev,
            "parent",
            "1:10",
            "classid",
            &classid(c),
            "htb",
            "rate",
            &bits(g),
            "ceil",
            &bits(ceil),
            "burst",
            &burst,
            "prio",
            &prio,
        ]));
    }
    let rest = phys_bytes_per_s - drl;
    out.push(v(&[
        "class",
        "replace",
        "dev",
        dev,
        "parent",
        "1:1",
        "classid",
        "1:20",
        "htb",
        "rate",
        &bits(rest),
        "ceil",
        &bits(phys_bytes_per_s),
        "prio",
        "4",
    ]));
    for &c in &CLASSES {
        let tos = format!("{:#04x}", c.dscp() << 2);
        // IPv4's TOS byte and IPv6's traffic class carry the DSCP in the same six bits.
        for (proto, field, matched, pref) in
            [("ip", "ip", "dsfield", 10), ("ipv6", "ip6", "priority", 20)]
        {
            let pref = (pref + c as u8).to_string();
            out.push(v(&[
                "filter",
                "replace",
                "dev",
                dev,
                "parent",
                "1:",
                "protocol",
                proto,
                "prio",
                &pref,
                "u32",
                "match",
                field,
                matched,
                &tos,
                "0xfc",
                "flowid",
                &classid(c),
            ]));
        }
    }
    Ok(out)
}

/// The commands as a shell script.
pub fn script(cmds: &[Vec<String>]) -> String {
    cmds.iter()
        .map(|c| format!("tc {}\n", c.join(" ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hierarchy_splits_drl_and_leaves_the_rest_to_the_vms() {
        let mut cfg = ShapingConfig {
            link_bytes_per_s: Some(12_500_000),
            ..Default::default()
        };
        cfg.classes[Class::Image as usize].ceil_bytes_per_s = Some(2_500_000);
        let s = script(&tc_commands("eth0", 125_000_000, &cfg).unwrap());
        assert!(
            s.starts_with("tc qdisc replace dev eth0 root handle 1: htb default 20\n"),
            "{s}"
        );
        assert!(
            s.contains("classid 1:10 htb rate 100000000bit ceil 100000000bit"),
            "{s}"
        );
        // Replication: 50 of 100 shares of 100 Mbit, ceiling drl's link-rate.
        assert!(
            s.contains("classid 1:11 htb rate 50000000bit ceil 100000000bit burst 65536b prio 0"),
            "{s}"
        );
        assert!(
            s.contains("classid 1:14 htb rate 10000000bit ceil 20000000bit burst 65536b prio 3"),
            "{s}"
        );
        assert!(
            s.contains("classid 1:20 htb rate 900000000bit ceil 1000000000bit prio 4"),
            "{s}"
        );
        // AF41 = 34 -> TOS 0x88.
        assert!(
            s.contains("protocol ip prio 10 u32 match ip dsfield 0x88 0xfc flowid 1:11"),
            "{s}"
        );
        assert!(
            s.contains("protocol ipv6 prio 20 u32 match ip6 priority 0x88 0xfc flowid 1:11"),
            "{s}"
        );
        assert!(s.contains("match ip dsfield 0x20 0xfc flowid 1:14"), "{s}");
        assert_eq!(s.lines().count(), 3 + 4 + 1 + 8);
    }

    #[test]
    fn refuses_without_a_drl_rate_or_without_room_for_the_vms() {
        assert!(tc_commands("eth0", 125_000_000, &ShapingConfig::default())
            .unwrap_err()
            .contains("no link-rate"));
        let cfg = ShapingConfig {
            link_bytes_per_s: Some(125_000_000),
            ..Default::default()
        };
        assert!(tc_commands("eth0", 125_000_000, &cfg)
            .unwrap_err()
            .contains("nothing would be left"));
    }
}
