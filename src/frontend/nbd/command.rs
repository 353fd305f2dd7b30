//! Turning a parsed request header into a command the device can execute.
//!
//! Validation follows the NBD protocol document, "Request types" and "Error values": an
//! unknown command or a flag that is not valid for the command is `EINVAL`, a write to a
//! read-only export is `EPERM`, a range past the end of the export is `ENOSPC`, a READ or WRITE
//! longer than the advertised maximum block size is `EINVAL`. Every failure is expressed as a
//! [`VolumeError`], so that [`VolumeError::nbd_errno`] stays the one place that picks the errno.

use super::proto::*;
use crate::limits::NBD_PAYLOAD_BYTES_MAX;
use crate::volume::{check_range, VolumeError};

/// What the connection knows about its export when it validates a request.
#[derive(Debug, Clone)]
pub struct ExportView {
    pub name: String,
    pub size: u64,
    pub read_only: bool,
    /// Structured replies were negotiated (enables NBD_CMD_FLAG_DF on READ).
    pub structured: bool,
}

/// A validated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        may_trim: bool,
        fua: bool,
    },
    Disc,
}

/// Request kinds, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
    Disc,
    Unknown,
}

impl Kind {
    pub fn of(cmd: u16) -> Kind {
        match cmd {
            CMD_READ => Kind::Read,
            CMD_WRITE => Kind::Write,
            CMD_FLUSH => Kind::Flush,
            CMD_TRIM => Kind::Trim,
            CMD_WRITE_ZEROES => Kind::WriteZeroes,
            CMD_DISC => Kind::Disc,
            _ => Kind::Unknown,
        }
    }
}

/// Validate a request header against the export.
pub fn validate(h: &RequestHeader, ex: &ExportView) -> Result<Command, VolumeError> {
    let allowed_flags = match h.cmd {
        CMD_READ if ex.structured => CMD_FLAG_DF,
        CMD_READ | CMD_FLUSH | CMD_DISC => 0,
        CMD_WRITE | CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        other => return Err(VolumeError::Invalid(format!("unknown NBD command {other}"))),
    };
    if h.cmd == CMD_DISC {
        // A disconnect is honoured whatever its flags say: the client is going away.
        return Ok(Command::Disc);
    }
    let unknown = h.flags & !allowed_flags;
    if unknown != 0 {
        return Err(VolumeError::Invalid(format!(
            "flags {unknown:#x} are not valid for NBD command {}",
            h.cmd
        )));
    }
    let fua = h.flags & CMD_FLAG_FUA != 0;
    if h.cmd == CMD_FLUSH {
        return Ok(Command::Flush);
    }
    if (h.cmd == CMD_READ || h.cmd == CMD_WRITE) && h.len > NBD_PAYLOAD_BYTES_MAX {
        return Err(VolumeError::Invalid(format!(
            "request length {} exceeds the maximum block size {NBD_PAYLOAD_BYTES_MAX}",
            h.len
        )));
    }
    if h.cmd != CMD_READ && ex.read_only {
        return Err(VolumeError::ReadOnly(ex.name.clone()));
    }
    check_range(h.offset, h.len as u64, ex.size)?;
    let (offset, len) = (h.offset, h.len);
    Ok(match h.cmd {
        CMD_READ => Command::Read { offset, len },
        CMD_WRITE => Command::Write { offset, len, fua },
        CMD_TRIM => Command::Trim { offset, len, fua },
        _ => Command::WriteZeroes {
            offset,
            len,
            may_trim: h.flags & CMD_FLAG_NO_HOLE == 0,
            fua,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::nbd_err;

    fn ex(read_only: bool, structured: bool) -> ExportView {
        ExportView {
            name: "v".into(),
            size: 1 << 20,
            read_only,
            structured,
        }
    }
    fn hdr(cmd: u16, flags: u16, offset: u64, len: u32) -> RequestHeader {
        RequestHeader {
            flags,
            cmd,
            cookie: 7,
            offset,
            len,
        }
    }
    fn errno(r: Result<Command, VolumeError>) -> u32 {
        r.expect_err("must be refused").nbd_errno()
    }

    #[test]
    fn valid_commands() {
        let e = ex(false, true);
        assert_eq!(
            validate(&hdr(CMD_READ, CMD_FLAG_DF, 0, 4096), &e).unwrap(),
            Command::Read {
                offset: 0,
                len: 4096
            }
        );
        assert_eq!(
            validate(&hdr(CMD_WRITE, CMD_FLAG_FUA, 4096, 512), &e).unwrap(),
            Command::Write {
                offset: 4096,
                len: 512,
                fua: true
            }
        );
        assert_eq!(
            validate(&hdr(CMD_FLUSH, 0, 0, 0), &e).unwrap(),
            Command::Flush
        );
        assert_eq!(
            validate(&hdr(CMD_TRIM, 0, 0, 1 << 20), &e).unwrap(),
            Command::Trim {
                offset: 0,
                len: 1 << 20,
                fua: false
            }
        );
        assert_eq!(
            validate(
                &hdr(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE | CMD_FLAG_FUA, 0, 8),
                &e
            )
            .unwrap(),
            Command::WriteZeroes {
                offset: 0,
                len: 8,
                may_trim: false,
                fua: true
            }
        );
        assert_eq!(
            validate(&hdr(CMD_WRITE_ZEROES, 0, 0, 8), &e).unwrap(),
            Command::WriteZeroes {
                offset: 0,
                len: 8,
                may_trim: true,
                fua: false
            }
        );
        assert_eq!(
            validate(&hdr(CMD_DISC, 0xffff, 0, 0), &e).unwrap(),
            Command::Disc
        );
    }

    #[test]
    fn out_of_range_is_enospc() {
        let e = ex(false, false);
        assert_eq!(
            errno(validate(&hdr(CMD_READ, 0, (1 << 20) - 1, 2), &e)),
            nbd_err::ENOSPC
        );
        assert_eq!(
            errno(validate(&hdr(CMD_WRITE, 0, 1 << 20, 1), &e)),
            nbd_err::ENOSPC
        );
        assert_eq!(
            errno(validate(&hdr(CMD_TRIM, 0, u64::MAX, 2), &e)),
            nbd_err::ENOSPC
        );
        // The last byte is in range.
        assert!(validate(&hdr(CMD_READ, 0, (1 << 20) - 1, 1), &e).is_ok());
    }

    #[test]
    fn unknown_command_and_flags_are_einval() {
        let e = ex(false, false);
        assert_eq!(errno(validate(&hdr(5, 0, 0, 0), &e)), nbd_err::EINVAL); // CACHE
        assert_eq!(errno(validate(&hdr(7, 0, 0, 0), &e)), nbd_err::EINVAL); // BLOCK_STATUS
        assert_eq!(errno(validate(&hdr(0xffff, 0, 0, 0), &e)), nbd_err::EINVAL);
        // DF without structured replies; NO_HOLE on WRITE; FUA on READ; unknown bits.
        assert_eq!(
            errno(validate(&hdr(CMD_READ, CMD_FLAG_DF, 0, 1), &e)),
            nbd_err::EINVAL
        );
        assert_eq!(
            errno(validate(&hdr(CMD_WRITE, CMD_FLAG_NO_HOLE, 0, 1), &e)),
            nbd_err::EINVAL
        );
        assert_eq!(
            errno(validate(&hdr(CMD_READ, CMD_FLAG_FUA, 0, 1), &e)),
            nbd_err::EINVAL
        );
        assert_eq!(
            errno(validate(&hdr(CMD_FLUSH, 1 << 9, 0, 0), &e)),
            nbd_err::EINVAL
        );
        assert_eq!(
            errno(validate(&hdr(CMD_WRITE_ZEROES, 1 << 4, 0, 1), &e)),
            nbd_err::EINVAL
        );
    }

    #[test]
    fn too_long_is_einval_and_read_only_is_eperm() {
        let e = ex(true, false);
        let big = NBD_PAYLOAD_BYTES_MAX + 1;
        assert_eq!(
            errno(validate(&hdr(CMD_READ, 0, 0, big), &e)),
            nbd_err::EINVAL
        );
        assert_eq!(
            errno(validate(&hdr(CMD_WRITE, 0, 0, big), &e)),
            nbd_err::EINVAL
        );
        assert_eq!(
            errno(validate(&hdr(CMD_WRITE, 0, 0, 1), &e)),
            nbd_err::EPERM
        );
        assert_eq!(errno(validate(&hdr(CMD_TRIM, 0, 0, 1), &e)), nbd_err::EPERM);
        assert_eq!(
            errno(validate(&hdr(CMD_WRITE_ZEROES, 0, 0, 1), &e)),
            nbd_err::EPERM
        );
        assert!(validate(&hdr(CMD_READ, 0, 0, 1), &e).is_ok());
        assert!(validate(&hdr(CMD_FLUSH, 0, 0, 0), &e).is_ok());
    }
}
