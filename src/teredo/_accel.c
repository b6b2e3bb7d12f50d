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
 * The Teredo server's batch path is here too: its rate limiter, the Router Solicitations it
 * answers from a template, and its batches on the wire (sections at the end).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <sys/uio.h>
#include <sys/socket.h>
#include <sys/random.h>
#include <netinet/in.h>

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

/* Raise teredo.core.offload.OffloadError (looked up when needed, not at import). */
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

/* What may join a super-packet: see _joinable in teredo/core/offload.py. */
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

/* -- The Teredo server's Router Solicitations, answered from a template ---------------------------
 *
 * answer_solicitations decides for each datagram of a batch and writes the RAs for the common
 * Router Solicitations; python_answer_solicitations in teredo/core/server.py is its twin and
 * documents the batch's layout, the verdicts and the order of the checks. */
#define TEREDO_PORT 3544           /* RFC 4380 §2.7 */
#define RECORD_BYTES 12            /* struct record, teredo.core.server.RECORD ("=IIHH") */
#define MAX_BATCH 256              /* teredo.core.server.MAX_BATCH */
#define AUTH_BYTES 13              /* a nonce-only authentication header, RFC 4380 §5.1.1 */
#define ORIGIN_BYTES 8             /* an origin indication, RFC 4380 §5.1.1 */
#define RS_BYTES 48                /* IPv6 header + an 8-byte RS without options */
#define ICMPV6 58
#define ROUTER_SOLICITATION 133

/* Verdicts, teredo.core.server.Verdict */
enum { SLOW = 0, ANSWERED = 1, LOOP = 2, NOT_GLOBAL_SOURCE = 3, BAD_ROUTER_SOLICITATION = 4,
       RATE_LIMITED = 5 };

typedef struct {
    uint32_t address; /* IPv4, host order */
    uint32_t length;
    uint16_t port;
    uint16_t tag;     /* the verdict of a received datagram; the socket of an answer */
} record;

_Static_assert(sizeof(record) == RECORD_BYTES, "struct record is \"=IIHH\"");

static void get_record(const unsigned char *records, Py_ssize_t index, record *out) {
    memcpy(out, records + index * RECORD_BYTES, RECORD_BYTES);
}

static void put_record(unsigned char *records, Py_ssize_t index, const record *in) {
    memcpy(records + index * RECORD_BYTES, in, RECORD_BYTES);
}

/* RFC 4380 §5.2.4 (rule 3 of §5.3.1): the (network, mask) pairs of the plan, host order. */
static int global_ipv4(uint32_t address, const uint32_t *pairs, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++)
        if ((address & pairs[2 * i + 1]) == pairs[2 * i])
            return 0;
    return 1;
}

/* limiter.allow(address, now) of a limiter of another type: 1, 0, or -1 with an exception. */
static int call_allow(PyObject *allow, uint32_t address, double now) {
    PyObject *result = PyObject_CallFunction(allow, "kd", (unsigned long)address, now);
    if (result == NULL)
        return -1;
    int allowed = PyObject_IsTrue(result);
    Py_DECREF(result);
    return allowed;
}

static const unsigned char ALL_ROUTERS[16] = {0xff, 0x02, 0, 0, 0, 0, 0, 0,
                                              0,    0,    0, 0, 0, 0, 0, 2};

/* answer_solicitations(data, slot, records, count, plan, limiter, now, local, out, out_slot,
 *                      out_records, slow)
 * -> (answers, cone, loop, not_global_source, bad_router_solicitation, rate_limited, slow) */
static PyObject *answer_solicitations(PyObject *module, PyObject *args) {
    Py_buffer data, records, out, out_records;
    Py_ssize_t slot, count, out_slot;
    PyObject *plan, *limiter, *slow;
    double now;
    int local;
    if (!PyArg_ParseTuple(args, "y*nw*nO!Odiw*nw*O", &data, &slot, &records, &count,
                          &PyTuple_Type, &plan, &limiter, &now, &local, &out, &out_slot,
                          &out_records, &slow))
        return NULL;
    PyObject *result = NULL, *allow = NULL;
    const char *template_text;
    Py_ssize_t template_bytes, pairs_bytes;
    unsigned long base, primary, secondary;
    int allow_private;
    const char *pairs_text;
    if (!PyArg_ParseTuple(plan, "y#kkkpy#", &template_text, &template_bytes, &base, &primary,
                          &secondary, &allow_private, &pairs_text, &pairs_bytes))
        goto done;
    if (template_bytes < AUTH_BYTES + ORIGIN_BYTES + 44 || template_bytes > out_slot ||
        pairs_bytes % 8) {
        PyErr_SetString(PyExc_ValueError, "not a solicitation plan");
        goto done;
    }
    if (slot <= 0 || out_slot <= 0 || count < 0 || count > MAX_BATCH ||
        count > data.len / slot || count > records.len / RECORD_BYTES ||
        count > out.len / out_slot || count > out_records.len / RECORD_BYTES) {
        PyErr_SetString(PyExc_ValueError, "batch buffers too small for the count");
        goto done;
    }
    if (local != 0 && local != 1) {
        PyErr_SetString(PyExc_ValueError, "local must be 0 (primary) or 1 (secondary)");
        goto done;
    }
    uint32_t pairs[64];
    Py_ssize_t pair_count = pairs_bytes / 8;
    if (pair_count > 32) {
        PyErr_SetString(PyExc_ValueError, "too many non-global networks");
        goto done;
    }
    memcpy(pairs, pairs_text, (size_t)pairs_bytes);
    const unsigned char *template = (const unsigned char *)template_text;
    const unsigned char *in = data.buf;
    unsigned char *tags = records.buf, *answers_out = out.buf, *answer_records = out_records.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        record r;
        get_record(tags, i, &r);
        if (r.length > (uint64_t)slot) {
            PyErr_SetString(PyExc_ValueError, "a datagram is longer than its slot");
            goto done;
        }
    }
    /* Our own limiter is called directly; any other object through its allow method. */
    RateLimiterObject *buckets = NULL;
    if (PyObject_TypeCheck(limiter, &RateLimiterType))
        buckets = (RateLimiterObject *)limiter;
    else if (limiter != Py_None && (allow = PyObject_GetAttrString(limiter, "allow")) == NULL)
        goto done;
    if (!PyCallable_Check(slow)) {
        PyErr_SetString(PyExc_TypeError, "slow must be callable");
        goto done;
    }
    Py_ssize_t answers = 0, cone = 0, handed = 0, drops[6] = {0};
    uint32_t own[2] = {(uint32_t)primary, (uint32_t)secondary};
    for (Py_ssize_t i = 0; i < count; i++) {
        record r;
        get_record(tags, i, &r);
        const unsigned char *p = in + i * slot;
        const unsigned char *ip = NULL;
        int verdict = SLOW, auth = 0;
        if ((r.address == own[0] || r.address == own[1]) && r.port == TEREDO_PORT) {
            verdict = LOOP; /* first of all checks: never answer our own port */
        } else {
            if (r.length == AUTH_BYTES + RS_BYTES && p[0] == 0 && p[1] == 1 && p[2] == 0 &&
                p[3] == 0) {
                ip = p + AUTH_BYTES;
                auth = 1;
            } else if (r.length == RS_BYTES) {
                ip = p;
            }
            if (ip != NULL && ip[0] >> 4 == 6 && ip[4] == 0 && ip[5] == 8 && ip[6] == ICMPV6 &&
                ip[8] == 0xfe && (ip[9] & 0xc0) == 0x80 && memcmp(ip + 24, ALL_ROUTERS, 16) == 0) {
                if (!allow_private && !global_ipv4(r.address, pairs, pair_count))
                    verdict = NOT_GLOBAL_SOURCE;
                else if (ip[7] != 255 || ip[40] != ROUTER_SOLICITATION || ip[41] != 0 ||
                         fold(sum_words(ip + 8, 32) + 8 + ICMPV6 + sum_words(ip + 40, 8)) != 0xFFFF)
                    verdict = BAD_ROUTER_SOLICITATION;
                else {
                    int allowed = 1;
                    if (buckets != NULL)
                        allowed = limiter_allow(buckets, r.address, now);
                    else if (allow != NULL &&
                             (allowed = call_allow(allow, r.address, now)) < 0)
                        goto done;
                    verdict = allowed ? ANSWERED : RATE_LIMITED;
                }
            }
        }
        r.tag = (uint16_t)verdict;
        put_record(tags, i, &r);
        if (verdict == SLOW) {
            /* In arrival order, so that the limiter sees the datagrams as one by one. */
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL)
                goto done;
            PyObject *called = PyObject_CallOneArg(slow, index);
            Py_DECREF(index);
            if (called == NULL)
                goto done;
            Py_DECREF(called);
            handed++;
            continue;
        }
        if (verdict != ANSWERED) {
            drops[verdict]++;
            continue;
        }
        /* RFC 4380 §5.3.2: the template with the nonce (§5.2.2, confirmation 0), the origin
         * indication of the RS's source, the RS's IPv6 source as destination, the checksum. */
        const unsigned char *from = template + (auth ? 0 : AUTH_BYTES);
        Py_ssize_t length = template_bytes - (auth ? 0 : AUTH_BYTES);
        unsigned char *o = answers_out + answers * out_slot;
        memcpy(o, from, (size_t)length);
        if (auth)
            memcpy(o + 4, p + 4, 8);
        unsigned char *origin = o + (auth ? AUTH_BYTES : 0);
        put16(origin + 2, r.port ^ 0xFFFFu);
        put32(origin + 4, r.address ^ 0xFFFFFFFFu);
        unsigned char *ra = origin + ORIGIN_BYTES;
        memcpy(ra + 24, ip + 8, 16);
        unsigned folded = fold((uint64_t)base + sum_words(ip + 8, 16));
        put16(ra + IPV6_HEADER_BYTES + 2, 0xFFFF - folded);
        /* RFC 4380 §5.3.2: C=1 in the RS's source -> from the other address. */
        int cone_bit = (ip[16] & 0x80) != 0;
        record a = {r.address, (uint32_t)length, r.port, (uint16_t)(cone_bit ? !local : local)};
        put_record(answer_records, answers, &a);
        answers++;
        cone += cone_bit;
    }
    result = Py_BuildValue("(nnnnnnn)", answers, cone, drops[LOOP], drops[NOT_GLOBAL_SOURCE],
                           drops[BAD_ROUTER_SOLICITATION], drops[RATE_LIMITED], handed);
done:
    Py_XDECREF(allow);
    PyBuffer_Release(&data);
    PyBuffer_Release(&records);
    PyBuffer_Release(&out);
    PyBuffer_Release(&out_records);
    return result;
}

/* -- The Teredo server's batches on the wire ------------------------------------------------------
 *
 * recv_batch and send_batch move a batch with recvmmsg and sendmmsg; python_recv_batch and
 * python_send_batch in teredo/adapters/udp.py are their twins. */
/* recv_batch(sock, data, slot, records, max_count) -> (count, error) */
static PyObject *recv_batch(PyObject *module, PyObject *args) {
    PyObject *sock;
    Py_buffer data, records;
    Py_ssize_t slot, max_count;
    if (!PyArg_ParseTuple(args, "Ow*nw*n", &sock, &data, &slot, &records, &max_count))
        return NULL;
    PyObject *result = NULL;
    int fd = PyObject_AsFileDescriptor(sock);
    if (fd < 0)
        goto done;
    if (slot <= 0 || max_count < 0 || max_count > MAX_BATCH || max_count > data.len / slot ||
        max_count > records.len / RECORD_BYTES) {
        PyErr_SetString(PyExc_ValueError, "batch buffers too small for the count");
        goto done;
    }
    struct mmsghdr messages[MAX_BATCH];
    struct iovec vectors[MAX_BATCH];
    struct sockaddr_in sources[MAX_BATCH];
    for (Py_ssize_t i = 0; i < max_count; i++) {
        vectors[i].iov_base = (unsigned char *)data.buf + i * slot;
        vectors[i].iov_len = (size_t)slot;
        memset(&messages[i], 0, sizeof messages[i]);
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
        messages[i].msg_hdr.msg_name = &sources[i];
        messages[i].msg_hdr.msg_namelen = sizeof sources[i];
    }
    Py_ssize_t got = 0;
    int error = 0;
    while (got < max_count) {
        int r = recvmmsg(fd, messages + got, (unsigned)(max_count - got), MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0)
                    goto done;
                continue;
            }
            error = errno;
            break;
        }
        for (int k = 0; k < r; k++) {
            struct sockaddr_in *source = &sources[got + k];
            record a = {0, messages[got + k].msg_len, 0, 0};
            if (messages[got + k].msg_hdr.msg_namelen >= sizeof *source &&
                source->sin_family == AF_INET) {
                a.address = ntohl(source->sin_addr.s_addr);
                a.port = ntohs(source->sin_port);
            }
            put_record(records.buf, got + k, &a);
        }
        got += r;
        if (got < max_count && r > 0) {
            /* A short read: recvmmsg stopped at an empty queue (an error after some datagrams
             * is kept by the socket for the next read), so spare the call that would say so. */
            error = EAGAIN;
            break;
        }
    }
    result = Py_BuildValue("(ni)", got, error);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&records);
    return result;
}

/* send_batch(sock, out, slot, records, count, which) -> (sent, eagain, enobufs, errors) */
static PyObject *send_batch(PyObject *module, PyObject *args) {
    PyObject *sock;
    Py_buffer out, records;
    Py_ssize_t slot, count;
    int which;
    if (!PyArg_ParseTuple(args, "Oy*ny*ni", &sock, &out, &slot, &records, &count, &which))
        return NULL;
    PyObject *result = NULL;
    int fd = PyObject_AsFileDescriptor(sock);
    if (fd < 0)
        goto done;
    if (slot <= 0 || count < 0 || count > MAX_BATCH || count > out.len / slot ||
        count > records.len / RECORD_BYTES) {
        PyErr_SetString(PyExc_ValueError, "batch buffers too small for the count");
        goto done;
    }
    struct mmsghdr messages[MAX_BATCH];
    struct iovec vectors[MAX_BATCH];
    struct sockaddr_in destinations[MAX_BATCH];
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        record a;
        get_record(records.buf, i, &a);
        if (a.tag != which)
            continue;
        if (a.length > (uint64_t)slot) {
            PyErr_SetString(PyExc_ValueError, "an answer is longer than its slot");
            goto done;
        }
        vectors[n].iov_base = (unsigned char *)out.buf + i * slot;
        vectors[n].iov_len = a.length;
        memset(&destinations[n], 0, sizeof destinations[n]);
        destinations[n].sin_family = AF_INET;
        destinations[n].sin_addr.s_addr = htonl(a.address);
        destinations[n].sin_port = htons(a.port);
        memset(&messages[n], 0, sizeof messages[n]);
        messages[n].msg_hdr.msg_iov = &vectors[n];
        messages[n].msg_hdr.msg_iovlen = 1;
        messages[n].msg_hdr.msg_name = &destinations[n];
        messages[n].msg_hdr.msg_namelen = sizeof destinations[n];
        n++;
    }
    Py_ssize_t done_count = 0, sent = 0, eagain = 0, enobufs = 0, errors = 0;
    while (done_count < n) {
        int r = sendmmsg(fd, messages + done_count, (unsigned)(n - done_count), MSG_DONTWAIT);
        if (r > 0) {
            done_count += r;
            sent += r;
            continue;
        }
        if (r < 0 && errno == EINTR) {
            if (PyErr_CheckSignals() < 0)
                goto done;
            continue;
        }
        /* This datagram is lost, as UdpSocket.send loses it: count why, go on with the next. */
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            eagain++;
        else if (r < 0 && errno == ENOBUFS)
            enobufs++;
        else
            errors++;
        done_count++;
    }
    result = Py_BuildValue("(nnnn)", sent, eagain, enobufs, errors);
done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&records);
    return result;
}

static PyMethodDef methods[] = {
    {"ones_complement_sum", ones_complement_sum, METH_O,
     "The folded 16-bit one's complement sum of a buffer (RFC 1071)."},
    {"coalesce_segments", coalesce_segments, METH_VARARGS,
     "Join the datagrams at the start of a buffer into one super-packet: (count, length)."},
    {"segment", segment, METH_VARARGS,
     "Cut an IPv6 TCP or UDP super-packet into segments, back to back: (count, size, end)."},
    {"read_runs", read_runs, METH_VARARGS,
     "Read a TUN queue into a buffer, grouped into runs: (reads, runs, dropped, error)."},
    {"answer_solicitations", answer_solicitations, METH_VARARGS,
     "Answer the batch's well-formed Router Solicitations from the server's template."},
    {"recv_batch", recv_batch, METH_VARARGS,
     "Receive up to max_count datagrams with recvmmsg into slots: (count, error)."},
    {"send_batch", send_batch, METH_VARARGS,
     "Send the answers for one socket with sendmmsg: (sent, eagain, enobufs, errors)."},
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
