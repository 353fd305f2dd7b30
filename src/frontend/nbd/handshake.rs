//! Fixed newstyle negotiation (NBD protocol document, "Handshake" and "Option haggling").
//!
//! The server greets with `NBDMAGIC`, `IHAVEOPT` and the handshake flags FIXED_NEWSTYLE and
//! NO_ZEROES, reads the client flags and then answers options until the client picks the export
//! (NBD_OPT_GO or NBD_OPT_EXPORT_NAME) or aborts. Supported: GO, INFO, LIST, ABORT,
//! STRUCTURED_REPLY, EXPORT_NAME; any other option gets NBD_REP_ERR_UNSUP. Fixed newstyle is
//! honoured even when the client did not set NBD_FLAG_C_FIXED_NEWSTYLE (the document allows it).
//!
//! Bounds: option data over [`NBD_OPTION_BYTES_MAX`] is skipped without being stored and
//! answered with NBD_REP_ERR_TOO_BIG; at most [`NBD_OPTIONS_PER_CONNECTION_MAX`] options per
//! connection; the caller puts a deadline on the whole negotiation.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::proto::*;
use crate::limits::{
    NBD_OPTIONS_PER_CONNECTION_MAX, NBD_OPTION_BYTES_MAX, NBD_PAYLOAD_BYTES_MAX,
    NBD_PREFERRED_BLOCK_BYTES,
};

/// What the negotiation tells a client about the one export this server serves.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    pub name: String,
    pub description: String,
    pub size: u64,
    pub read_only: bool,
    /// Advertised minimum block size (a power of two, at most 64 KiB).
    pub min_block: u32,
}

impl ExportInfo {
    /// Transmission flags, truthfully: FLUSH, FUA, TRIM and WRITE_ZEROES are supported by
    /// every [`BlockDevice`](crate::volume::BlockDevice); DF only with structured replies (a
    /// read is always answered in one chunk); MULTI_CONN because a flush is a device-wide
    /// fdatasync that covers writes completed on every connection. A read-only export does not
    /// advertise the commands that write.
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN;
        if self.read_only {
            f |= TFLAG_READ_ONLY;
        } else {
            f |= TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
        }
        if structured {
            f |= TFLAG_SEND_DF;
        }
        f
    }

    /// (minimum, preferred, maximum) block sizes for NBD_INFO_BLOCK_SIZE.
    pub fn block_sizes(&self) -> (u32, u32, u32) {
        let preferred = NBD_PREFERRED_BLOCK_BYTES.max(self.min_block);
        (self.min_block, preferred, NBD_PAYLOAD_BYTES_MAX)
    }

    fn selects(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
}

/// Whether this connection may enter transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// NBD_OPT_GO gets NBD_REP_ERR_POLICY with this reason; EXPORT_NAME closes.
    Refuse(&'static str),
}

/// How a successful negotiation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeEnd {
    /// The client picked the export; transmission starts with these settings.
    Transmission { structured: bool },
    /// The client sent NBD_OPT_ABORT.
    Aborted,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("NBD handshake I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("NBD handshake: {0}")]
    Proto(#[from] ProtoError),
    #[error("NBD handshake: client flags {0:#x} contain unknown bits")]
    ClientFlags(u32),
    #[error("NBD handshake: NBD_OPT_EXPORT_NAME asked for unknown export {0:?}")]
    UnknownExport(String),
    #[error("NBD handshake: NBD_OPT_EXPORT_NAME refused: {0}")]
    Refused(&'static str),
    #[error("NBD handshake: client sent more than {0} options")]
    TooManyOptions(u32),
}

impl HandshakeError {
    /// The client simply went away (not worth a warning).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, HandshakeError::Io(e) if matches!(e.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe))
    }
}

async fn reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    option: u32,
    reply_type: u32,
    data: &[u8],
) -> std::io::Result<()> {
    s.write_all(&option_reply(option, reply_type, data)).await
}

/// Read and drop `len` bytes without storing them.
async fn discard<S: AsyncRead + Unpin>(s: &mut S, len: u64) -> std::io::Result<()> {
    let copied = tokio::io::copy(&mut s.take(len), &mut tokio::io::sink()).await?;
    if copied < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Run the negotiation on `s` up to the start of transmission.
pub async fn negotiate<S>(
    s: &mut S,
    ex: &ExportInfo,
    admission: Admission,
) -> Result<HandshakeEnd, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(&greeting()).await?;
    s.flush().await?;
    let client_flags = s.read_u32().await?;
    if client_flags & !CLIENT_FLAGS_KNOWN != 0 {
        return Err(HandshakeError::ClientFlags(client_flags));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    let mut structured = false;

    for _ in 0..NBD_OPTIONS_PER_CONNECTION_MAX {
        let mut hb = [0u8; OPTION_HEADER_BYTES];
        s.read_exact(&mut hb).await?;
        let h = parse_option_header(&hb)?;
        if let Err(e) = h.check_len() {
            if h.option == OPT_EXPORT_NAME {
                return Err(e.into()); // this option has no error reply
            }
            discard(s, h.len as u64).await?;
            let msg = format!("option data over {NBD_OPTION_BYTES_MAX} bytes");
            reply(s, h.option, REP_ERR_TOO_BIG, msg.as_bytes()).await?;
            continue;
        }
        let mut data = vec![0u8; h.len as usize];
        s.read_exact(&mut data).await?;

        match h.option {
            OPT_EXPORT_NAME => {
                if let Admission::Refuse(why) = admission {
                    return Err(HandshakeError::Refused(why));
                }
                if !ex.selects(&data) {
                    let name = String::from_utf8_lossy(&data[..data.len().min(256)]).into();
                    return Err(HandshakeError::UnknownExport(name));
                }
                let tflags = ex.transmission_flags(structured);
                s.write_all(&export_name_reply(ex.size, tflags, no_zeroes))
                    .await?;
                s.flush().await?;
                return Ok(HandshakeEnd::Transmission { structured });
            }
            OPT_ABORT => {
                // The client may already have closed; a failed ACK does not matter.
                let _ = reply(s, h.option, REP_ACK, &[]).await;
                let _ = s.flush().await;
                return Ok(HandshakeEnd::Aborted);
            }
            OPT_LIST if !data.is_empty() => {
                reply(s, h.option, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data").await?;
            }
            OPT_LIST => {
                let server = rep_server_data(&ex.name, &ex.description);
                reply(s, h.option, REP_SERVER, &server).await?;
                reply(s, h.option, REP_ACK, &[]).await?;
            }
            OPT_STRUCTURED_REPLY if !data.is_empty() => {
                let msg = b"NBD_OPT_STRUCTURED_REPLY takes no data";
                reply(s, h.option, REP_ERR_INVALID, msg).await?;
            }
            OPT_STRUCTURED_REPLY => {
                structured = true;
                reply(s, h.option, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => {
                let req = match parse_info_request(h.option, &data) {
                    Ok(r) => r,
                    Err(e) => {
                        reply(s, h.option, REP_ERR_INVALID, e.to_string().as_bytes()).await?;
                        continue;
                    }
                };
                if !ex.selects(&req.name) {
                    reply(s, h.option, REP_ERR_UNKNOWN, b"no such export").await?;
                    continue;
                }
                if let (OPT_GO, Admission::Refuse(why)) = (h.option, admission) {
                    reply(s, h.option, REP_ERR_POLICY, why.as_bytes()).await?;
                    continue;
                }
                send_infos(s, h.option, ex, &req.infos, structured).await?;
                reply(s, h.option, REP_ACK, &[]).await?;
                if h.option == OPT_GO {
                    s.flush().await?;
                    return Ok(HandshakeEnd::Transmission { structured });
                }
            }
            other => {
                let msg = format!("option {other} is not supported");
                reply(s, other, REP_ERR_UNSUP, msg.as_bytes()).await?;
            }
        }
        s.flush().await?;
    }
    Err(HandshakeError::TooManyOptions(
        NBD_OPTIONS_PER_CONNECTION_MAX,
    ))
}

/// NBD_REP_INFO replies: always NBD_INFO_EXPORT, and NAME / DESCRIPTION / BLOCK_SIZE when the
/// client asked for them (each at most once; unknown information types are ignored).
async fn send_infos<S: AsyncWrite + Unpin>(
    s: &mut S,
    option: u32,
    ex: &ExportInfo,
    asked: &[u16],
    structured: bool,
) -> std::io::Result<()> {
    let tflags = ex.transmission_flags(structured);
    reply(s, option, REP_INFO, &info_export(ex.size, tflags)).await?;
    if asked.contains(&INFO_NAME) {
        reply(s, option, REP_INFO, &info_string(INFO_NAME, &ex.name)).await?;
    }
    if asked.contains(&INFO_DESCRIPTION) {
        reply(
            s,
            option,
            REP_INFO,
            &info_string(INFO_DESCRIPTION, &ex.description),
        )
        .await?;
    }
    if asked.contains(&INFO_BLOCK_SIZE) {
        let (min, preferred, max) = ex.block_sizes();
        reply(s, option, REP_INFO, &info_block_size(min, preferred, max)).await?;
    }
    Ok(())
}
