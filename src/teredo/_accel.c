/* The optional C accelerator of the data path: the same functions, ~20 times faster.
 *
 * teredo.core.offload sums every segment it cuts from a TCP super-packet and every datagram it joins
 * into one; in pure Python a sum is int.from_bytes(...) % 0xFFFF, about 3 us for 1280 bytes,
 * and the loops around it cost ~1 us per packet, more than the rest of the data path. Here a
 * sum is ~0.1 us and a whole 64-datagram batch a few us. read_runs reads the TUN queue without
 * a Python round trip per packet. Each function behaves exactly as its python_* twin in
 * teredo/core/offload.py and teredo/core/wire.py (ones_complement_sum, coalesce_segments, segment) or
 * teredo/adapters/tun_runs.py (read_runs); read their documentation there. The tests check each
 * against its twin. It is optional: when it is not built (no compiler), the twins run (teredo.adapters.accel chooses).
 * The Teredo server's rate limiter is here too (a section at the end).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <sys/uio.h>
#include <sys/random.h>

#define VNET_HEADER_BYTES 10
#define IPV6_HEADER_BYTES 40
#define MAX_COALESCED 64
#define COALESCED_BYTES (VNET_HEADER_BYTES + IPV6_HEADER_BYTES + 65535)
#define NEXT_HEADER_TCP 6
#define NEXT_HEADER_UDP 17
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_CWR 0x80
#define TCP_CHECKSUM_OFFSET 16
#define UDP_CHECKSUM_OFFSET 6
#define NEEDS_CSUM 0x01
#define GSO_TCPV6 4
#define GSO_UDP_L4 5
#define GSO_ECN 0x80
#define GSO_NONE 0
#define READ_BYTES 65536       /* teredo.adapters.tun_runs */
#define MAX_SEGMENTS 64        /* teredo.adapters.udp */
#define MAX_SEGMENTED_BYTES 65507

/* Raise teredo.core.offload.OffloadError (looked up when needed: that module imports this one). */
static void raise_offload_error(const char *message) {
    PyObject *offload = PyImport_ImportModule("teredo.core.offload");
    if (offload == NULL)
        return;
    PyObject *error = PyObject_GetAttrString(offload, "OffloadError");
    Py_DECREF(offload);
    if (error == NULL)
        return;
    PyErr_SetString(error, message);
    Py_DECREF(error);
}

/* The unfolded sum of big-endian 16-bit words (an odd last byte padded with zero). Summing
 * 32-bit words is the same modulo 0xFFFF, since 2**16 = 1 (mod 0xFFFF). */
static uint64_t sum_words(const unsigned char *p, Py_ssize_t n) {
    uint64_t sum = 0;
    while (n >= 4) {
        sum += ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        sum += ((uint32_t)p[0] << 8) | p[1];
        p += 2;
        n -= 2;
    }
    if (n)
        sum += (uint32_t)p[0] << 8;
    return sum;
}

/* Fold to 16 bits: 0 only for 0, else in 1..0xFFFF, congruent modulo 0xFFFF. */
static unsigned fold(uint64_t sum) {
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (unsigned)sum;
}

static void put16(unsigned char *p, unsigned value) {
    p[0] = (unsigned char)(value >> 8);
    p[1] = (unsigned char)value;
}

static uint32_t get32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put32(unsigned char *p, uint32_t value) {
    p[0] = (unsigned char)(value >> 24);
    p[1] = (unsigned char)(value >> 16);
    p[2] = (unsigned char)(value >> 8);
    p[3] = (unsigned char)value;
}

/* ones_complement_sum(data) -> int */
static PyObject *ones_complement_sum(PyObject *module, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t sum = sum_words(view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(fold(sum));
}

/* What may join a super-packet: see _joinable in teredo/offload.py. */
typedef struct {
    Py_ssize_t header_bytes;
    unsigned flags; /* TCP flags; 0 for UDP */
    uint32_t sequence;
} flow;

static int joinable(const unsigned char *p, Py_ssize_t total, flow *out) {
    if (total < IPV6_HEADER_BYTES + 8 || (p[0] >> 4) != 6)
        return 0;
    if (IPV6_HEADER_BYTES + (((Py_ssize_t)p[4] << 8) | p[5]) != total)
        return 0;
    unsigned next_header = p[6];
    Py_ssize_t header_bytes;
    unsigned flags = 0;
    uint32_t sequence = 0;
    if (next_header == NEXT_HEADER_TCP) {
        if (total < IPV6_HEADER_BYTES + 20)
            return 0;
        header_bytes = IPV6_HEADER_BYTES + (p[52] >> 4) * 4;
        flags = p[53];
        if (header_bytes < 60 || (flags & ~(unsigned)(TCP_ACK | TCP_PSH)) || !flags)
            return 0;
        sequence = get32(p + 44);
    } else if (next_header == NEXT_HEADER_UDP) {
        header_bytes = IPV6_HEADER_BYTES + 8;
        if (p[46] == 0 && p[47] == 0)
            return 0; /* no checksum: not allowed over IPv6 */
    } else {
        return 0;
    }
    if (total <= header_bytes)
        return 0;
    uint64_t sum = sum_words(p + 8, 32) + (uint64_t)(total - IPV6_HEADER_BYTES) + next_header +
                   sum_words(p + IPV6_HEADER_BYTES, total - IPV6_HEADER_BYTES);
    unsigned folded = fold(sum);
    if (folded != 0 && folded != 0xFFFF)
        return 0; /* damaged: the kernel must see it alone, and drop it */
    out->header_bytes = header_bytes;
    out->flags = flags;
    out->sequence = sequence;
    return 1;
}

/* Everything but payload length, sequence number, flags and checksum is the same. Both are
 * joinable; b's header is as long as a's before any option is compared. */
static int same_flow(const unsigned char *a, const unsigned char *b, const flow *first,
                     const flow *found) {
    if (memcmp(a, b, 4) || memcmp(a + 6, b + 6, 38))
        return 0;
    if (first->flags) {
        if (found->header_bytes != first->header_bytes)
            return 0;
        Py_ssize_t header_bytes = first->header_bytes;
        if (memcmp(a + 48, b + 48, 5) || memcmp(a + 54, b + 54, 2) ||
            memcmp(a + 58, b + 58, (size_t)(header_bytes - 58)))
            return 0;
    }
    return 1;
}

/* coalesce_segments(data, segment, out) -> (count, length) */
static PyObject *coalesce_segments(PyObject *module, PyObject *args) {
    Py_buffer data, out;
    Py_ssize_t segment;
    if (!PyArg_ParseTuple(args, "y*nw*", &data, &segment, &out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t count = 1, length = 0;
    if (segment <= 0) {
        raise_offload_error("segment size must be positive");
        goto done;
    }
    if (out.len < COALESCED_BYTES) {
        raise_offload_error("coalescing buffer too small");
        goto done;
    }
    const unsigned char *in = data.buf;
    unsigned char *packet = (unsigned char *)out.buf + VNET_HEADER_BYTES;
    Py_ssize_t total_bytes = data.len;
    flow first;
    if (total_bytes <= segment || !joinable(in, segment, &first) || first.flags & TCP_PSH)
        goto finish;
    Py_ssize_t header_bytes = first.header_bytes;
    Py_ssize_t size = segment - header_bytes;
    memcpy(packet, in, (size_t)segment);
    length = segment;
    uint32_t following = first.sequence + (uint32_t)size;
    for (Py_ssize_t position = segment; position < total_bytes; position += segment) {
        if (count >= MAX_COALESCED)
            break;
        const unsigned char *next = in + position;
        Py_ssize_t next_bytes = total_bytes - position < segment ? total_bytes - position : segment;
        flow found;
        if (!joinable(next, next_bytes, &found))
            break;
        Py_ssize_t payload = next_bytes - found.header_bytes;
        if (!same_flow(in, next, &first, &found) || payload > size ||
            length + payload > IPV6_HEADER_BYTES + 65535 ||
            (first.flags && found.sequence != following))
            break;
        memcpy(packet + length, next + found.header_bytes, (size_t)payload);
        length += payload;
        count++;
        following = found.sequence + (uint32_t)payload;
        if (found.flags & TCP_PSH) {
            packet[IPV6_HEADER_BYTES + 13] |= TCP_PSH;
            break;
        }
        if (payload < size)
            break;
    }
    if (count == 1) {
        length = 0;
        goto finish;
    }
    unsigned upper = (unsigned)(length - IPV6_HEADER_BYTES);
    unsigned next_header = packet[6];
    put16(packet + 4, upper);
    unsigned gso_type;
    Py_ssize_t field;
    if (first.flags) {
        gso_type = GSO_TCPV6;
        field = IPV6_HEADER_BYTES + TCP_CHECKSUM_OFFSET;
    } else {
        gso_type = GSO_UDP_L4;
        field = IPV6_HEADER_BYTES + UDP_CHECKSUM_OFFSET;
        put16(packet + 44, upper);
    }
    /* NEEDS_CSUM: the field holds the pseudo-header sum; the kernel sums the rest. */
    unsigned pseudo = fold(sum_words(packet + 8, 32) + upper + next_header) % 0xFFFF;
    put16(packet + field, pseudo);
    /* struct virtio_net_hdr, little-endian: flags, gso_type, hdr_len, gso_size, csum_start,
     * csum_offset. */
    unsigned char *header = out.buf;
    unsigned values[4] = {(unsigned)header_bytes, (unsigned)size, IPV6_HEADER_BYTES,
                          (unsigned)(field - IPV6_HEADER_BYTES)};
    header[0] = NEEDS_CSUM;
    header[1] = (unsigned char)gso_type;
    for (int i = 0; i < 4; i++) {
        header[2 + 2 * i] = (unsigned char)values[i];
        header[3 + 2 * i] = (unsigned char)(values[i] >> 8);
    }
    length += VNET_HEADER_BYTES;
finish:
    result = Py_BuildValue("(nn)", count, length);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

/* segment(packet, gso_type, gso_size, out) -> (count, size, end) */
static PyObject *segment(PyObject *module, PyObject *args) {
    Py_buffer in, out;
    int gso_type;
    Py_ssize_t gso_size;
    if (!PyArg_ParseTuple(args, "y*inw*", &in, &gso_type, &gso_size, &out))
        return NULL;
    PyObject *result = NULL;
    const unsigned char *packet = in.buf;
    Py_ssize_t total = in.len;
    if (total < IPV6_HEADER_BYTES || gso_size <= 0) {
        raise_offload_error("super-packet too short");
        goto done;
    }
    unsigned next_header = packet[6];
    int kind = gso_type & ~GSO_ECN;
    Py_ssize_t header_bytes, field;
    int tcp;
    if (kind == GSO_TCPV6 && next_header == NEXT_HEADER_TCP) {
        if (total < IPV6_HEADER_BYTES + 20) {
            raise_offload_error("TCP header truncated");
            goto done;
        }
        header_bytes = IPV6_HEADER_BYTES + (packet[IPV6_HEADER_BYTES + 12] >> 4) * 4;
        if (header_bytes < IPV6_HEADER_BYTES + 20) {
            /* A data offset under 5 words: the checksum field would lie past the header. */
            raise_offload_error("TCP header shorter than 20 bytes");
            goto done;
        }
        field = IPV6_HEADER_BYTES + TCP_CHECKSUM_OFFSET;
        tcp = 1;
    } else if (kind == GSO_UDP_L4 && next_header == NEXT_HEADER_UDP) {
        header_bytes = IPV6_HEADER_BYTES + 8;
        field = IPV6_HEADER_BYTES + UDP_CHECKSUM_OFFSET;
        tcp = 0;
    } else {
        raise_offload_error("unsupported super-packet layout");
        goto done;
    }
    Py_ssize_t payload_bytes = total - header_bytes;
    if (payload_bytes <= 0 || header_bytes - IPV6_HEADER_BYTES < 8) {
        raise_offload_error("super-packet without payload");
        goto done;
    }
    Py_ssize_t count = (payload_bytes + gso_size - 1) / gso_size;
    if (count * header_bytes + payload_bytes > out.len) {
        raise_offload_error("segment buffer too small");
        goto done;
    }
    /* The pseudo-header: addresses and next header are shared by all segments. */
    uint64_t addresses = sum_words(packet + 8, 32) + next_header;
    uint32_t sequence = tcp ? get32(packet + 44) : 0;
    unsigned flags = tcp ? packet[IPV6_HEADER_BYTES + 13] : 0;
    unsigned char *position = out.buf;
    Py_ssize_t start = header_bytes;
    for (Py_ssize_t index = 0; index < count; index++) {
        Py_ssize_t piece = total - start < gso_size ? total - start : gso_size;
        unsigned upper = (unsigned)(header_bytes - IPV6_HEADER_BYTES + piece);
        memcpy(position, packet, (size_t)header_bytes);
        memcpy(position + header_bytes, packet + start, (size_t)piece);
        put16(position + 4, upper);
        if (tcp) {
            put32(position + 44, sequence + (uint32_t)(index * gso_size));
            unsigned segment_flags = flags;
            if (index)
                segment_flags &= ~(unsigned)TCP_CWR;
            if (index != count - 1)
                segment_flags &= ~(unsigned)(TCP_FIN | TCP_PSH);
            position[IPV6_HEADER_BYTES + 13] = (unsigned char)segment_flags;
        } else {
            put16(position + 44, upper);
        }
        position[field] = position[field + 1] = 0;
        unsigned folded =
            fold(addresses + upper + sum_words(position + IPV6_HEADER_BYTES, upper));
        put16(position + field, 0xFFFF - (folded == 0xFFFF ? 0 : folded));
        position += header_bytes + piece;
        start += piece;
    }
    result = Py_BuildValue("(nnn)", count, header_bytes + gso_size,
                           (Py_ssize_t)(position - (unsigned char *)out.buf));
done:
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return result;
}

static int append_run(PyObject *runs, Py_ssize_t start, Py_ssize_t end, Py_ssize_t size,
                      int gso_type, int gso_size) {
    PyObject *run = Py_BuildValue("(nnnii)", start, end, size, gso_type, gso_size);
    if (run == NULL)
        return -1;
    int failed = PyList_Append(runs, run);
    Py_DECREF(run);
    return failed;
}

/* read_runs(fd, buffer, max_reads) -> (reads, runs, dropped, error) */
static PyObject *read_runs(PyObject *module, PyObject *args) {
    int fd;
    Py_buffer buffer;
    Py_ssize_t max_reads;
    if (!PyArg_ParseTuple(args, "iw*n", &fd, &buffer, &max_reads))
        return NULL;
    PyObject *runs = PyList_New(0);
    if (runs == NULL)
        goto fail;
    unsigned char *base = buffer.buf;
    Py_ssize_t last_start = buffer.len - READ_BYTES;
    Py_ssize_t position = 0, reads = 0, dropped = 0;
    int error = 0;
    /* The open run: count packets of size bytes at base[start:position], one source and
     * destination. */
    Py_ssize_t start = 0, size = 0, count = 0;
    int closed = 1;
    while (reads < max_reads && position <= last_start) {
        unsigned char header[VNET_HEADER_BYTES];
        struct iovec parts[2] = {{header, VNET_HEADER_BYTES}, {base + position, READ_BYTES}};
        ssize_t got = readv(fd, parts, 2);
        if (got < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0)
                    goto fail;
                continue;
            }
            error = errno;
            break;
        }
        reads++;
        Py_ssize_t length = got - VNET_HEADER_BYTES;
        if (length <= 0)
            continue;
        unsigned char *packet = base + position;
        /* struct virtio_net_hdr, little-endian */
        unsigned flags = header[0], gso_type = header[1];
        unsigned gso_size = header[4] | (unsigned)header[5] << 8;
        Py_ssize_t csum_start = header[6] | (unsigned)header[7] << 8;
        Py_ssize_t csum_offset = header[8] | (unsigned)header[9] << 8;
        if (gso_type != GSO_NONE) {
            if (count && append_run(runs, start, position, size, GSO_NONE, 0) < 0)
                goto fail;
            count = 0;
            if (append_run(runs, position, position + length, length, (int)gso_type,
                           (int)gso_size) < 0)
                goto fail;
            position += length;
            continue;
        }
        if (flags & NEEDS_CSUM) {
            Py_ssize_t field = csum_start + csum_offset;
            if (field + 2 > length || csum_start < IPV6_HEADER_BYTES) {
                dropped++;
                continue;
            }
            unsigned checksum = ~fold(sum_words(packet + csum_start, length - csum_start));
            checksum &= 0xFFFF;
            if (!checksum)
                checksum = 0xFFFF;
            packet[field] = (unsigned char)(checksum >> 8);
            packet[field + 1] = (unsigned char)checksum;
        }
        if (count && !closed && length >= IPV6_HEADER_BYTES && length <= size &&
            count < MAX_SEGMENTS && position + length - start <= MAX_SEGMENTED_BYTES &&
            memcmp(packet + 8, base + start + 8, 32) == 0) {
            count++;
            closed = length < size;
        } else {
            if (count && append_run(runs, start, position, size, GSO_NONE, 0) < 0)
                goto fail;
            start = position;
            size = length;
            count = 1;
            closed = length < IPV6_HEADER_BYTES;
        }
        position += length;
    }
    if (count && append_run(runs, start, position, size, GSO_NONE, 0) < 0)
        goto fail;
    PyBuffer_Release(&buffer);
    PyObject *result = Py_BuildValue("(nNni)", reads, runs, dropped, error);
    return result;
fail:
    Py_XDECREF(runs);
    PyBuffer_Release(&buffer);
    return NULL;
}

/* -- The Teredo server's per-source rate limiter ------------------------------------------------
 *
 * RateLimiter is the token-bucket table of teredo.core.server (SourceRateLimiter is its twin;
 * read the documentation there): O(1) per packet at any number of sources, in a table of fixed
 * size, with the same decisions. */
#define MAX_LIMITER_ENTRIES (1 << 24)

/* RateLimiter: buckets in an array of max_entries nodes, found through an open-addressing
 * index (linear probing, at most half full, deletion by backward shift: no tombstones) and
 * kept in least-recently-used order by a doubly linked list through the nodes. The index hashes
 * keys with multiply-add-shift under a random 128-bit seed (2-independent for 32-bit keys), so
 * that spoofed sources cannot be chosen to collide. */
typedef struct {
    uint32_t key;
    int32_t newer, older; /* -1: none */
    double tokens, last;
} bucket;

typedef struct {
    PyObject_HEAD
    double rate, burst;
    Py_ssize_t max_entries, count;
    int32_t newest, oldest;
    uint64_t multiplier, addend;
    int shift;
    size_t mask;
    int32_t *index; /* node number, -1: empty */
    bucket *nodes;
} RateLimiterObject;

static size_t home(const RateLimiterObject *self, uint32_t key) {
    return (size_t)((key * self->multiplier + self->addend) >> self->shift) & self->mask;
}

static void unlink_node(RateLimiterObject *self, int32_t node) {
    bucket *b = &self->nodes[node];
    if (b->newer >= 0)
        self->nodes[b->newer].older = b->older;
    else
        self->newest = b->older;
    if (b->older >= 0)
        self->nodes[b->older].newer = b->newer;
    else
        self->oldest = b->newer;
}

static void push_newest(RateLimiterObject *self, int32_t node) {
    bucket *b = &self->nodes[node];
    b->newer = -1;
    b->older = self->newest;
    if (self->newest >= 0)
        self->nodes[self->newest].newer = node;
    self->newest = node;
    if (self->oldest < 0)
        self->oldest = node;
}

/* Remove the index entry of `node` (present), shifting back the entries after it. */
static void remove_index(RateLimiterObject *self, int32_t node) {
    size_t mask = self->mask, hole = home(self, self->nodes[node].key);
    while (self->index[hole] != node)
        hole = (hole + 1) & mask;
    size_t next = (hole + 1) & mask;
    while (self->index[next] >= 0) {
        size_t wanted = home(self, self->nodes[self->index[next]].key);
        /* The entry at `next` may fill the hole when its home is not in (hole, next]. */
        if (((next - wanted) & mask) >= ((next - hole) & mask)) {
            self->index[hole] = self->index[next];
            hole = next;
        }
        next = (next + 1) & mask;
    }
    self->index[hole] = -1;
}

/* SourceRateLimiter.allow: spend one token of key's bucket if it has one. */
static int limiter_allow(RateLimiterObject *self, uint32_t key, double now) {
    size_t mask = self->mask, slot = home(self, key);
    int32_t node;
    while ((node = self->index[slot]) >= 0) {
        bucket *b = &self->nodes[node];
        if (b->key == key) {
            double elapsed = now - b->last;
            /* volatile: no fused multiply-add, so that the sum rounds as Python's does */
            volatile double earned = (elapsed > 0.0 ? elapsed : 0.0) * self->rate;
            double tokens = b->tokens + earned;
            if (!(tokens < self->burst))
                tokens = self->burst;
            int allowed = tokens >= 1.0;
            if (allowed)
                tokens -= 1.0;
            b->tokens = tokens;
            b->last = now;
            if (self->newest != node) {
                unlink_node(self, node);
                push_newest(self, node);
            }
            return allowed;
        }
        slot = (slot + 1) & mask;
    }
    if (self->count >= self->max_entries) {
        /* Full: forget the least recently used bucket (it fails open, never closed). */
        node = self->oldest;
        unlink_node(self, node);
        remove_index(self, node);
        slot = home(self, key);
        while (self->index[slot] >= 0)
            slot = (slot + 1) & mask;
    } else {
        node = (int32_t)self->count++;
    }
    self->index[slot] = node;
    bucket *b = &self->nodes[node];
    double tokens = self->burst;
    int allowed = tokens >= 1.0;
    if (allowed)
        tokens -= 1.0;
    b->key = key;
    b->tokens = tokens;
    b->last = now;
    push_newest(self, node);
    return allowed;
}

static void limiter_dealloc(RateLimiterObject *self) {
    PyMem_Free(self->index);
    PyMem_Free(self->nodes);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *limiter_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"rate", "burst", "max_entries", "seed", NULL};
    double rate, burst;
    Py_ssize_t max_entries;
    Py_buffer seed = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ddn|y*", names, &rate, &burst, &max_entries,
                                     &seed))
        return NULL;
    unsigned char random[16];
    if (seed.buf != NULL) {
        if (seed.len != 16) {
            PyBuffer_Release(&seed);
            PyErr_SetString(PyExc_ValueError, "the seed is 16 bytes");
            return NULL;
        }
        memcpy(random, seed.buf, 16);
        PyBuffer_Release(&seed);
    } else if (getrandom(random, sizeof random, 0) != (ssize_t)sizeof random) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (max_entries < 1 || max_entries > MAX_LIMITER_ENTRIES) {
        PyErr_Format(PyExc_ValueError, "max_entries must be between 1 and %d",
                     MAX_LIMITER_ENTRIES);
        return NULL;
    }
    RateLimiterObject *self = (RateLimiterObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    int bits = 1;
    while (((size_t)1 << bits) < (size_t)max_entries * 2)
        bits++;
    size_t capacity = (size_t)1 << bits;
    self->rate = rate;
    self->burst = burst;
    self->max_entries = max_entries;
    self->count = 0;
    self->newest = self->oldest = -1;
    memcpy(&self->multiplier, random, 8);
    memcpy(&self->addend, random + 8, 8);
    self->shift = 64 - bits;
    self->mask = capacity - 1;
    self->index = PyMem_Malloc(capacity * sizeof *self->index);
    self->nodes = PyMem_Malloc((size_t)max_entries * sizeof *self->nodes);
    if (self->index == NULL || self->nodes == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    memset(self->index, 0xFF, capacity * sizeof *self->index); /* all -1 */
    return (PyObject *)self;
}

static PyObject *limiter_allow_method(RateLimiterObject *self, PyObject *const *args,
                                      Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "allow(key, now) takes two arguments");
        return NULL;
    }
    unsigned long long key = PyLong_AsUnsignedLongLong(args[0]);
    if (key == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (key > 0xFFFFFFFFull) {
        PyErr_SetString(PyExc_ValueError, "the key is an IPv4 address: 0 to 2**32 - 1");
        return NULL;
    }
    double now = PyFloat_AsDouble(args[1]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(limiter_allow(self, (uint32_t)key, now));
}

static Py_ssize_t limiter_length(RateLimiterObject *self) { return self->count; }

static PyObject *limiter_get_double(RateLimiterObject *self, void *closure) {
    return PyFloat_FromDouble(closure ? self->burst : self->rate);
}

static int limiter_set_double(RateLimiterObject *self, PyObject *value, void *closure) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete a rate limiter setting");
        return -1;
    }
    double number = PyFloat_AsDouble(value);
    if (number == -1.0 && PyErr_Occurred())
        return -1;
    if (closure)
        self->burst = number;
    else
        self->rate = number;
    return 0;
}

static PyObject *limiter_get_max_entries(RateLimiterObject *self, void *closure) {
    return PyLong_FromSsize_t(self->max_entries);
}

static PyGetSetDef limiter_getset[] = {
    {"rate", (getter)limiter_get_double, (setter)limiter_set_double, "tokens earned per second",
     NULL},
    {"burst", (getter)limiter_get_double, (setter)limiter_set_double, "tokens a bucket holds",
     (void *)1},
    {"max_entries", (getter)limiter_get_max_entries, NULL, "buckets the table holds", NULL},
    {NULL},
};

static PyMethodDef limiter_methods[] = {
    {"allow", (PyCFunction)(void (*)(void))limiter_allow_method, METH_FASTCALL,
     "Spend one token of the key's bucket if it has one."},
    {NULL},
};

static PySequenceMethods limiter_sequence = {.sq_length = (lenfunc)limiter_length};

static PyTypeObject RateLimiterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "teredo._accel.RateLimiter",
    .tp_basicsize = sizeof(RateLimiterObject),
    .tp_dealloc = (destructor)limiter_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Token buckets per IPv4 address in a bounded LRU table (see SourceRateLimiter).",
    .tp_new = limiter_new,
    .tp_methods = limiter_methods,
    .tp_getset = limiter_getset,
    .tp_as_sequence = &limiter_sequence,
};

static PyMethodDef methods[] = {
    {"ones_complement_sum", ones_complement_sum, METH_O,
     "The folded 16-bit one's complement sum of a buffer (RFC 1071)."},
    {"coalesce_segments", coalesce_segments, METH_VARARGS,
     "Join the datagrams at the start of a buffer into one super-packet: (count, length)."},
    {"segment", segment, METH_VARARGS,
     "Cut an IPv6 TCP or UDP super-packet into segments, back to back: (count, size, end)."},
    {"read_runs", read_runs, METH_VARARGS,
     "Read a TUN queue into a buffer, grouped into runs: (reads, runs, dropped, error)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "teredo._accel", "The data path's hot functions in C (see teredo.adapters.accel).", -1, methods,
};

PyMODINIT_FUNC PyInit__accel(void) {
    if (PyType_Ready(&RateLimiterType) < 0)
        return NULL;
    PyObject *created = PyModule_Create(&module);
    if (created == NULL)
        return NULL;
    Py_INCREF(&RateLimiterType);
    if (PyModule_AddObject(created, "RateLimiter", (PyObject *)&RateLimiterType) < 0) {
        Py_DECREF(&RateLimiterType);
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
