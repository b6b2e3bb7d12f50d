/* teredo.runtime.tun_runs.read_runs in C: read a TUN queue and group its packets into runs.
 *
 * The same function as python_read_runs in teredo/runtime/tun_runs.py (read its documentation
 * there), without a Python round trip per packet; the tests check one against the other. The
 * constants below are those of teredo.offload and teredo.runtime.udp.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

#define VNET_HEADER_BYTES 10
#define IPV6_HEADER_BYTES 40
#define READ_BYTES 65536
#define NEEDS_CSUM 0x01
#define GSO_NONE 0
#define MAX_SEGMENTS 64
#define MAX_SEGMENTED_BYTES 65507

/* The folded 16-bit one's complement sum (RFC 1071), as teredo.offload.ones_complement_sum. */
static unsigned ones_complement_sum(const unsigned char *p, Py_ssize_t n) {
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
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (unsigned)sum;
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
    /* The open run: count packets of size bytes at base[start:position], for one destination. */
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
            unsigned checksum = ~ones_complement_sum(packet + csum_start, length - csum_start);
            checksum &= 0xFFFF;
            if (!checksum)
                checksum = 0xFFFF;
            packet[field] = (unsigned char)(checksum >> 8);
            packet[field + 1] = (unsigned char)checksum;
        }
        if (count && !closed && length >= IPV6_HEADER_BYTES && length <= size &&
            count < MAX_SEGMENTS && position + length - start <= MAX_SEGMENTED_BYTES &&
            memcmp(packet + 24, base + start + 24, 16) == 0) {
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

static PyMethodDef methods[] = {
    {"read_runs", read_runs, METH_VARARGS,
     "Read a TUN queue into a buffer, grouped into runs: (reads, runs, dropped, error)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "teredo.runtime._tun_runs",
    "teredo.runtime.tun_runs.read_runs in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__tun_runs(void) { return PyModule_Create(&module); }
