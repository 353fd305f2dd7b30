//! A minimal synchronous NBD client: fixed newstyle handshake with `NBD_OPT_EXPORT_NAME`,
//! simple replies only, one request in flight at a time.
//!
//! It serves the tools that need a client whose every acknowledgement they see one by one: the
//! disaster drill's writer (each write waits for its reply, so the acknowledged writes form one
//! sequence) and checker, and the integration tests (random data that qemu-io's `-P` patterns
//! cannot give). Real users reach drl through qemu, nbdcopy or the kernel; this is not for them.
//!
//! Every length and magic the server sends is checked before it is trusted; a broken reply is
//! an `io::ErrorKind::InvalidData` error naming what was wrong, an NBD error reply an
//! `io::Error` carrying the errno.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::proto::{
    CMD_DISC, CMD_FLAG_FUA, CMD_FLUSH, CMD_READ, CMD_WRITE, EXPORT_NAME_PADDING_BYTES,
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_NO_ZEROES, GREETING_BYTES, IHAVEOPT, NBD_MAGIC,
    OPT_EXPORT_NAME, REQUEST_BYTES, REQUEST_MAGIC, SIMPLE_REPLY_BYTES, SIMPLE_REPLY_MAGIC,
    TFLAG_READ_ONLY,
};
use crate::limits::NBD_PAYLOAD_BYTES_MAX;

/// How long one request may wait for its reply before the client gives up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One connection to one export.
pub struct NbdClient {
    s: UnixStream,
    /// The export's size in bytes, as the server announced it.
    pub size: u64,
    /// The transmission flags the server announced.
    pub transmission_flags: u16,
    handle: u64,
}

fn proto(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl NbdClient {
    /// Connect to a unix-socket export and do the handshake, asking for the default export
    /// (the empty name, which drl's one export per socket answers to).
    pub fn connect(socket: &Path) -> io::Result<NbdClient> {
        Self::connect_named(socket, "")
    }

    /// Connect to the export called `name` on a unix socket.
    pub fn connect_named(socket: &Path, name: &str) -> io::Result<NbdClient> {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(REPLY_TIMEOUT))?;
        s.set_write_timeout(Some(REPLY_TIMEOUT))?;
        let mut greeting = [0u8; GREETING_BYTES];
        s.read_exact(&mut greeting)?;
        let magic = u64::from_be_bytes(greeting[..8].try_into().unwrap());
        let opt_magic = u64::from_be_bytes(greeting[8..16].try_into().unwrap());
        if magic != NBD_MAGIC || opt_magic != IHAVEOPT {
            return Err(proto(format!(
                "not a fixed-newstyle NBD server: {:02x?}",
                &greeting[..16]
            )));
        }
        let server_flags = u16::from_be_bytes([greeting[16], greeting[17]]);
        let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
        let client_flags = FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 };
        let mut opt = Vec::with_capacity(20 + name.len());
        opt.extend_from_slice(&client_flags.to_be_bytes());
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
        opt.extend_from_slice(name.as_bytes());
        s.write_all(&opt)?;
        let mut export = [0u8; 10];
        s.read_exact(&mut export)?;
        if !no_zeroes {
            let mut z = [0u8; EXPORT_NAME_PADDING_BYTES];
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

    /// Whether the server exports read-only.
    pub fn read_only(&self) -> bool {
        self.transmission_flags & TFLAG_READ_ONLY != 0
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
        let mut req = Vec::with_capacity(REQUEST_BYTES + payload.len());
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
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
        let mut r = [0u8; SIMPLE_REPLY_BYTES];
        self.s.read_exact(&mut r)?;
        let magic = u32::from_be_bytes(r[..4].try_into().unwrap());
        if magic != SIMPLE_REPLY_MAGIC {
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

    fn check_len(len: usize) -> io::Result<u32> {
        if len > NBD_PAYLOAD_BYTES_MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("request of {len} bytes exceeds {NBD_PAYLOAD_BYTES_MAX}"),
            ));
        }
        Ok(len as u32)
    }

    /// Write `data` at `offset`; returns once the server acknowledged it.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let len = Self::check_len(data.len())?;
        let h = self.request(0, CMD_WRITE, offset, len, data)?;
        self.reply(h)
    }

    /// Write with Force Unit Access: acknowledged once on stable storage.
    pub fn write_fua(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let len = Self::check_len(data.len())?;
        let h = self.request(CMD_FLAG_FUA, CMD_WRITE, offset, len, data)?;
        self.reply(h)
    }

    /// Read `len` bytes at `offset`.
    pub fn read(&mut self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        Self::check_len(len as usize)?;
        let h = self.request(0, CMD_READ, offset, len, &[])?;
        self.reply(h)?;
        let mut buf = vec![0u8; len as usize];
        self.s.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Flush: everything acknowledged before is on stable storage.
    pub fn flush(&mut self) -> io::Result<()> {
        let h = self.request(0, CMD_FLUSH, 0, 0, &[])?;
        self.reply(h)
    }

    /// Write `data` in chunks of at most 1 MiB (one request each), then flush.
    pub fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        for (i, c) in data.chunks(1 << 20).enumerate() {
            self.write(offset + (i as u64) * (1 << 20), c)?;
        }
        self.flush()
    }

    /// Say goodbye (NBD_CMD_DISC); the server closes the connection.
    pub fn disconnect(mut self) {
        let _ = self.request(0, CMD_DISC, 0, 0, &[]);
    }
}
