//! kernel-glue: drl's thin, unsafe layer to Linux.
//!
//! # Layout
//! - [`buf`]: page-aligned buffers for O_DIRECT and io_uring.
//! - [`uring`]: the io_uring I/O engine (one ring thread per engine, bounded queue depth,
//!   batching, eventfd wake-up, buffers moved in and handed back).
//! - [`dio`]: opening a disk file or block device with O_DIRECT (alignment from statx
//!   STATX_DIOALIGN, BLKSSZGET or a test read), with a logged buffered fallback.
//! - [`blkdev`]: block-device ioctls (BLKGETSIZE64, BLKSSZGET, BLKDISCARD, BLKZEROOUT).
//! - [`sockopt`]: socket options (SO_PRIORITY, IP_TOS/IPV6_TCLASS, TCP_NOTSENT_LOWAT,
//!   keepalive, TCP_USER_TIMEOUT) and TCP_INFO.
//!
//! Every `unsafe` block carries a `// SAFETY:` comment naming the invariant it relies on.

pub mod blkdev;
pub mod buf;
pub mod dio;
pub mod sockopt;
pub mod uring;
