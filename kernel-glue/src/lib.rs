//! kernel-glue: drl's thin, unsafe layer to Linux.
//!
//! # Layout
//! - [`buf`]: page-aligned buffers for O_DIRECT and io_uring.
//! - `uring`: the io_uring I/O engine (one ring thread per engine, bounded queue depth, batching).
//! - `sockopt`: socket options (SO_PRIORITY, IP_TOS, TCP_NOTSENT_LOWAT, TCP_INFO).
//! - `dio`: probing and opening files with O_DIRECT, with a logged buffered fallback.
//!
//! Every `unsafe` block carries a `// SAFETY:` comment naming the invariant it relies on.

pub mod buf;
