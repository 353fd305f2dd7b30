//! The tests' NBD client is the library's minimal synchronous one
//! ([`drl::frontend::nbd::client`]); this adds the one-shot helper the tests use.

use std::path::Path;

pub use drl::frontend::nbd::client::NbdClient;

/// Write `data` at `offset` through the export at `socket` in a fresh connection, flushed.
pub fn nbd_write(socket: &Path, offset: u64, data: &[u8]) {
    let mut c = NbdClient::connect(socket)
        .unwrap_or_else(|e| panic!("NBD connect to {}: {e}", socket.display()));
    c.write_all_at(offset, data).unwrap_or_else(|e| {
        panic!(
            "NBD write of {} bytes at {offset} on {}: {e}",
            data.len(),
            socket.display()
        )
    });
    c.disconnect();
}
