//! NBD wire format: constants, fixed-size structs, parsers and serializers (no I/O).
//!
//! Everything here follows the NBD protocol document (NetworkBlockDevice/nbd, doc/proto.md):
//! "Handshake" for the greeting and option haggling, "Transmission" for requests and simple /
//! structured replies. All integers are big-endian. Parsers take fixed-size arrays or complete
//! byte slices and never allocate more than the slice they are given; a parser that learns a
//! length from the wire checks it against the limits in [`crate::limits`] before the caller
//! reads (and allocates) anything for it.

use crate::limits::{NBD_OPTION_BYTES_MAX, NBD_PAYLOAD_BYTES_MAX};

/// "NBDMAGIC", the first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle negotiation magic, and the magic of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server -> client).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags (client -> server).
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
pub const CLIENT_FLAGS_KNOWN: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Option types.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

/// Information types of NBD_REP_INFO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command types.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;

/// Structured reply flags and chunk types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// Longest string (export name, description, error message) the protocol allows.
pub const STRING_BYTES_MAX: usize = 4096;

/// Sizes of the fixed-size frames.
pub const GREETING_BYTES: usize = 18;
pub const OPTION_HEADER_BYTES: usize = 16;
pub const REQUEST_BYTES: usize = 28;
pub const SIMPLE_REPLY_BYTES: usize = 16;
pub const STRUCTURED_HEADER_BYTES: usize = 20;
/// Zero padding after NBD_OPT_EXPORT_NAME's reply unless NO_ZEROES was negotiated.
pub const EXPORT_NAME_PADDING_BYTES: usize = 124;

/// A frame or field the server refuses to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("bad {what} magic {got:#x}")]
    BadMagic { what: &'static str, got: u64 },
    #[error("option {option} length {len} exceeds the limit of {max} bytes")]
    OptionTooLong { option: u32, len: u32, max: u32 },
    #[error("option {option} data is malformed: {why}")]
    BadOptionData { option: u32, why: &'static str },
}

/// Read a big-endian integer from `b[at..]`; callers pass arrays of known size.
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// The server's first 18 bytes: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn greeting() -> [u8; GREETING_BYTES] {
    let mut g = [0u8; GREETING_BYTES];
    g[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    g
}

/// An option request header; `len` bytes of option data follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

impl OptionHeader {
    /// Whether the server should read the data (`len` within [`NBD_OPTION_BYTES_MAX`]).
    pub fn check_len(&self) -> Result<(), ProtoError> {
        if self.len > NBD_OPTION_BYTES_MAX {
            return Err(ProtoError::OptionTooLong {
                option: self.option,
                len: self.len,
                max: NBD_OPTION_BYTES_MAX,
            });
        }
        Ok(())
    }
}

/// Parse an option request header. Only the magic is checked here; see
/// [`OptionHeader::check_len`] before reading the data.
pub fn parse_option_header(b: &[u8; OPTION_HEADER_BYTES]) -> Result<OptionHeader, ProtoError> {
    let magic = be64(b, 0);
    if magic != IHAVEOPT {
        return Err(ProtoError::BadMagic {
            what: "option",
            got: magic,
        });
    }
    Ok(OptionHeader {
        option: be32(b, 8),
        len: be32(b, 12),
    })
}

/// The data of NBD_OPT_INFO / NBD_OPT_GO: an export name and the information types asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: Vec<u8>,
    pub infos: Vec<u16>,
}

/// Parse NBD_OPT_INFO / NBD_OPT_GO data: u32 name length, name, u16 count, count x u16.
/// The lengths must add up exactly to the data length.
pub fn parse_info_request(option: u32, data: &[u8]) -> Result<InfoRequest, ProtoError> {
    let bad = |why| ProtoError::BadOptionData { option, why };
    if data.len() < 6 {
        return Err(bad("shorter than 6 bytes"));
    }
    let name_len = be32(data, 0) as usize;
    if name_len > STRING_BYTES_MAX {
        return Err(bad("export name longer than 4096 bytes"));
    }
    let rest = &data[4..];
    if rest.len() < name_len + 2 {
        return Err(bad("export name runs past the data"));
    }
    let name = rest[..name_len].to_vec();
    let count = be16(rest, name_len) as usize;
    let list = &rest[name_len + 2..];
    if list.len() != count * 2 {
        return Err(bad(
            "information request count does not match the data length",
        ));
    }
    let infos = list
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Ok(InfoRequest { name, infos })
}

/// An option reply: header and data.
pub fn option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + data.len());
    v.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&reply_type.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// NBD_REP_SERVER data for NBD_OPT_LIST: name length, name, description.
pub fn rep_server_data(name: &str, description: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + name.len() + description.len());
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(description.as_bytes());
    v
}

/// NBD_INFO_EXPORT data: type, size, transmission flags.
pub fn info_export(size: u64, tflags: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&tflags.to_be_bytes());
    v
}

/// NBD_INFO_NAME or NBD_INFO_DESCRIPTION data: type and string.
pub fn info_string(info: u16, s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + s.len());
    v.extend_from_slice(&info.to_be_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

/// NBD_INFO_BLOCK_SIZE data: type, minimum, preferred, maximum.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(14);
    v.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    v.extend_from_slice(&min.to_be_bytes());
    v.extend_from_slice(&preferred.to_be_bytes());
    v.extend_from_slice(&max.to_be_bytes());
    v
}

/// The reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zero bytes unless the
/// client negotiated NO_ZEROES.
pub fn export_name_reply(size: u64, tflags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(10 + EXPORT_NAME_PADDING_BYTES);
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&tflags.to_be_bytes());
    if !no_zeroes {
        v.resize(v.len() + EXPORT_NAME_PADDING_BYTES, 0);
    }
    v
}

/// A transmission request header, as sent (not yet validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub cmd: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

impl RequestHeader {
    /// Payload bytes that follow this header on the wire (only NBD_CMD_WRITE carries one).
    pub fn payload_len(&self) -> u32 {
        if self.cmd == CMD_WRITE {
            self.len
        } else {
            0
        }
    }

    /// Whether the server may read the payload into memory (within [`NBD_PAYLOAD_BYTES_MAX`]);
    /// a larger payload has to be skipped without being stored.
    pub fn payload_fits(&self) -> bool {
        self.payload_len() <= NBD_PAYLOAD_BYTES_MAX
    }
}

/// Parse a request header; a wrong magic means the stream is out of sync (close it).
pub fn parse_request(b: &[u8; REQUEST_BYTES]) -> Result<RequestHeader, ProtoError> {
    let magic = be32(b, 0);
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "request",
            got: magic as u64,
        });
    }
    Ok(RequestHeader {
        flags: be16(b, 4),
        cmd: be16(b, 6),
        cookie: be64(b, 8),
        offset: be64(b, 16),
        len: be32(b, 24),
    })
}

/// Serialize a request header (used by tests and raw clients).
pub fn request_bytes(h: &RequestHeader) -> [u8; REQUEST_BYTES] {
    let mut b = [0u8; REQUEST_BYTES];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&h.flags.to_be_bytes());
    b[6..8].copy_from_slice(&h.cmd.to_be_bytes());
    b[8..16].copy_from_slice(&h.cookie.to_be_bytes());
    b[16..24].copy_from_slice(&h.offset.to_be_bytes());
    b[24..28].copy_from_slice(&h.len.to_be_bytes());
    b
}

/// A simple reply header; for a successful read the data follows.
pub fn simple_reply(cookie: u64, error: u32) -> [u8; SIMPLE_REPLY_BYTES] {
    let mut b = [0u8; SIMPLE_REPLY_BYTES];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured reply chunk header; `len` bytes of chunk payload follow.
pub fn structured_header(
    flags: u16,
    chunk_type: u16,
    cookie: u64,
    len: u32,
) -> [u8; STRUCTURED_HEADER_BYTES] {
    let mut b = [0u8; STRUCTURED_HEADER_BYTES];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&chunk_type.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// A complete NBD_REPLY_TYPE_ERROR chunk (header and payload) with the DONE flag. The message
/// is cut to a bounded length on a character boundary.
pub fn structured_error(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    const MESSAGE_BYTES_MAX: usize = 256;
    let mut end = message.len().min(MESSAGE_BYTES_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &message.as_bytes()[..end];
    let mut v = Vec::with_capacity(STRUCTURED_HEADER_BYTES + 6 + msg.len());
    let len = 6 + msg.len() as u32;
    v.extend_from_slice(&structured_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        len,
    ));
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    v.extend_from_slice(msg);
    v
}
