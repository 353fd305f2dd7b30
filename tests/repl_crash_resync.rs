//! Crash resync bounded by what was unacknowledged (issue 12): after a kill -9 of a Primary
//! that had been idle and in sync, DRBD (and drl before) resyncs every activity-log extent
//! written since the last eviction: the whole written region (a 256 MiB volume resynced 1.0
//! of itself). Extents whose writes the peer has all acknowledged now leave the persisted hot
//! set (batched with the periodic bitmap persist), so the crash resyncs at most 5 % of it.

mod common;

use common::nbd_client::NbdClient;
use common::pair::*;

#[test]
fn kill9_of_an_idle_in_sync_primary_resyncs_almost_nothing() {
    let size = 128 * MIB;
    let written = 64 * MIB;
    let mut p = Pair::start(PairOpts::new(size));
    p.force_primary_and_sync("a");
    let (_, b0) = p.wait_in_sync("a", "before the writes");
    let b_before = num(&b0, "resync_bytes_received") + num(&b0, "resync_bytes_sent");
    {
        let mut c = NbdClient::connect(&p.nbd("a")).expect("NBD connect to a");
        for i in 0..written / MIB {
            c.write(i * MIB, &random_bytes(100 + i, MIB)).unwrap();
        }
        c.flush().unwrap();
        c.disconnect();
    }
    let (a, _) = p.wait_in_sync("a", "the writes replicated");
    assert!(
        num(&a, "al_hot_extents") > 0,
        "the writes made activity-log extents hot: {a}"
    );
    // Idle and in sync: the acknowledged extents leave the persisted hot set.
    p.wait(
        "a's activity log holds no acknowledged extent any more",
        WAIT,
        |a, _| a.is_some_and(|a| a["al_hot_extents"].as_u64() == Some(0)),
    );
    p.a.kill9();
    p.wait("b notices the Primary is gone", WAIT, |_, b| {
        b.is_some_and(|b| b["connection"] != "Connected")
    });
    p.restart("a");
    p.promote_again("a");
    let (a1, b1) = p.wait_in_sync("a", "after the crash of the idle Primary");
    let moved = (num(&a1, "resync_bytes_sent") + num(&a1, "resync_bytes_received"))
        .max(num(&b1, "resync_bytes_received") + num(&b1, "resync_bytes_sent") - b_before);
    eprintln!("crash resync moved {moved} bytes of the {written} written");
    assert!(
        moved * 20 <= written,
        "kill -9 of an idle, in-sync Primary resynced {moved} bytes ({} MiB) of the {} MiB \
         written: more than 5 %\n{}",
        moved / MIB,
        written / MIB,
        p.report()
    );
    p.assert_disks_identical("after kill -9 of an idle in-sync Primary");
}
