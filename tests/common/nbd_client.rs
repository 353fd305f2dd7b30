//! A minimal synchronous NBD client for the replication tests: fixed newstyle handshake with
//! `NBD_OPT_EXPORT_NAME`, simple replies only, one request in flight at a time. Enough for
//! dependent writes (each waits for its reply) and random data that qemu-io's `-P` patterns
//! cannot give (patterns compress, random data does not, so byte counters stay meaningful).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const NBD_CMD_READ: u16 = 0;
const NBD_CMD_WRITE: u16 = 1;
const NBD_CMD_DISC: u16 = 2;
const NBD_CMD_FLUSH: u16 = 3;
const NBD_CMD_FLAG_FUA: u16 = 1;
const NBD_FLAG_READ_ONLY: u16 = 1 << 1;

pub struct NbdClient {
    s: UnixStream,
    pub size: u64,
    pub transmission_flags: u16,
    handle: u64,
}

fn proto(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl NbdClient {
    /// Connect to a unix-socket export and do the handshake (export name `r0`, which servers
    /// with a single export also accept as the default).
    pub fn connect(socket: &Path) -> io::Result<NbdClient> {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting)?;
        if &greeting[..8] != b"NBDMAGIC" || &greeting[8..16] != b"IHAVEOPT" {
            return Err(proto(format!(
                "not a fixed-newstyle NBD server: {:02x?}",
                &greeting[..16]
            )));
        }
        let server_flags = u16::from_be_bytes([greeting[16], greeting[17]]);
        let no_zeroes = server_flags & 2 != 0;
        let client_flags: u32 = 1 | if no_zeroes { 2 } else { 0 };
        let name = b"r0";
        let mut opt = Vec::new();
        opt.extend_from_slice(&client_flags.to_be_bytes());
        opt.extend_from_slice(b"IHAVEOPT");
        opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
        opt.extend_from_slice(name);
        s.write_all(&opt)?;
        let mut export = [0u8; 10];
        s.read_exact(&mut export)?;
        if !no_zeroes {
            let mut z = [0u8; 124];
            s.read_exact(&mut z)?;
        }
        let size = u64::from_be_bytes(export[..8].try_into().unwrap());
        let transmission_flags = u16::from_be_bytes([export[8], export[9]]);
        Ok(NbdClient {
            s,
            size,
            transmission_flags,
            handle: 0,
        })
    }

    pub fn read_only(&self) -> bool {
        self.transmission_flags & NBD_FLAG_READ_ONLY != 0
    }

    fn request(
        &mut self,
        flags: u16,
        ty: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> io::Result<u64> {
        self.handle += 1;
        let mut req = Vec::with_capacity(28 + payload.len());
        req.extend_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&flags.to_be_bytes());
        req.extend_from_slice(&ty.to_be_bytes());
        req.extend_from_slice(&self.handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(payload);
        self.s.write_all(&req)?;
        Ok(self.handle)
    }

    /// Read one simple reply; an NBD error becomes an `io::Error` carrying the errno.
    fn reply(&mut self, handle: u64) -> io::Result<()> {
        let mut r = [0u8; 16];
        self.s.read_exact(&mut r)?;
        let magic = u32::from_be_bytes(r[..4].try_into().unwrap());
        if magic != NBD_SIMPLE_REPLY_MAGIC {
            return Err(proto(format!(
                "reply magic 0x{magic:08x}, expected a simple reply"
            )));
        }
        let err = u32::from_be_bytes(r[4..8].try_into().unwrap());
        let h = u64::from_be_bytes(r[8..16].try_into().unwrap());
        if h != handle {
            return Err(proto(format!("reply for handle {h}, expected {handle}")));
        }
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err as i32));
        }
        Ok(())
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let h = self.request(0, NBD_CMD_WRITE, offset, data.len() as u32, data)?;
        self.reply(h)
    }

    pub fn write_fua(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let h = self.request(
            NBD_CMD_FLAG_FUA,
            NBD_CMD_WRITE,
            offset,
            data.len() as u32,
            data,
        )?;
        self.reply(h)
    }

    pub fn read(&mut self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        let h = self.request(0, NBD_CMD_READ, offset, len, &[])?;
        self.reply(h)?;
        let mut buf = vec![0u8; len as usize];
        self.s.read_exact(&mut buf)?;
        Ok(buf)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        let h = self.request(0, NBD_CMD_FLUSH, 0, 0, &[])?;
        self.reply(h)
    }

    /// Write `data` in chunks of at most 1 MiB (one request each), then flush.
    pub fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        for (i, c) in data.chunks(1 << 20).enumerate() {
            self.write(offset + (i as u64) * (1 << 20), c)?;
        }
        self.flush()
    }

    pub fn disconnect(mut self) {
        let _ = self.request(0, NBD_CMD_DISC, 0, 0, &[]);
    }
}

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
