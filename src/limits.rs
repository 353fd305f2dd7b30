//! Every limit and default of drl in one place (TigerBeetle style): the unit is the last word
//! of the name, and the relations between limits are asserted at compile time below.
//!
//! Anything that can grow (queues, buffers, connections, lines a peer can cause) has its bound
//! here. Config may lower or raise some of them within the bounds checked by `config`.

/// Size of one sector as NBD and the metadata count it.
pub const SECTOR_SIZE_BYTES: u64 = 512;
/// One bit of the dirty bitmap covers this many bytes (DRBD's default granularity).
pub const BITMAP_BLOCK_BYTES: u64 = 4096;

/// The largest single NBD READ or WRITE payload the server accepts (and advertises).
pub const NBD_PAYLOAD_BYTES_MAX: u32 = 32 * 1024 * 1024;
/// Preferred NBD request size advertised to clients.
pub const NBD_PREFERRED_BLOCK_BYTES: u32 = 4096;
/// Requests a single NBD connection may have in flight before the server stops reading.
pub const NBD_INFLIGHT_PER_CONNECTION_MAX: usize = 128;
/// Bytes of payload a single NBD connection may have in flight (reads and writes together).
pub const NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX: u64 = 128 * 1024 * 1024;
/// Requests one NBD connection reads before it submits them to the disk, when the socket holds
/// more (issue 17: a whole queue read before the first submission kept the disk idle meanwhile,
/// and a disk that completes what it got in one burst then ran the connection in lock-step).
pub const NBD_SUBMIT_BATCH_REQUESTS_MAX: usize = 8;
/// Bytes of payload all NBD connections of the daemon together may have in flight (every
/// export shares it; see `frontend::nbd::PayloadBudget`). At least one largest request.
pub const NBD_INFLIGHT_DAEMON_BYTES_MAX: u64 = 512 * 1024 * 1024;
/// Worker threads of the daemon's async runtime (`[[node]] worker-threads`) at most.
pub const DAEMON_WORKER_THREADS_MAX: usize = 256;
/// Concurrent NBD connections per export.
pub const NBD_CONNECTIONS_PER_EXPORT_MAX: usize = 64;
/// Option haggling: the largest option payload the server reads.
pub const NBD_OPTION_BYTES_MAX: u32 = 64 * 1024;
/// Option haggling: how many options a client may send before it must pick an export.
pub const NBD_OPTIONS_PER_CONNECTION_MAX: u32 = 64;
/// A client must finish the handshake within this time.
pub const NBD_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// A connection with no request in flight for this long is closed when the export is full and
/// a new client arrives (src/frontend/nbd/idle.rs): idle clients cannot keep others out.
pub const NBD_IDLE_EVICT_MS: u64 = 30_000;
/// How long a new client waits for the slot an evicted idle connection frees.
pub const NBD_EVICT_WAIT_MS: u64 = 2_000;

/// io_uring submission queue depth per volume engine.
pub const ENGINE_QUEUE_DEPTH_DEFAULT: u32 = 128;

/// Control socket: the longest request line accepted.
pub const CONTROL_LINE_BYTES_MAX: usize = 64 * 1024;
/// Control socket: concurrent client connections.
pub const CONTROL_CONNECTIONS_MAX: usize = 64;
/// Control socket: a client that sends nothing for this long is disconnected.
pub const CONTROL_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Control socket: a reply that cannot be written within this time closes the connection.
pub const CONTROL_WRITE_TIMEOUT_MS: u64 = 5_000;
/// Connections beyond `CONTROL_CONNECTIONS_MAX` that still get served, but only a read-only
/// call (`status`, `methods`) and within `CONTROL_RESERVED_IDLE_MS`: the admin's `drl status`
/// gets through however many idle clients hold the ordinary slots.
pub const CONTROL_RESERVED_CONNECTIONS_MAX: usize = 4;
/// A client in a reserved slot must send its request line within this time.
pub const CONTROL_RESERVED_IDLE_MS: u64 = 2_000;
/// After an oversized request line, what the server reads and discards (up to the line's end
/// or the client's) before it closes, so a client still writing the line reads the error
/// reply instead of a broken pipe; bounded in bytes and by the write timeout.
pub const CONTROL_DISCARD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Event bus: events buffered per subscriber before a slow subscriber loses events.
pub const EVENTS_BUFFER_COUNT_MAX: usize = 1024;

/// SIGTERM: in-flight I/O must drain within this time before the daemon exits anyway.
pub const SHUTDOWN_DRAIN_TIMEOUT_MS: u64 = 5_000;

/// Log lines a single peer or client can cause per second before they are suppressed.
pub const LOG_LINES_PER_SOURCE_PER_SECOND_MAX: u32 = 10;

// --- volume metadata (superblock, dirty bitmap, activity log) ---

/// Size of one superblock slot and the unit every metadata region is rounded to.
pub const META_BLOCK_BYTES: u64 = 4096;
/// The longest resource name the superblock stores.
pub const META_RESOURCE_NAME_BYTES_MAX: usize = 128;
/// The longest node name the superblock stores.
pub const META_NODE_NAME_BYTES_MAX: usize = 64;
/// One activity-log extent covers this many bytes of the volume (DRBD: 4 MiB).
pub const AL_EXTENT_BYTES_DEFAULT: u64 = 4 * 1024 * 1024;
/// Smallest allowed activity-log extent.
pub const AL_EXTENT_BYTES_MIN: u64 = 64 * 1024;
/// Hot extents the activity log keeps by default (DRBD's `al-extents` default).
pub const AL_EXTENTS_DEFAULT: u32 = 1237;
/// The largest hot set (DRBD's limit: 16-bit labels).
pub const AL_EXTENTS_MAX: u32 = 65534;
/// The smallest hot set: one request of the largest size, unaligned, must fit (9 extents of
/// 4 MiB) plus one. A correctness bound, not a performance one (DRBD's minimum is 67).
pub const AL_EXTENTS_MIN: u32 = 10;
/// Transaction slots in the on-disk activity-log ring.
pub const AL_TRANSACTION_SLOTS_DEFAULT: u32 = 8;
/// Bounds of the ring size (at least two, so a torn write always leaves the previous one).
pub const AL_TRANSACTION_SLOTS_MIN: u32 = 2;
pub const AL_TRANSACTION_SLOTS_MAX: u32 = 64;

const _: () = assert!(AL_EXTENT_BYTES_DEFAULT.is_multiple_of(BITMAP_BLOCK_BYTES));
const _: () = assert!(AL_EXTENT_BYTES_MIN.is_multiple_of(BITMAP_BLOCK_BYTES));
const _: () = assert!(AL_EXTENTS_MIN <= AL_EXTENTS_DEFAULT && AL_EXTENTS_DEFAULT <= AL_EXTENTS_MAX);
// A single request never needs more extents than the smallest hot set can hold.
const _: () =
    assert!((NBD_PAYLOAD_BYTES_MAX as u64 / AL_EXTENT_BYTES_DEFAULT + 2) <= AL_EXTENTS_MIN as u64);
const _: () = assert!(AL_TRANSACTION_SLOTS_MIN >= 2);
// --- control ---
/// Control socket: permissions of the socket file unless the config says otherwise.
pub const CONTROL_SOCKET_MODE_DEFAULT: u32 = 0o600;
/// Control client: the longest reply line it accepts from the daemon (a status of many
/// resources is large, but never this large).
pub const CONTROL_REPLY_BYTES_MAX: usize = 16 * 1024 * 1024;

const _: () = assert!(BITMAP_BLOCK_BYTES.is_multiple_of(SECTOR_SIZE_BYTES));
const _: () = assert!(NBD_PAYLOAD_BYTES_MAX as u64 <= NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX);
const _: () = assert!(NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX <= NBD_INFLIGHT_DAEMON_BYTES_MAX);
const _: () = assert!((NBD_PREFERRED_BLOCK_BYTES as u64).is_multiple_of(SECTOR_SIZE_BYTES));

/// Names of nodes and resources (also bounds what a peer can make us log).
pub const NAME_BYTES_MAX: usize = 64;
/// The largest volume drl accepts (the bitmap of a 64 TiB volume at 4 KiB a bit is 2 GiB).
pub const VOLUME_SIZE_BYTES_MAX: u64 = 64 << 40;
/// Volumes in one resource (a consistency group; DRBD allows more, but every volume costs a
/// bitmap, an activity log and an NBD export, and one send queue is shared by all of them).
pub const GROUP_VOLUMES_COUNT_MAX: usize = 16;
/// A group stream's record (`L/SNAP/group.json`: resource, snapshot, each volume's size) read
/// back by a restore: a few hundred bytes; anything larger is not one of ours.
pub const GROUP_RECORD_BYTES_MAX: u64 = 64 * 1024;
/// The sender's bookkeeping (epoch tracker: unacked and unsent ranges) addresses a group's
/// volumes in one space: volume v's byte offset o is `v << GROUP_ADDRESS_VOLUME_SHIFT_BITS | o`.
pub const GROUP_ADDRESS_VOLUME_SHIFT_BITS: u32 = 48;

const _: () = assert!(VOLUME_SIZE_BYTES_MAX <= 1 << GROUP_ADDRESS_VOLUME_SHIFT_BITS);
const _: () =
    assert!((GROUP_VOLUMES_COUNT_MAX as u64) <= 1 << (64 - GROUP_ADDRESS_VOLUME_SHIFT_BITS));

// --- snapshots ---
/// Copy-on-write granularity of snapshots.
pub const SNAPSHOT_CHUNK_BYTES_DEFAULT: u64 = 64 * 1024;
/// Snapshots per resource (live ones; tombstones are counted separately).
pub const SNAPSHOTS_PER_RESOURCE_MAX: usize = 64;
/// Tombstones (deleted snapshots kept only as change sets for incremental parents).
pub const SNAPSHOT_TOMBSTONES_MAX: usize = 64;
/// COW space of a resource's snapshots when the config names none: this fraction of the volume.
pub const SNAPSHOT_SPACE_PERCENT_DEFAULT: u64 = 25;
const _: () = assert!(CONTROL_LINE_BYTES_MAX <= CONTROL_REPLY_BYTES_MAX);
// --- nbd ---
/// Connections over the limit that still get a handshake answering NBD_OPT_GO with
/// NBD_REP_ERR_POLICY ("too many connections"); beyond this they are closed at once.
pub const NBD_REFUSED_HANDSHAKES_MAX: usize = 8;
// --- replication (src/repl) ---

/// Largest uncompressed data one Data / ResyncData frame carries; the sender splits bigger
/// writes into several frames of the same epoch.
pub const REPL_FRAME_DATA_BYTES_MAX: u32 = 1024 * 1024;
/// Largest payload (as sent, after compression) of any frame. A peer announcing more is
/// refused before a byte of the payload is buffered.
pub const REPL_FRAME_PAYLOAD_BYTES_MAX: u32 = REPL_FRAME_DATA_BYTES_MAX;
/// Largest range one Trim / Zeroes / ResyncRequest frame covers (they carry no payload).
pub const REPL_FRAME_RANGE_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// A replication peer must finish the handshake (Hello .. AuthOk) within this time.
pub const REPL_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Longest resource or node name on the wire.
pub const REPL_NAME_BYTES_MAX: usize = 128;
/// Longest reason text in Refuse / Disconnect frames.
pub const REPL_REASON_BYTES_MAX: usize = 256;
/// Bytes of dirty bitmap per BitmapChunk frame (64 KiB = 512 Ki bits = 2 GiB of volume).
pub const REPL_BITMAP_CHUNK_BYTES: usize = 64 * 1024;
/// zstd level for compressed data frames (cheap: the link, not the CPU, is the bottleneck).
pub const REPL_ZSTD_LEVEL: i32 = 1;
/// Sender: payload bytes buffered for the peer (sent or not, not yet barrier-acked) before
/// `try_enqueue` reports Full (DRBD's max-buffers / sndbuf-size role).
pub const REPL_SEND_BUFFER_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Sender: writes in flight (not yet barrier-acked) before `try_enqueue` reports Full.
pub const REPL_INFLIGHT_WRITES_MAX: usize = 65_536;
/// An epoch is closed after this many writes (DRBD's max-epoch-size).
pub const REPL_EPOCH_WRITES_MAX: u32 = 2048;
/// An epoch is closed after this many payload bytes.
pub const REPL_EPOCH_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Sender: disjoint block ranges remembered for writes refused as Full; beyond this no dirty
/// bit is cleared until the session ends (bounded memory, still correct).
pub const REPL_UNSENT_RANGES_MAX: usize = 65_536;
/// Receiver: writes of later epochs queued while an epoch drains and flushes.
pub const REPL_RECEIVER_QUEUED_WRITES_MAX: usize = 4096;

const _: () = assert!(REPL_FRAME_PAYLOAD_BYTES_MAX >= REPL_FRAME_DATA_BYTES_MAX);
const _: () = assert!(REPL_SEND_BUFFER_BYTES_MAX >= 2 * REPL_FRAME_DATA_BYTES_MAX as u64);
const _: () = assert!(REPL_EPOCH_BYTES_MAX <= REPL_SEND_BUFFER_BYTES_MAX);
const _: () = assert!(REPL_BITMAP_CHUNK_BYTES <= REPL_FRAME_DATA_BYTES_MAX as usize);
const _: () = assert!((REPL_FRAME_RANGE_BYTES_MAX as u64).is_multiple_of(BITMAP_BLOCK_BYTES));

// --- replication integration (replcore) ---
/// Largest `max-buffer` a resource may configure.
pub const REPL_MAX_BUFFER_BYTES_LIMIT: u64 = 1024 * 1024 * 1024;
/// First reconnect delay after a failed connect; doubles up to the max (plus jitter).
pub const REPL_RECONNECT_MIN_MS: u64 = 100;
/// Longest reconnect delay.
pub const REPL_RECONNECT_MAX_MS: u64 = 2_000;
/// A Ping goes out when nothing was received for this long.
pub const REPL_PING_INTERVAL_MS: u64 = 1_000;
/// No frame at all from the peer for this long: the connection is dead.
pub const REPL_PEER_TIMEOUT_MS: u64 = 6_000;
/// How long `primary` / `secondary` wait for the connected peer to confirm it applied the
/// role change (DRBD changes roles cluster-wide). Longer would outlast the peer timeout,
/// which ends the wait anyway by closing the link.
pub const REPL_STATE_ACK_TIMEOUT_MS: u64 = REPL_PEER_TIMEOUT_MS;
/// `primary --force` that renegotiates a live connection (a new data generation) returns once
/// a new session has decided the sync, or after this long (a handshake's deadline).
pub const REPL_ADMIN_DECISION_WAIT_MS: u64 = REPL_HANDSHAKE_TIMEOUT_MS;
/// Online verify: bytes per range, ranges a VerifyS keeps outstanding, digest bytes per
/// bitmap block (sha256, truncated: 2^-64 odds that a changed block still matches).
pub const REPL_VERIFY_REQUEST_BYTES: u32 = 1024 * 1024;
pub const REPL_VERIFY_WINDOW_REQUESTS: usize = 8;
pub const REPL_VERIFY_DIGEST_BYTES: usize = 8;
/// A VerifyT that receives no frame of the peer's run for this long ends it (the peer died or
/// went silent without a VerifyDone). Generous: verify frames queue behind writes on a thin link.
pub const REPL_VERIFY_PEER_IDLE_MS: u64 = 30_000;
/// Default and bounds of how many bytes per second a verify run reads on each node (DRBD's
/// resync-rate controller defaults to at most 100 MiB/s too).
pub const REPL_VERIFY_RATE_DEFAULT: u64 = 100 * 1024 * 1024;
pub const REPL_VERIFY_RATE_MIN: u64 = 1024 * 1024;
const _: () = assert!((REPL_VERIFY_REQUEST_BYTES as u64).is_multiple_of(BITMAP_BLOCK_BYTES));
const _: () = assert!(REPL_VERIFY_REQUEST_BYTES <= REPL_FRAME_RANGE_BYTES_MAX);
/// Resync requests a SyncTarget keeps outstanding.
pub const REPL_RESYNC_WINDOW_REQUESTS: usize = 8;
/// Resync requests a SyncSource reads at once while its answers are zero ranges (each read is
/// one request, so this many concurrent reads of `REPL_RESYNC_REQUEST_BYTES`).
pub const REPL_RESYNC_ZERO_BATCH: usize = REPL_RESYNC_WINDOW_REQUESTS;
/// Bytes of one resync request (one frame of data).
pub const REPL_RESYNC_REQUEST_BYTES: u32 = REPL_FRAME_DATA_BYTES_MAX;
/// Control frames (everything but application writes and barriers, which the epoch buffer
/// bounds: pings and their answers, acks, resync and verify frames) queued for the socket
/// writer at once: a memory bound against a peer that floods requests without reading. Not a
/// stall detector: under 4 KiB writes a count of all frames is reached by a 0.2 s hiccup.
pub const REPL_WRITER_QUEUE_CONTROL_FRAMES_MAX: usize = 65_536;
/// A peer that has taken no byte from this node's socket for this long while frames wait for
/// it has stopped reading: the session ends. Judged by time, not by how much is queued (a
/// network hiccup queues thousands of small frames in a moment and must not drop the link);
/// longer than the peer timeout, so a slow shaped link that still drains is never taken for it.
pub const REPL_SEND_STALL_MS: u64 = 2 * REPL_PEER_TIMEOUT_MS;
/// Frames the socket writer finds queued together go out in one write (one syscall, one
/// shaper request) up to this many bytes; a larger frame goes alone.
pub const REPL_WRITE_BATCH_BYTES: usize = 256 * 1024;
/// A batch goes out as one vectored write: frames of at least this many bytes as slices of
/// their own (no copy of a payload), smaller ones (acks, pings, barriers, resync requests,
/// zero ranges: headers only) copied side by side into one slice, as one slice per 40-byte
/// frame would make a batch of them thousands of slices and one syscall per few of them.
pub const REPL_FRAME_COPY_BELOW_BYTES: usize = 1024;
/// Slices per vectored write of a batch (the kernel takes up to 1024): a 256 KiB batch of
/// 4 KiB writes is 64 frames, so one call.
pub const REPL_WRITEV_SLICES: usize = 128;
/// Data payloads are compressed (when it pays) only while at least this much waits for the
/// socket writer: the link, not the CPU, is the bottleneck then.
pub const REPL_COMPRESS_BACKLOG_BYTES: u64 = 128 * 1024;
/// ... and the socket writer has not found its queue empty for this long.
pub const REPL_COMPRESS_BACKLOG_MS: u64 = 50;
/// Once a backlog was seen, data payloads stay compressed (when it pays) for this long.
pub const REPL_COMPRESS_HOLD_MS: u64 = 2_000;
/// When the socket writer finds a single small frame queued and its last send was less than
/// this long ago, it waits this long for more before it sends (protocol A: the application's
/// write already completed; this only adds to the replication lag), so writes in flight go
/// out in one send and one wakeup of the peer. After a quiet spell a frame goes at once.
pub const REPL_SEND_COALESCE_MS: u64 = 1;
/// Bytes a replication session asks the socket for per read (its read buffer grows to this
/// when less is free), so a stream of 4 KiB frames is read many frames per syscall.
pub const REPL_READ_CHUNK_BYTES: usize = 256 * 1024;
/// A node stays Ahead at least this long before it resyncs back (no oscillation).
pub const REPL_AHEAD_MIN_MS: u64 = 1_000;
/// Unauthenticated connections being handshaken at once per resource.
pub const REPL_PENDING_CONNECTIONS_MAX: usize = 4;
/// Log lines per second a peer can cause per resource.
pub const REPL_LOG_LINES_PER_S: u32 = 5;
/// State-change log lines (connection, peer-device, role, disk, sync decision, disconnect) per
/// second per resource: one reconnect (about eight) passes whole, a flapping link is bounded.
pub const REPL_STATE_LOG_LINES_PER_S: u32 = 10;
const _: () = assert!(REPL_RECONNECT_MIN_MS <= REPL_RECONNECT_MAX_MS);
const _: () = assert!(REPL_PING_INTERVAL_MS * 3 <= REPL_PEER_TIMEOUT_MS);
const _: () = assert!((REPL_RESYNC_REQUEST_BYTES as u64).is_multiple_of(BITMAP_BLOCK_BYTES));
/// The dirty bitmap is written to the metadata at least this often while it changes.
pub const REPL_BITMAP_PERSIST_MS: u64 = 5_000;
// --- stream (snapshots and images to Swift) ---

/// Snapshot chunk size: default, bounds; always a multiple of [`BITMAP_BLOCK_BYTES`]. The
/// chunk is the unit of change tracking, hashing and the manifest, not the object size: a
/// fine chunk makes an incremental send little more than what changed.
pub const STREAM_CHUNK_BYTES_DEFAULT: u64 = 1024 * 1024;
pub const STREAM_CHUNK_BYTES_MIN: u64 = 64 * 1024;
pub const STREAM_CHUNK_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Chunks read and hashed at once (or two hash groups, when more; see [`STREAM_HASH_LANES`]), objects
/// uploaded at once (see [`STREAM_INFLIGHT_BYTES_DEFAULT`]), ranges fetched at once by a restore.
pub const STREAM_PARALLELISM_DEFAULT: usize = 8;
pub const STREAM_PARALLELISM_MAX: usize = 64;
/// A stream reads chunks in groups of up to this many (at most `parallelism`, at most
/// [`STREAM_HASH_GROUP_BYTES_MAX`]) and hashes them in one blocking task (sha256 side by side,
/// `stream::sha256x8`, in a chain begun before manifest version 3).
pub const STREAM_HASH_LANES: usize = 8;
pub const STREAM_HASH_GROUP_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Stored chunks are packed into objects of at most this size (Swift pays per object: an
/// fsync, a container update; few large objects stream faster than many small ones).
/// 16 MiB with the default parallelism keeps 8 objects uploading while the next 8 are hashed.
pub const STREAM_OBJECT_BYTES_DEFAULT: u64 = 16 * 1024 * 1024;
pub const STREAM_OBJECT_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Object bodies held by a stream at once (being hashed, waiting for an upload slot or
/// uploading, plus the one being packed), by default (`[stream] memory`):
/// `STREAM_INFLIGHT_BYTES_DEFAULT / object size - 1` full
/// objects, at least 1. At the default object size, 17 full objects and the one being packed:
/// 8 uploading, 8 gathered for their md5s side by side (`stream::md5x4::lanes_here`), one to
/// spare. With 160 MiB (9 full objects) a 1 GiB stream hashed few of its objects eight at a
/// time; with 288 MiB most of them, and md5 took half the time per object
/// (`bench-results/swift-ab-20261207T1040Z-md5x8.md`). Without AVX-512VL (four lanes) 160 MiB
/// does as well.
pub const STREAM_INFLIGHT_BYTES_DEFAULT: u64 = 288 * 1024 * 1024;
/// The range of `[stream] memory`: two default objects at least (one uploading, one being
/// packed: no md5 side by side, a stream at a fraction of its speed), 4 GiB at most.
pub const STREAM_INFLIGHT_BYTES_MIN: u64 = 2 * STREAM_OBJECT_BYTES_DEFAULT;
pub const STREAM_INFLIGHT_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// A stream hashes fewer than a full set of objects together only when fewer than this many are
/// uploading, hashed and waiting, or being hashed (Swift would soon have nothing to receive).
pub const STREAM_UPLOADS_LOW_WATER: usize = 2;
/// A restore fetches the chunks of one object in ranges of at most this many stored (and,
/// decompressed, raw) bytes.
pub const STREAM_RESTORE_RANGE_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Chunks in one snapshot manifest (bounds the manifest: 4 Mi chunks of the default 1 MiB =
/// 4 TiB; bigger volumes need a bigger --chunk-size, the error says so).
pub const STREAM_CHUNKS_MAX: u64 = 4 * 1024 * 1024;
/// The largest manifest object read back.
pub const STREAM_MANIFEST_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Snapshots in one restore chain (full plus incrementals).
pub const STREAM_CHAIN_DEPTH_MAX: usize = 1000;
/// zstd level for chunks and segments.
pub const STREAM_ZSTD_LEVEL: i32 = 3;
/// Compression pays when the compressed chunk is at most this many 16ths of the raw chunk.
pub const STREAM_COMPRESS_PAYS_SIXTEENTHS_MAX: u64 = 15;

/// Swift requests: attempts per request (5xx, 408, 429, connection errors), backoff bounds.
pub const SWIFT_RETRY_ATTEMPTS_MAX: u32 = 5;
pub const SWIFT_RETRY_BASE_DELAY_MS: u64 = 200;
pub const SWIFT_RETRY_DELAY_MAX_MS: u64 = 10_000;
/// Swift requests: connect and whole-request timeouts.
pub const SWIFT_CONNECT_TIMEOUT_MS: u64 = 10_000;
pub const SWIFT_REQUEST_TIMEOUT_MS: u64 = 300_000;
/// Container listing: objects per page, and objects per listing in total.
pub const SWIFT_LIST_PAGE_COUNT: u32 = 10_000;
pub const SWIFT_LIST_OBJECTS_MAX: u64 = 2 * STREAM_CHUNKS_MAX;
/// Bytes of an error answer kept for the error message.
pub const SWIFT_ERROR_BODY_BYTES_MAX: usize = 512;
/// The largest auth answer read (a Keystone token with its catalog).
pub const SWIFT_AUTH_RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Image push (Static Large Object): segment size default and bounds, segments per manifest
/// (Swift's default `max_manifest_segments`).
pub const SLO_SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
pub const SLO_SEGMENT_BYTES_MIN: u64 = 1024 * 1024;
pub const SLO_SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
pub const SLO_SEGMENTS_MAX: u64 = 1000;

const _: () = assert!(STREAM_CHUNK_BYTES_MIN.is_multiple_of(BITMAP_BLOCK_BYTES));
const _: () = assert!(STREAM_CHUNK_BYTES_DEFAULT.is_multiple_of(BITMAP_BLOCK_BYTES));
const _: () = assert!(STREAM_CHUNK_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!(STREAM_CHUNK_BYTES_MIN <= STREAM_CHUNK_BYTES_DEFAULT);
const _: () = assert!(STREAM_CHUNK_BYTES_DEFAULT <= STREAM_CHUNK_BYTES_MAX);
const _: () = assert!(STREAM_PARALLELISM_DEFAULT <= STREAM_PARALLELISM_MAX);
const _: () = assert!(STREAM_CHUNK_BYTES_MAX <= STREAM_OBJECT_BYTES_MAX);
const _: () = assert!(STREAM_OBJECT_BYTES_DEFAULT <= STREAM_OBJECT_BYTES_MAX);
const _: () = assert!(SLO_SEGMENT_BYTES_MIN <= SLO_SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SLO_SEGMENT_BYTES_DEFAULT <= SLO_SEGMENT_BYTES_MAX);
const _: () = assert!(SWIFT_RETRY_BASE_DELAY_MS <= SWIFT_RETRY_DELAY_MAX_MS);

// --- daemon jobs ---
/// Long operations (streams, restores) running at once in one daemon.
pub const JOBS_RUNNING_MAX: usize = 8;
/// Jobs (running and finished) the daemon remembers for `job.list`.
pub const JOBS_KEPT_MAX: usize = 64;
const _: () = assert!(JOBS_RUNNING_MAX <= JOBS_KEPT_MAX);

// --- shaping ---
/// Default shares of replication, resync, snapshot, image (relative weights).
pub const SHAPING_SHARES_DEFAULT: [u32; 4] = [50, 25, 15, 10];
/// The largest share a class may have (shares are relative; this keeps sums far from overflow).
pub const SHAPING_SHARE_MAX: u32 = 10_000;
/// Default burst: this many milliseconds of the link rate, at least `SHAPING_BURST_BYTES_MIN`.
pub const SHAPING_BURST_MS_DEFAULT: u64 = 5;
pub const SHAPING_BURST_BYTES_MIN: u64 = 64 * 1024;
/// The largest burst (the limiter counts cells of 256 bytes in a u32; far below that).
pub const SHAPING_BURST_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// TCP_NOTSENT_LOWAT of replication sockets: unsent bytes the kernel keeps before the socket
/// stops being writable (the shaper decides what goes next, not a deep kernel queue).
pub const SHAPING_NOTSENT_LOWAT_BYTES: u32 = 256 * 1024;
/// Adaptive resync (DRBD's c-plan-ahead, c-fill-target, c-min-rate defaults, in drl's units).
pub const RESYNC_PLAN_AHEAD_MS_DEFAULT: u64 = 2_000;
pub const RESYNC_FILL_TARGET_BYTES_DEFAULT: u64 = 2 * 1024 * 1024;
pub const RESYNC_MIN_RATE_DEFAULT: u64 = 250 * 1024;
/// The longest a resync answer waits for the fill target or the pacing (the session that
/// serves resync requests must keep reading from the peer).
pub const RESYNC_ADMIT_WAIT_MS_MAX: u64 = 500;
// --- admin (wait-sync, events2) ---

/// While a resync runs, its progress is published on the event bus this often (`drl
/// wait-sync`'s progress line, `drl events2`'s `done:`).
pub const RESYNC_PROGRESS_EVENT_MS: u64 = 1_000;

// --- detect (site-failure detection, leases in etcd, self-fencing) ---
/// Probe interval, per-probe timeout and consecutive misses before an indicator counts as
/// missing: a dead site is suspected at most `interval * misses + timeout` after its last
/// answer (100 * 2 + 100 = 300 ms, the issue's goal). See ARCHITECTURE.md "Site-failure
/// detection" for why miss counting and not phi accrual.
pub const DETECT_PROBE_INTERVAL_MS_DEFAULT: u64 = 100;
pub const DETECT_PROBE_TIMEOUT_MS_DEFAULT: u64 = 100;
pub const DETECT_SUSPECT_MISSES_DEFAULT: u32 = 2;
/// Bounds of the probe interval a config may choose.
pub const DETECT_PROBE_INTERVAL_MS_MIN: u64 = 10;
pub const DETECT_PROBE_INTERVAL_MS_MAX: u64 = 10_000;
/// Probes remembered per indicator for matching answers (an answer to an older probe is late).
pub const DETECT_PROBES_OUTSTANDING_COUNT: usize = 32;
/// Indicators a config may list in all (each one is probed every interval).
pub const DETECT_INDICATORS_COUNT_MAX: usize = 256;
/// Nodes whose probes this node answers, and whose highest sequence number it keeps.
pub const DETECT_SENDERS_COUNT_MAX: usize = 256;
/// A probe whose timestamp is further than this from the receiver's clock is refused as a
/// replay (sequence numbers catch replays within the window; this one after a restart).
pub const DETECT_PROBE_CLOCK_SKEW_MS_MAX: u64 = 30_000;
/// Log lines per second for bad probes (unknown senders, forged, replayed, malformed).
pub const DETECT_LOG_LINES_PER_S: u32 = 5;
/// Lease TTL default (seconds: etcd's unit). etcd 3.4 refuses TTLs below its minimum
/// (1.5 x its election timeout, rounded up) and raises them silently: keep tests at 2-3 s.
pub const DETECT_LEASE_TTL_MS_DEFAULT: u64 = 5_000;
pub const DETECT_LEASE_TTL_MS_MIN: u64 = 2_000;
pub const DETECT_LEASE_TTL_MS_MAX: u64 = 300_000;
/// The holder renews its lease this many times per TTL (booth renews at half; a third leaves
/// two chances before the fence).
pub const DETECT_LEASE_RENEWS_PER_TTL_COUNT: u64 = 3;
/// Self-fencing margin: a Primary stops acknowledging writes this long before its lease could
/// expire in etcd, counted from when it *sent* its last successful renewal. It covers clock
/// rate drift between this node and the etcd leader (a few hundred ppm over a TTL), the time
/// between the fence check and the reply leaving, and scheduling delay on a loaded host.
pub const DETECT_FENCE_MARGIN_MS: u64 = 500;
/// Clock rate drift allowed on top of the fixed margin, parts per million of the TTL.
pub const DETECT_CLOCK_DRIFT_PPM: u64 = 1_000;
/// How often a node that does not hold a scope's key looks at it (free key, holder, expiry).
pub const DETECT_LEASE_POLL_MS: u64 = 200;
/// One etcd request (per endpoint) before the next endpoint is tried.
pub const DETECT_ETCD_REQUEST_TIMEOUT_MS: u64 = 400;
/// etcd endpoints a config may list.
pub const DETECT_ETCD_ENDPOINTS_COUNT_MAX: usize = 16;
const _: () = assert!(DETECT_LEASE_TTL_MS_MIN > 2 * DETECT_FENCE_MARGIN_MS);
const _: () = assert!(DETECT_LEASE_TTL_MS_MIN <= DETECT_LEASE_TTL_MS_DEFAULT);
const _: () = assert!(DETECT_LEASE_TTL_MS_DEFAULT <= DETECT_LEASE_TTL_MS_MAX);
const _: () = assert!(DETECT_PROBE_INTERVAL_MS_MIN <= DETECT_PROBE_INTERVAL_MS_DEFAULT);
const _: () = assert!(
    DETECT_ETCD_REQUEST_TIMEOUT_MS < DETECT_LEASE_TTL_MS_MIN / DETECT_LEASE_RENEWS_PER_TTL_COUNT
);
// ---- recovery orchestrator (src/orchestrator) ----
/// Largest answer read from Keystone, Cinder or Heat.
pub const DR_API_RESPONSE_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Connect timeout of one OpenStack API call.
pub const DR_API_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Whole-request timeout of one OpenStack API call.
pub const DR_API_REQUEST_TIMEOUT_MS: u64 = 60_000;
/// How long an imported volume may take to become `available`.
pub const DR_IMPORT_TIMEOUT_MS: u64 = 300_000;
/// How long a stack may take to reach `CREATE_COMPLETE` (Heat's own default timeout is 60 min;
/// a recovery that has not finished after this is reported, and resumes on the next run).
pub const DR_STACK_TIMEOUT_MS: u64 = 900_000;
/// Interval of status polls of a volume or a stack.
pub const DR_POLL_INTERVAL_MS: u64 = 250;
/// Most volumes listed when looking up what an earlier run imported.
pub const DR_VOLUMES_LISTED_COUNT_MAX: u32 = 1000;
/// Largest HOT template a plan may hold.
pub const DR_TEMPLATE_BYTES_MAX: u64 = 1024 * 1024;
/// Largest checkpoint object read back.
pub const DR_CHECKPOINT_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Largest recovery journal read back (a few hundred bytes per step).
pub const DR_JOURNAL_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// How long fail back waits for a resync or a verify run to finish.
pub const DR_FAILBACK_SYNC_TIMEOUT_MS: u64 = 3_600_000;

// ---- remote control endpoint (src/control/tcp.rs) ----
/// Time a TCP control client has to authenticate.
pub const CONTROL_TCP_AUTH_TIMEOUT_MS: u64 = 5_000;
/// Unauthenticated TCP control connections handled at once (more are dropped).
pub const CONTROL_TCP_HANDSHAKES_MAX: usize = 8;
/// Shortest token a TCP control endpoint accepts.
pub const CONTROL_TCP_TOKEN_BYTES_MIN: usize = 16;
// ---- operations: metrics endpoint, systemd, TLS ----

/// Concurrent connections to the metrics endpoint; more wait in the kernel's backlog.
pub const METRICS_CONNECTIONS_MAX: usize = 8;
/// Bytes of an HTTP request head the metrics endpoint reads before it refuses the request.
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// A metrics request must arrive and its answer be written within this time.
pub const METRICS_IO_TIMEOUT_MS: u64 = 5_000;
/// A TLS certificate or key file larger than this is refused (a PEM chain is a few KiB).
pub const TLS_PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Shortest interval of a plan's snapshot schedule (`[[plan]] snapshot-every`).
pub const DR_SNAPSHOT_EVERY_MS_MIN: u64 = 1_000;
/// Scheduled snapshots kept per resource when `keep` is not given.
pub const DR_SNAPSHOT_KEEP_DEFAULT: u32 = 24;
/// Images one `[[plan]]` copies on its schedule (`images`).
pub const DR_PLAN_IMAGES_COUNT_MAX: usize = 64;
/// Protection actions (scheduled snapshots streamed, images copied) a checkpoint records,
/// newest first; the store keeps `keep` per resource and image, so this bounds a large plan.
pub const DR_CHECKPOINT_ACTIONS_COUNT_MAX: usize = 1024;
/// How often the daemon compares each plan's replication lag with its `rpo-target`.
pub const DR_RPO_CHECK_INTERVAL_MS: u64 = 1_000;
/// Fields a `dr.plan_event` carries (the CLI's recover and fail back send a handful).
pub const DR_PLAN_EVENT_FIELDS_MAX: usize = 16;
/// One action record in the checkpoint store.
pub const DR_ACTION_BYTES_MAX: u64 = 64 * 1024;
/// Automatic failover (`failover = "automatic"`): wait after a failed recovery before the
/// daemon resumes it from its journal (Cinder or Heat down, a remote member's lease not yet
/// taken over).
pub const DR_AUTO_FAILOVER_RETRY_MS: u64 = 5_000;
