/*
 * layout.h - the on-shared-memory structures of shmflags: the snapshot
 * container and the control block.  Offsets only, never pointers.
 *
 * This file owns the byte layout that shmflags/snapshot/format.py also
 * states; every size and offset below is pinned by a _Static_assert and the
 * same number appears in format.py (tests/unit/test_parity.py compares them).
 * docs/snapshot-format.md describes the same bytes in prose.
 *
 * Invariants (both structures):
 *  - little-endian, fixed-width types only;
 *  - every struct is a multiple of 8 bytes and starts 8-byte aligned;
 *  - a snapshot (data object) is immutable once its generation is published;
 *  - the control block is written by the supervisor only, under a seqcount
 *    (see "Seqlock protocol" below); readers never write it.
 *
 * Compiled flag/segment records (the rec_off/rec_len blobs) are laid out in
 * native/record.h, owned by the evaluator; this header only locates them.
 */
#ifndef SHMFLAGS_LAYOUT_H
#define SHMFLAGS_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shmflags layout is little-endian; a big-endian reader must byte-swap"
#endif

/* ------------------------------------------------------------------------ */
/* Snapshot container                                                        */
/* ------------------------------------------------------------------------ */

#define SF_SNAPSHOT_MAGIC      "SHMFLAGS"   /* 8 bytes, no NUL */
#define SF_SNAPSHOT_MAGIC_LEN  8
#define SF_LAYOUT_VERSION      4u

#define SF_HEADER_SIZE         160u
#define SF_SLOT_SIZE           8u
#define SF_ENTRY_SIZE          40u
#define SF_ALIGN               8u
#define SF_MIN_INDEX_CAP       8u

/*
 * Format word (LMDB MDB_LOCK_FORMAT style): folds the layout version and the
 * struct sizes, so a reader built against another layout refuses the bytes
 * before looking at anything else.
 *   bits 31..24 layout version
 *   bits 23..16 header size / 8
 *   bits 15..8  index slot size
 *   bits  7..0  entry size
 */
#define SF_FORMAT_WORD  ((SF_LAYOUT_VERSION << 24) | ((SF_HEADER_SIZE / 8u) << 16) \
                         | (SF_SLOT_SIZE << 8) | SF_ENTRY_SIZE)

/* Largest object: offsets are u32 and bit 31 of a key/raw/rec offset marks the base. */
#define SF_MAX_SNAPSHOT_SIZE   0x7FFFFFFFu
#define SF_BASE_BIT            0x80000000u
#define SF_OFF_MASK            0x7FFFFFFFu

/* Blob chunks: 1 << chunk_shift bytes, shift in [MIN, MAX]; the builder uses 16 (64 KiB)
 * and starts the blob area on a 4096-byte boundary (readers require 8). */
#define SF_CHUNK_SHIFT         16u
#define SF_MIN_CHUNK_SHIFT     12u
#define SF_MAX_CHUNK_SHIFT     30u
#define SF_BLOB_ALIGN          4096u

/* Verification state of one mapped object: byte 0 = directory verified, then one byte per
 * blob chunk (shared by both readers; see reader.new_state). */
#define SF_CHUNK_UNKNOWN       0u
#define SF_CHUNK_OK            1u
#define SF_CHUNK_BAD           2u

/*
 * sf_header_t - the first 160 bytes of every snapshot.  Written once by the
 * builder (supervisor); the publisher stamps @generation (and, for an overlay,
 * @base_generation) and recomputes @header_check just before the object is
 * published.  Read-only afterwards.
 *
 * An object is a directory [160, blob_off) - indexes, entries, chunk table -
 * covered by @checksum, then a blob area [blob_off, total_size)
 * cut into chunks of 1 << chunk_shift bytes, each verified against its
 * chunk-table xxh64 the first time a reader touches it.  An overlay
 * (@base_size != 0) also reads blobs from its base: entry offsets with bit 31
 * set are offsets in the base object.
 */
typedef struct sf_header {
    char     magic[8];          /*   0 "SHMFLAGS" */
    uint32_t format;            /*   8 SF_FORMAT_WORD */
    uint32_t record_format;     /*  12 format word of compiled records (record.h); 0 = no records */
    uint64_t total_size;        /*  16 bytes in the snapshot, header included; <= object size */
    uint64_t checksum;          /*  24 xxh3_64 (seed 0) of the directory, bytes [160, blob_off) */
    uint64_t generation;        /*  32 publication number, stamped by the publisher (0 = unpublished) */
    uint64_t built_at_ms;       /*  40 Unix time in ms when the builder ran */
    int64_t  payload_version;   /*  48 LD payload version the data came from (0 = unknown) */
    uint32_t n_flags;           /*  56 number of flag entries */
    uint32_t n_segments;        /*  60 number of segment entries */
    uint32_t flag_index_off;    /*  64 offset of the flag index (sf_slot_t[flag_index_cap]) */
    uint32_t flag_index_cap;    /*  68 slots: power of two, 4*cap >= 5*n_flags, min 8 */
    uint32_t seg_index_off;     /*  72 offset of the segment index */
    uint32_t seg_index_cap;     /*  76 slots: power of two, 4*cap >= 5*n_segments, min 8 */
    uint32_t flag_entries_off;  /*  80 offset of n_flags sf_entry_t, sorted by key bytes */
    uint32_t seg_entries_off;   /*  84 offset of n_segments sf_entry_t, sorted by key bytes */
    uint32_t chunk_table_off;   /*  88 offset of n_chunks u64: xxh64 (seed 0) of each blob chunk */
    uint32_t chunk_shift;       /*  92 chunk size is 1 << chunk_shift bytes */
    uint32_t n_chunks;          /*  96 ceil((total_size - blob_off) / chunk size) */
    uint32_t blob_off;          /* 100 start of the blob area (end of the directory) */
    uint32_t raw_off;           /* 104 start of the raw msgpack region (hot blobs before it) */
    uint32_t reserved0;         /* 108 zero */
    uint64_t base_generation;   /* 112 overlay: generation of the base (stamped by the publisher) */
    uint64_t base_size;         /* 120 overlay: the base's total_size; 0 = self-contained */
    uint64_t base_checksum;     /* 128 overlay: the base's @checksum (0 when self-contained) */
    uint8_t  reserved[16];      /* 136 zero */
    uint64_t header_check;      /* 152 xxh3_64 (seed 0) of bytes [0, 152) of this header */
} sf_header_t;

/*
 * sf_slot_t - one slot of an open-addressing index (linear probing).
 * Lookup: h = xxh64(key, seed 0); i = h & (cap - 1); probe i, i+1, ... (mod
 * cap) until entry_off == 0 (absent) or tag == h >> 32 and the entry's key
 * bytes equal the key.  The home slot uses the low bits of h and the tag the
 * high 32, so a tag match is a 1-in-2^32 false positive, settled by the key
 * compare.  At least a fifth of the slots are empty (4*cap >= 5*n), so
 * probing ends; readers still bound it at cap steps.
 */
typedef struct sf_slot {
    uint32_t tag;               /*   0 high 32 bits of xxh64(key bytes, seed 0) */
    uint32_t entry_off;         /*   4 offset of an sf_entry_t; 0 = empty slot */
} sf_slot_t;

/*
 * sf_entry_t - one flag or segment.  Entries lie in the directory, in two
 * arrays (flags, then segments), each sorted by key bytes: the array is the
 * iteration order, and entry i of a kind is at entries_off + 40*i.  Each of
 * key_off/raw_off/rec_off/pool_off with bit 31 clear is an offset in this
 * object's blob area; with bit 31 set, (off & 0x7fffffff) is an offset in the
 * base object's blob area (overlays only).  The key is followed by one NUL (not
 * counted in key_len).  The compiled record is self-contained: offsets inside
 * it are relative to rec_off, so the builder can move it unchanged between
 * snapshots.  Its string pool (the members of its string sets, record.h
 * sf_strset_t) is a span of its own, so the pages an evaluation reads (records,
 * set slots) hold no set member bytes: those are read only when a fingerprint
 * matches.  Offsets into the pool are relative to pool_off; several entries may
 * name the same pool (the builder shares one among the items of a
 * self-contained object: the same user keys recur across sets).
 */
typedef struct sf_entry {
    uint32_t key_off;           /*   0 UTF-8 key, NUL-terminated */
    uint32_t key_len;           /*   4 bytes, NUL excluded */
    uint32_t raw_off;           /*   8 msgpack of the LD JSON object (Python path, dump) */
    uint32_t raw_len;           /*  12 */
    uint32_t rec_off;           /*  16 compiled record (record.h); 8-byte aligned */
    uint32_t rec_len;           /*  20 0 = no compiled record */
    uint32_t version_lo;        /*  24 LD version, low 32 bits */
    uint32_t version_hi;        /*  28 LD version, high 32 bits (int64 two's complement) */
    uint32_t pool_off;          /*  32 the record's string pool (record.h sf_strset_t) */
    uint32_t pool_len;          /*  36 0 = none (pool_off is then ignored) */
} sf_entry_t;

_Static_assert(sizeof(sf_header_t) == SF_HEADER_SIZE, "header size");
_Static_assert(offsetof(sf_header_t, magic) == 0, "magic");
_Static_assert(offsetof(sf_header_t, format) == 8, "format");
_Static_assert(offsetof(sf_header_t, record_format) == 12, "record_format");
_Static_assert(offsetof(sf_header_t, total_size) == 16, "total_size");
_Static_assert(offsetof(sf_header_t, checksum) == 24, "checksum");
_Static_assert(offsetof(sf_header_t, generation) == 32, "generation");
_Static_assert(offsetof(sf_header_t, built_at_ms) == 40, "built_at_ms");
_Static_assert(offsetof(sf_header_t, payload_version) == 48, "payload_version");
_Static_assert(offsetof(sf_header_t, n_flags) == 56, "n_flags");
_Static_assert(offsetof(sf_header_t, n_segments) == 60, "n_segments");
_Static_assert(offsetof(sf_header_t, flag_index_off) == 64, "flag_index_off");
_Static_assert(offsetof(sf_header_t, flag_index_cap) == 68, "flag_index_cap");
_Static_assert(offsetof(sf_header_t, seg_index_off) == 72, "seg_index_off");
_Static_assert(offsetof(sf_header_t, seg_index_cap) == 76, "seg_index_cap");
_Static_assert(offsetof(sf_header_t, flag_entries_off) == 80, "flag_entries_off");
_Static_assert(offsetof(sf_header_t, seg_entries_off) == 84, "seg_entries_off");
_Static_assert(offsetof(sf_header_t, chunk_table_off) == 88, "chunk_table_off");
_Static_assert(offsetof(sf_header_t, chunk_shift) == 92, "chunk_shift");
_Static_assert(offsetof(sf_header_t, n_chunks) == 96, "n_chunks");
_Static_assert(offsetof(sf_header_t, blob_off) == 100, "blob_off");
_Static_assert(offsetof(sf_header_t, raw_off) == 104, "raw_off");
_Static_assert(offsetof(sf_header_t, reserved0) == 108, "reserved0");
_Static_assert(offsetof(sf_header_t, base_generation) == 112, "base_generation");
_Static_assert(offsetof(sf_header_t, base_size) == 120, "base_size");
_Static_assert(offsetof(sf_header_t, base_checksum) == 128, "base_checksum");
_Static_assert(offsetof(sf_header_t, reserved) == 136, "reserved");
_Static_assert(offsetof(sf_header_t, header_check) == 152, "header_check");

_Static_assert(sizeof(sf_slot_t) == SF_SLOT_SIZE, "slot size");
_Static_assert(offsetof(sf_slot_t, tag) == 0, "slot.tag");
_Static_assert(offsetof(sf_slot_t, entry_off) == 4, "slot.entry_off");

_Static_assert(sizeof(sf_entry_t) == SF_ENTRY_SIZE, "entry size");
_Static_assert(offsetof(sf_entry_t, key_off) == 0, "entry.key_off");
_Static_assert(offsetof(sf_entry_t, key_len) == 4, "entry.key_len");
_Static_assert(offsetof(sf_entry_t, raw_off) == 8, "entry.raw_off");
_Static_assert(offsetof(sf_entry_t, raw_len) == 12, "entry.raw_len");
_Static_assert(offsetof(sf_entry_t, rec_off) == 16, "entry.rec_off");
_Static_assert(offsetof(sf_entry_t, rec_len) == 20, "entry.rec_len");
_Static_assert(offsetof(sf_entry_t, version_lo) == 24, "entry.version_lo");
_Static_assert(offsetof(sf_entry_t, version_hi) == 28, "entry.version_hi");
_Static_assert(offsetof(sf_entry_t, pool_off) == 32, "entry.pool_off");
_Static_assert(offsetof(sf_entry_t, pool_len) == 36, "entry.pool_len");

_Static_assert(SF_FORMAT_WORD == 0x04140828u, "format word (format.py FORMAT_WORD)");

/*
 * Validation a reader performs, in this order (format.py/reader.py do the
 * same; the first failure rejects the snapshot):
 *  1. buffer >= 160 bytes; magic; format == SF_FORMAT_WORD;
 *  2. header_check == xxh3_64(bytes[0,152));
 *  3. 160 <= total_size <= buffer size; total_size <= SF_MAX_SNAPSHOT_SIZE;
 *     blob_off 8-aligned in [160, total_size];
 *  4. checksum == xxh3_64(bytes[160,blob_off)) - once per mapped object
 *     (state byte 0 remembers it);
 *  5. each index: off 8-aligned, cap a power of two >= 8 with 4*cap >= 5*n,
 *     [off, off + cap*8) inside the directory [160, blob_off);
 *     each entries array [off, off + n*40) 8-aligned inside the directory; chunk_shift in
 *     [12, 30]; n_chunks == ceil((total_size - blob_off) >> shift); chunk
 *     table 8-aligned inside the directory; raw_off in [blob_off, total_size];
 *     base_size == 0 implies base_generation == base_checksum == 0;
 *     an overlay needs its base: a valid self-contained object whose
 *     generation, total_size and checksum equal base_generation, base_size
 *     and base_checksum, with the same record_format;
 *  6. on every use of an entry offset: 8-aligned, [off, off+40) inside the
 *     directory; key/raw/rec spans, and the pool span when pool_len != 0,
 *     inside the blob area of the object they name (bit 31: the base); every
 *     chunk a span touches verified (xxh64 == chunk table) before its bytes
 *     are used, once per object (pool bytes: the chunks of the bytes read,
 *     when they are read); key[key_len] == '\0'; rec_off 8-aligned.
 * A checksum match does not replace step 5/6: an attacker can recompute it.
 */

/* ------------------------------------------------------------------------ */
/* Control block: /shmflags.<name>.ctl                                       */
/* ------------------------------------------------------------------------ */

#define SF_CTL_MAGIC           "SHMFLCTL"   /* 8 bytes, no NUL */
#define SF_CTL_VERSION         1u
#define SF_CTL_SIZE            1024u
/* bits 31..24 control-block version, bits 23..0 size in bytes */
#define SF_CTL_FORMAT_WORD     ((SF_CTL_VERSION << 24) | SF_CTL_SIZE)

#define SF_CTL_NAME_MAX        128u   /* data_name, NUL included */
#define SF_CTL_ERROR_MAX       256u   /* error_message bytes (no NUL needed) */
#define SF_CTL_SOURCE_MAX      32u
#define SF_CTL_SOCKET_MAX      112u   /* sun_path is 108 */

/* Data-source state (ldclient DataSourceState). */
enum {
    SF_STATE_INITIALIZING = 0,
    SF_STATE_VALID        = 1,
    SF_STATE_INTERRUPTED  = 2,
    SF_STATE_OFF          = 3
};

/* Last error kind (ldclient DataSourceErrorKind); 0 = no error recorded. */
enum {
    SF_ERRKIND_NONE           = 0,
    SF_ERRKIND_UNKNOWN        = 1,
    SF_ERRKIND_NETWORK_ERROR  = 2,
    SF_ERRKIND_ERROR_RESPONSE = 3,
    SF_ERRKIND_INVALID_DATA   = 4,
    SF_ERRKIND_STORE_ERROR    = 5
};

/* Big Segment store status (ldclient BigSegmentsStatus); 0 = not configured. */
enum {
    SF_BIGSEG_NOT_CONFIGURED = 0,
    SF_BIGSEG_HEALTHY        = 1,
    SF_BIGSEG_STALE          = 2,
    SF_BIGSEG_STORE_ERROR    = 3
};

/*
 * sf_ctl_t - the control block.  Every field is written by the supervisor
 * (shmflags/shm.py Publisher) only, and only inside a seqlock write section,
 * except @magic/@format/@size, written once at creation before the object is
 * made readable.  Workers map it PROT_READ.
 *
 * Seqlock protocol (Linux seqcount; pairs are marked [W1]..[R3]):
 *   writer (single: one supervisor, serialised by its own lock)
 *     [W1] seq += 1 (now odd)      ; store, then full fence (pairs with R3)
 *     [W2] write the fields
 *     [W3] fence, then seq += 1 (now even)  ; release (pairs with R1)
 *   reader
 *     [R1] s1 = atomic_load(seq, acquire); if s1 odd: retry
 *     [R2] copy the fields it needs (plain loads; may be torn)
 *     [R3] atomic_thread_fence(acquire); s2 = atomic_load(seq, relaxed)
 *          if s1 != s2: retry (bounded; then SF_EBUSY / SnapshotBusy)
 * @seq and @generation are naturally aligned u64 and always written with a
 * single 8-byte store, so the hot path may load @generation alone
 * (atomic_load_explicit(..., memory_order_acquire)) without the seqlock, and
 * take the full protocol only when it changed.
 */
typedef struct sf_ctl {
    char     magic[8];              /*    0 "SHMFLCTL"; creation */
    uint32_t format;                /*    8 SF_CTL_FORMAT_WORD; creation */
    uint32_t size;                  /*   12 SF_CTL_SIZE; creation */
    uint64_t seq;                   /*   16 seqcount: odd while the writer is inside */
    uint64_t generation;            /*   24 current generation; 0 = nothing published yet */
    uint64_t data_size;             /*   32 bytes of the current data object (== its total_size) */
    uint64_t data_checksum;         /*   40 == sf_header_t.checksum of the current data object */
    int64_t  payload_version;       /*   48 LD payload version of the current data (0 = unknown) */
    int64_t  supervisor_pid;        /*   56 pid of the writing supervisor */
    uint64_t supervisor_start_ms;   /*   64 its process start time, Unix ms (pid-reuse check) */
    uint64_t heartbeat_ms;          /*   72 CLOCK_REALTIME ms, rewritten every second */
    uint64_t heartbeat_mono_ms;     /*   80 CLOCK_MONOTONIC ms, same instant (ages use this) */
    uint64_t last_update_ms;        /*   88 Unix ms of the last publish (0 = never) */
    uint64_t state_since_ms;        /*   96 Unix ms when @state last changed */
    uint32_t state;                 /*  104 SF_STATE_* */
    uint32_t from_cache;            /*  108 1 when the current data came from the last-known-good cache */
    uint32_t n_flags;               /*  112 flags in the current data object */
    uint32_t n_segments;            /*  116 segments in the current data object */
    uint32_t error_kind;            /*  120 SF_ERRKIND_* of the last error */
    uint32_t error_status;          /*  124 HTTP status of the last error (0 = none) */
    uint64_t error_time_ms;         /*  128 Unix ms of the last error */
    uint32_t error_len;             /*  136 bytes used in @error_message (<= 256) */
    uint32_t reserved0;             /*  140 zero */
    char     error_message[256];    /*  144 UTF-8, not NUL-terminated, @error_len bytes */
    char     data_name[128];        /*  400 "/shmflags.<name>.<generation>", NUL-terminated */
    char     source[32];            /*  528 "streaming", "polling", "file", "redis", "cache", ...; NUL-terminated */
    char     socket[112];           /*  560 event socket path, NUL-terminated ("" = events off) */
    uint32_t bigseg_status;         /*  672 SF_BIGSEG_* */
    uint32_t bigseg_available;      /*  676 1 when the last store metadata query succeeded */
    uint64_t bigseg_synced_ms;      /*  680 store's synchronized_on, Unix ms (0 = unknown) */
    uint64_t bigseg_checked_ms;     /*  688 Unix ms of the last status poll */
    char     env_id[64];            /*  696 LaunchDarkly environment id (X-LD-EnvID), NUL-terminated; empty = unknown */
    uint8_t  reserved[264];         /*  760 zero; room for later fields */
} sf_ctl_t;

_Static_assert(sizeof(sf_ctl_t) == SF_CTL_SIZE, "ctl size");
_Static_assert(offsetof(sf_ctl_t, magic) == 0, "ctl.magic");
_Static_assert(offsetof(sf_ctl_t, format) == 8, "ctl.format");
_Static_assert(offsetof(sf_ctl_t, size) == 12, "ctl.size");
_Static_assert(offsetof(sf_ctl_t, seq) == 16, "ctl.seq");
_Static_assert(offsetof(sf_ctl_t, generation) == 24, "ctl.generation");
_Static_assert(offsetof(sf_ctl_t, data_size) == 32, "ctl.data_size");
_Static_assert(offsetof(sf_ctl_t, data_checksum) == 40, "ctl.data_checksum");
_Static_assert(offsetof(sf_ctl_t, payload_version) == 48, "ctl.payload_version");
_Static_assert(offsetof(sf_ctl_t, supervisor_pid) == 56, "ctl.supervisor_pid");
_Static_assert(offsetof(sf_ctl_t, supervisor_start_ms) == 64, "ctl.supervisor_start_ms");
_Static_assert(offsetof(sf_ctl_t, heartbeat_ms) == 72, "ctl.heartbeat_ms");
_Static_assert(offsetof(sf_ctl_t, heartbeat_mono_ms) == 80, "ctl.heartbeat_mono_ms");
_Static_assert(offsetof(sf_ctl_t, last_update_ms) == 88, "ctl.last_update_ms");
_Static_assert(offsetof(sf_ctl_t, state_since_ms) == 96, "ctl.state_since_ms");
_Static_assert(offsetof(sf_ctl_t, state) == 104, "ctl.state");
_Static_assert(offsetof(sf_ctl_t, from_cache) == 108, "ctl.from_cache");
_Static_assert(offsetof(sf_ctl_t, n_flags) == 112, "ctl.n_flags");
_Static_assert(offsetof(sf_ctl_t, n_segments) == 116, "ctl.n_segments");
_Static_assert(offsetof(sf_ctl_t, error_kind) == 120, "ctl.error_kind");
_Static_assert(offsetof(sf_ctl_t, error_status) == 124, "ctl.error_status");
_Static_assert(offsetof(sf_ctl_t, error_time_ms) == 128, "ctl.error_time_ms");
_Static_assert(offsetof(sf_ctl_t, error_len) == 136, "ctl.error_len");
_Static_assert(offsetof(sf_ctl_t, reserved0) == 140, "ctl.reserved0");
_Static_assert(offsetof(sf_ctl_t, error_message) == 144, "ctl.error_message");
_Static_assert(offsetof(sf_ctl_t, data_name) == 400, "ctl.data_name");
_Static_assert(offsetof(sf_ctl_t, source) == 528, "ctl.source");
_Static_assert(offsetof(sf_ctl_t, socket) == 560, "ctl.socket");
_Static_assert(offsetof(sf_ctl_t, bigseg_status) == 672, "ctl.bigseg_status");
_Static_assert(offsetof(sf_ctl_t, bigseg_available) == 676, "ctl.bigseg_available");
_Static_assert(offsetof(sf_ctl_t, bigseg_synced_ms) == 680, "ctl.bigseg_synced_ms");
_Static_assert(offsetof(sf_ctl_t, bigseg_checked_ms) == 688, "ctl.bigseg_checked_ms");
_Static_assert(offsetof(sf_ctl_t, env_id) == 696, "ctl.env_id");
_Static_assert(offsetof(sf_ctl_t, reserved) == 760, "ctl.reserved");
_Static_assert(SF_CTL_FORMAT_WORD == 0x01000400u, "ctl format word (format.py CTL_FORMAT_WORD)");

#endif /* SHMFLAGS_LAYOUT_H */
