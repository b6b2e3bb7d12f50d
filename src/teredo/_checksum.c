/* The one's complement sum of RFC 1071 in C: the optional accelerator of teredo.offload.
 *
 * teredo.offload sums every segment it cuts from a TCP super-packet; in pure Python that is
 * int.from_bytes(...) % 0xFFFF, about 3 us for 1280 bytes, more than the rest of the data path.
 * This module does the same sum in ~0.1 us. It is optional: when it is not built (no compiler),
 * teredo.offload uses the Python sum, which the tests check against this one.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ones_complement_sum(data) -> int: the folded 16-bit sum of data read as big-endian 16-bit
 * words (an odd last byte padded with zero); 0 only when every byte is zero. */
static PyObject *ones_complement_sum(PyObject *module, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *p = view.buf;
    Py_ssize_t n = view.len;
    uint64_t sum = 0;
    /* Sum 32-bit big-endian words into 64 bits: no overflow below 2**32 words. */
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
    PyBuffer_Release(&view);
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return PyLong_FromUnsignedLong((unsigned long)sum);
}

static PyMethodDef methods[] = {
    {"ones_complement_sum", ones_complement_sum, METH_O,
     "The folded 16-bit one's complement sum of a buffer (RFC 1071)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "teredo._checksum", "RFC 1071 sums in C for teredo.offload.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__checksum(void) { return PyModule_Create(&module); }
