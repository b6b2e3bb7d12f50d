/*
 * flood: the benchmarks' traffic generator, for the teredo lab only.
 *
 * The benchmarks (benchmarks/internet.py, benchmarks/attack.py) compile this file with
 * `gcc -O2` into a temporary directory and run it with `ip netns exec` inside a lab namespace:
 * the generator node "gen" (which owns the fake-client range, 100.64.0.0/10 by default) or the
 * native host "v6". It refuses to run outside a named network namespace (/run/netns/NAME), and
 * it sends only to lab addresses: IPv4 destinations in 198.51.100.0/24 or 203.0.113.0/24, IPv6
 * destinations in 2001:db8::/32 or Teredo addresses (2001::/32) of its own fake clients.
 *
 * Fake client i (i = 0 .. N-1, counted from -o FIRST) is a self-consistent Teredo client
 * (RFC 4380 §4): its mapping is
 *     address = range base + 1 + (i >> 2)        (four clients share an address, as behind
 *     port    = 1024 + 16000 * (i & 3) + (i >> 2) % 16000     a carrier-grade NAT)
 * and its Teredo address is 2001:0:SERVER:FLAGS:PORT ^ 0xffff:ADDRESS ^ 0xffffffff, with
 * FLAGS the RFC 5991 §3.1 random bits (mask 0x3cff) taken from a hash of i. Every datagram it
 * "sends" leaves with exactly that outer source address and port (raw IPv4, IP_HDRINCL), so a
 * relay or server sees a consistent client.
 *
 * Modes (-m):
 *   teredo  UDP/IPv4 from fake clients to -R (the relay), each carrying one IPv6/UDP packet
 *           from the client's Teredo address to -d (the native host), UDP port -p, 64 bytes
 *           of payload; round-robin over the N clients.
 *   bubble  the same clients sending bubbles (IPv6 header only, next header 59, payload
 *           length 0, RFC 4380 §2.8) from their Teredo address to -d, through -R.
 *   native  IPv6/UDP, 64 bytes of payload, from -s (the native host) to the Teredo addresses
 *           of the N fake clients, round-robin (raw IPv6).
 *   plain   IPv6/UDP, 64 bytes of payload, from -s to -d: no Teredo at all (raw IPv6), to
 *           measure what the same path forwards without a tunnel.
 *   rs      Router Solicitations as a client qualifying sends them (RFC 4380 §5.2.1): a
 *           nonce-only authentication header (RFC 4380 §5.1.1), then IPv6 from
 *           fe80::ffff:ffff:ffff to ff02::2, hop limit 255, ICMPv6 type 133, to -R (the
 *           server's primary address, port 3544), from the mappings of N fake clients
 *           (default 65536), a new nonce each.
 *   show    print the N fake clients (index, mapped address, port, Teredo address), send
 *           nothing: lets tests check the addresses against an independent codec.
 * Every checksum is valid (IPv4 header by the kernel; UDP over IPv4 and IPv6, ICMPv6 here).
 *
 * Options:
 *   -m MODE        one of the modes above (required)
 *   -n N           fake clients, destinations or sources (default 1; rs: 65536)
 *   -o FIRST       index of the first fake client (default 0)
 *   -r PPS         packets per second, 0 = as fast as it can (default 0)
 *   -c COUNT       stop after COUNT packets (default: no count bound)
 *   -t SECONDS     stop after SECONDS (default 10, at most 3600; both bounds may be given)
 *   -R ADDR[:PORT] IPv4 destination of Teredo datagrams (relay, or server for rs; port
 *                  default 3545, rs 3544)
 *   -S ADDR        the Teredo server embedded in the fake clients' addresses (required for
 *                  teredo, bubble, native, rs)
 *   -F ADDR/LEN    the fake-client range, inside 100.64.0.0/10 (default 100.64.0.0/10)
 *   -d IPV6        IPv6 destination (teredo, bubble: inner; plain: the packet's)
 *   -s IPV6        IPv6 source (native, plain)
 *   -p PORT        UDP destination port of the IPv6/UDP packets (default 9, discard)
 *   -b BATCH       datagrams per sendmmsg call (default 64, at most 1024)
 *
 * At the end it prints one line on stdout:
 *   flood mode=M sent=S failed=F seconds=T pps=P clients=N first=O
 * (failed: datagrams the kernel refused, e.g. ENOBUFS; they are skipped, never retried).
 * SIGINT or SIGTERM ends the run early with the same line. Errors: one sentence on stderr,
 * exit status 2.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD 64           /* bytes of UDP payload in teredo, native and plain packets */
#define MAX_BATCH 1024
#define SLOT 256             /* buffer per datagram: the largest is 20 + 8 + 40 + 8 + 64 */
#define TEREDO_PORT 3544     /* RFC 4380 §2.7 */
#define RELAY_PORT 3545      /* the lab's relay */
#define SOURCE_PORT 40000    /* inner UDP source port */
#define MAX_SECONDS 3600.0

enum mode { TEREDO, BUBBLE, NATIVE, PLAIN, RS, SHOW };

static volatile sig_atomic_t stopping;

static void on_signal(int signum) {
    (void)signum;
    stopping = 1;
}

static void fail(const char *message) {
    fprintf(stderr, "flood: %s\n", message);
    exit(2);
}

/* -- fake clients ---------------------------------------------------------------------- */

struct config {
    enum mode mode;
    uint64_t clients, first, count;
    double rate, seconds;
    uint32_t range_base, range_hosts; /* host order */
    uint32_t server;                  /* network order */
    struct sockaddr_in teredo_to;
    struct in6_addr source6, dest6;
    int have_server, have_to, have_source6, have_dest6;
    uint16_t port;
    unsigned batch;
};

struct client {
    uint32_t address; /* host order */
    uint16_t port;
    uint8_t teredo[16];
};

static void make_client(const struct config *c, uint64_t i, struct client *out) {
    uint64_t k = i >> 2;
    uint16_t flags = (uint16_t)(((i * 2654435761u) >> 16) & 0x3cff); /* RFC 5991 §3.1 */
    out->address = c->range_base + 1 + (uint32_t)(k % c->range_hosts);
    out->port = (uint16_t)(1024 + 16000 * (i & 3) + k % 16000);
    uint8_t *t = out->teredo;
    t[0] = 0x20; t[1] = 0x01; t[2] = 0; t[3] = 0;             /* 2001::/32, RFC 4380 §2.6 */
    memcpy(t + 4, &c->server, 4);
    t[8] = (uint8_t)(flags >> 8); t[9] = (uint8_t)flags;
    uint16_t port = (uint16_t)~out->port;                    /* RFC 4380 §4: obfuscated */
    t[10] = (uint8_t)(port >> 8); t[11] = (uint8_t)port;
    uint32_t address = ~out->address;
    t[12] = (uint8_t)(address >> 24); t[13] = (uint8_t)(address >> 16);
    t[14] = (uint8_t)(address >> 8); t[15] = (uint8_t)address;
}

/* -- checksums (RFC 1071) ------------------------------------------------------------- */

static uint32_t sum16(const uint8_t *data, size_t length, uint32_t sum) {
    for (; length > 1; data += 2, length -= 2)
        sum += (uint32_t)data[0] << 8 | data[1];
    if (length)
        sum += (uint32_t)data[0] << 8;
    return sum;
}

static uint16_t fold(uint32_t sum) {
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

/* An IPv6 packet at p: header, then `length` bytes of upper-layer data already in place
   (UDP or ICMPv6 with a zero checksum field at `checksum_at`, or nothing). */
static void ipv6_header(uint8_t *p, const uint8_t *source, const uint8_t *dest,
                        uint8_t next_header, uint16_t length, uint8_t hop_limit) {
    memset(p, 0, 8);
    p[0] = 0x60;
    put16(p + 4, length);
    p[6] = next_header;
    p[7] = hop_limit;
    memcpy(p + 8, source, 16);
    memcpy(p + 24, dest, 16);
}

static void ipv6_checksum(uint8_t *packet, size_t checksum_at) {
    uint16_t length = (uint16_t)(packet[4] << 8 | packet[5]);
    uint32_t sum = sum16(packet + 8, 32, 0) + length + packet[6];
    uint8_t *upper = packet + 40;
    upper[checksum_at] = upper[checksum_at + 1] = 0;
    uint16_t value = fold(sum16(upper, length, sum));
    if (packet[6] == IPPROTO_UDP && value == 0)
        value = 0xffff; /* RFC 768: zero means "no checksum" */
    put16(upper + checksum_at, value);
}

static size_t udp6_packet(uint8_t *p, const uint8_t *source, const uint8_t *dest,
                          uint16_t dport, uint64_t sequence) {
    uint8_t *udp = p + 40;
    put16(udp, SOURCE_PORT);
    put16(udp + 2, dport);
    put16(udp + 4, 8 + PAYLOAD);
    memset(udp + 8, 0xa5, PAYLOAD);
    memcpy(udp + 8, &sequence, sizeof sequence); /* a sequence number, as iperf3 sends */
    ipv6_header(p, source, dest, IPPROTO_UDP, 8 + PAYLOAD, 64);
    ipv6_checksum(p, 6);
    return 40 + 8 + PAYLOAD;
}

/* IPv4 (20 bytes, the kernel fills the header checksum) + UDP around `inner` bytes already
   written at p + 28. */
static size_t udp4_datagram(uint8_t *p, uint32_t source, uint16_t sport, uint32_t dest,
                            uint16_t dport, size_t inner) {
    uint16_t udp_length = (uint16_t)(8 + inner);
    memset(p, 0, 20);
    p[0] = 0x45;
    put16(p + 2, (uint16_t)(20 + udp_length));
    p[8] = 64;
    p[9] = IPPROTO_UDP;
    uint32_t s = htonl(source);
    memcpy(p + 12, &s, 4);
    memcpy(p + 16, &dest, 4);
    uint8_t *udp = p + 20;
    put16(udp, sport);
    put16(udp + 2, dport);
    put16(udp + 4, udp_length);
    udp[6] = udp[7] = 0;
    uint32_t sum = sum16(p + 12, 8, 0) + IPPROTO_UDP + udp_length;
    uint16_t value = fold(sum16(udp, udp_length, sum));
    put16(udp + 6, value ? value : 0xffff);
    return 20 + udp_length;
}

static const uint8_t RS_SOURCE[16] = {0xfe, 0x80, 0, 0, 0, 0, 0, 0,
                                      0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
static const uint8_t ALL_ROUTERS[16] = {0xff, 0x02, 0, 0, 0, 0, 0, 0,
                                        0, 0, 0, 0, 0, 0, 0, 2};

/* One datagram for packet number `sequence` into `p`; its length. */
static size_t build(const struct config *c, uint64_t sequence, uint8_t *p,
                    struct sockaddr_in6 *to6) {
    struct client client;
    uint64_t index = c->first + sequence % c->clients;
    uint8_t *inner = p + 28;
    size_t length;
    switch (c->mode) {
    case TEREDO:
        make_client(c, index, &client);
        length = udp6_packet(inner, client.teredo, c->dest6.s6_addr, c->port, sequence);
        return udp4_datagram(p, client.address, client.port, c->teredo_to.sin_addr.s_addr,
                             ntohs(c->teredo_to.sin_port), length);
    case BUBBLE:
        make_client(c, index, &client);
        ipv6_header(inner, client.teredo, c->dest6.s6_addr, 59, 0, 64); /* RFC 4380 §2.8 */
        return udp4_datagram(p, client.address, client.port, c->teredo_to.sin_addr.s_addr,
                             ntohs(c->teredo_to.sin_port), 40);
    case RS: {
        make_client(c, index, &client);
        /* RFC 4380 §5.1.1: indicator 0x0001, id length 0, auth length 0, nonce, confirm. */
        inner[0] = 0; inner[1] = 1; inner[2] = 0; inner[3] = 0;
        uint64_t nonce = sequence * 0x9e3779b97f4a7c15ull ^ 0x54455245444f2121ull;
        memcpy(inner + 4, &nonce, 8);
        inner[12] = 0;
        uint8_t *ipv6 = inner + 13;
        uint8_t *icmp = ipv6 + 40;
        memset(icmp, 0, 8);
        icmp[0] = 133; /* RFC 4861 §4.1: Router Solicitation, no options (RFC 4380 §5.2.1) */
        ipv6_header(ipv6, RS_SOURCE, ALL_ROUTERS, 58, 8, 255);
        ipv6_checksum(ipv6, 2);
        return udp4_datagram(p, client.address, client.port, c->teredo_to.sin_addr.s_addr,
                             ntohs(c->teredo_to.sin_port), 13 + 40 + 8);
    }
    case NATIVE:
        make_client(c, index, &client);
        memcpy(to6->sin6_addr.s6_addr, client.teredo, 16);
        return udp6_packet(p, c->source6.s6_addr, client.teredo, c->port, sequence);
    case PLAIN:
        return udp6_packet(p, c->source6.s6_addr, c->dest6.s6_addr, c->port, sequence);
    case SHOW:
        break;
    }
    return 0;
}

/* -- where it may run and send -------------------------------------------------------- */

/* Only inside a named network namespace (/run/netns/NAME, as the lab and `ip netns` make
   them): never from the namespace the machine's own interfaces live in. */
static void check_namespace(void) {
    struct stat mine, other;
    char path[512];
    if (stat("/proc/self/ns/net", &mine) != 0)
        fail("cannot read /proc/self/ns/net; run it inside a lab namespace "
             "(ip netns exec LAB-gen ...)");
    DIR *directory = opendir("/run/netns");
    struct dirent *entry;
    while (directory && (entry = readdir(directory)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/run/netns/%s", entry->d_name);
        if (stat(path, &other) == 0 && other.st_ino == mine.st_ino &&
            other.st_dev == mine.st_dev) {
            closedir(directory);
            return;
        }
    }
    if (directory)
        closedir(directory);
    fail("refusing to send outside a named network namespace; run it inside a lab "
         "namespace (ip netns exec LAB-gen ...)");
}

static int lab_ipv4(uint32_t address /* network order */) {
    uint32_t a = ntohl(address);
    return (a >> 8) == 0xc63364 /* 198.51.100/24 */ || (a >> 8) == 0xcb0071; /* 203.0.113/24 */
}

static int lab_ipv6(const struct in6_addr *address) {
    const uint8_t *b = address->s6_addr;
    return b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8; /* 2001:db8::/32 */
}

/* -- options ---------------------------------------------------------------------------- */

static double number(const char *text, const char *what) {
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    if (errno || end == text || *end || value < 0) {
        char message[160];
        snprintf(message, sizeof message, "%s must be a non-negative number, not '%s'", what,
                 text);
        fail(message);
    }
    return value;
}

static void ipv6_option(const char *text, struct in6_addr *out, int *have) {
    if (inet_pton(AF_INET6, text, out) != 1) {
        char message[160];
        snprintf(message, sizeof message, "'%s' is not an IPv6 address", text);
        fail(message);
    }
    *have = 1;
}

static void parse(int argc, char **argv, struct config *c) {
    const char *mode = NULL;
    int opt, have_count = 0, have_seconds = 0;
    char *range = NULL;
    memset(c, 0, sizeof *c);
    c->clients = 0;
    c->port = 9;
    c->batch = 64;
    c->seconds = 10;
    while ((opt = getopt(argc, argv, "m:n:o:r:c:t:R:S:F:d:s:p:b:")) != -1) {
        switch (opt) {
        case 'm': mode = optarg; break;
        case 'n': c->clients = (uint64_t)number(optarg, "-n"); break;
        case 'o': c->first = (uint64_t)number(optarg, "-o"); break;
        case 'r': c->rate = number(optarg, "-r"); break;
        case 'c': c->count = (uint64_t)number(optarg, "-c"); have_count = 1; break;
        case 't': c->seconds = number(optarg, "-t"); have_seconds = 1; break;
        case 'S':
            if (inet_pton(AF_INET, optarg, &c->server) != 1)
                fail("-S takes the Teredo server's IPv4 address, e.g. 198.51.100.2");
            c->have_server = 1;
            break;
        case 'R': {
            char host[64];
            const char *colon = strchr(optarg, ':');
            size_t n = colon ? (size_t)(colon - optarg) : strlen(optarg);
            if (n >= sizeof host)
                fail("-R takes ADDRESS[:PORT], e.g. 198.51.100.18:3545");
            memcpy(host, optarg, n);
            host[n] = 0;
            c->teredo_to.sin_family = AF_INET;
            if (inet_pton(AF_INET, host, &c->teredo_to.sin_addr) != 1)
                fail("-R takes ADDRESS[:PORT], e.g. 198.51.100.18:3545");
            if (colon)
                c->teredo_to.sin_port = htons((uint16_t)number(colon + 1, "the -R port"));
            c->have_to = 1;
            break;
        }
        case 'F': range = optarg; break;
        case 'd': ipv6_option(optarg, &c->dest6, &c->have_dest6); break;
        case 's': ipv6_option(optarg, &c->source6, &c->have_source6); break;
        case 'p': c->port = (uint16_t)number(optarg, "-p"); break;
        case 'b': c->batch = (unsigned)number(optarg, "-b"); break;
        default: fail("unknown option; read the comment at the top of flood.c");
        }
    }
    static const char *names[] = {"teredo", "bubble", "native", "plain", "rs", "show"};
    int found = 0;
    for (int i = 0; mode && i < 6; i++)
        if (strcmp(mode, names[i]) == 0) {
            c->mode = (enum mode)i;
            found = 1;
        }
    if (!found)
        fail("-m takes teredo, bubble, native, plain, rs or show");
    if (c->clients == 0)
        c->clients = c->mode == RS ? 65536 : 1;
    if (c->batch < 1 || c->batch > MAX_BATCH)
        fail("-b must be between 1 and 1024");
    if (!have_seconds && have_count)
        c->seconds = MAX_SECONDS;
    if (c->seconds <= 0 || c->seconds > MAX_SECONDS)
        fail("-t must be more than 0 and at most 3600 seconds");

    /* The fake-client range: inside 100.64.0.0/10 (RFC 6598 shared address space). */
    uint32_t base = 0x64400000u, length = 10;
    if (range) {
        char text[64];
        const char *slash = strchr(range, '/');
        struct in_addr a;
        if (!slash || (size_t)(slash - range) >= sizeof text)
            fail("-F takes ADDRESS/LENGTH inside 100.64.0.0/10, e.g. 100.64.0.0/10");
        memcpy(text, range, (size_t)(slash - range));
        text[slash - range] = 0;
        length = (uint32_t)number(slash + 1, "the -F prefix length");
        if (inet_pton(AF_INET, text, &a) != 1 || length < 10 || length > 30)
            fail("-F takes ADDRESS/LENGTH inside 100.64.0.0/10, e.g. 100.64.0.0/10");
        base = ntohl(a.s_addr) & (0xffffffffu << (32 - length));
        if ((base & 0xffc00000u) != 0x64400000u)
            fail("-F must be inside 100.64.0.0/10, the lab's fake-client range");
    }
    c->range_base = base;
    c->range_hosts = (1u << (32 - length)) - 2;
    if ((c->first + c->clients + 3) / 4 > c->range_hosts)
        fail("-n and -o ask for more fake clients than four per address of the -F range");

    int teredo_side = c->mode == TEREDO || c->mode == BUBBLE || c->mode == RS;
    if ((teredo_side || c->mode == NATIVE || c->mode == SHOW) && !c->have_server)
        fail("-S SERVER is required: the fake clients' Teredo addresses embed it");
    if (teredo_side) {
        if (!c->have_to)
            fail("-R ADDRESS[:PORT] is required: where the Teredo datagrams go");
        if (!c->teredo_to.sin_port)
            c->teredo_to.sin_port = htons(c->mode == RS ? TEREDO_PORT : RELAY_PORT);
        if (!lab_ipv4(c->teredo_to.sin_addr.s_addr))
            fail("-R must be a lab address in 198.51.100.0/24 or 203.0.113.0/24");
    }
    if ((c->mode == TEREDO || c->mode == BUBBLE || c->mode == PLAIN) &&
        !(c->have_dest6 && lab_ipv6(&c->dest6)))
        fail("-d must give a lab IPv6 destination in 2001:db8::/32");
    if ((c->mode == NATIVE || c->mode == PLAIN) && !(c->have_source6 && lab_ipv6(&c->source6)))
        fail("-s must give the sender's lab IPv6 address in 2001:db8::/32");
}

/* -- sending ---------------------------------------------------------------------------- */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void sleep_until(double when) {
    struct timespec t;
    t.tv_sec = (time_t)when;
    t.tv_nsec = (long)((when - (double)t.tv_sec) * 1e9);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR && !stopping) {
    }
}

static void show(const struct config *c) {
    for (uint64_t i = 0; i < c->clients; i++) {
        struct client client;
        char address[INET_ADDRSTRLEN], teredo[INET6_ADDRSTRLEN];
        uint32_t a = htonl(0);
        make_client(c, c->first + i, &client);
        a = htonl(client.address);
        inet_ntop(AF_INET, &a, address, sizeof address);
        inet_ntop(AF_INET6, client.teredo, teredo, sizeof teredo);
        printf("%llu %s %u %s\n", (unsigned long long)(c->first + i), address, client.port,
               teredo);
    }
}

int main(int argc, char **argv) {
    struct config c;
    parse(argc, argv, &c);
    if (c.mode == SHOW) {
        show(&c);
        return 0;
    }
    check_namespace();
    int ipv6 = c.mode == NATIVE || c.mode == PLAIN;
    int fd = socket(ipv6 ? AF_INET6 : AF_INET, SOCK_RAW, IPPROTO_RAW); /* implies HDRINCL */
    if (fd < 0)
        fail("cannot open a raw socket; run it as root (CAP_NET_RAW) inside a lab namespace");
    int buffer = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);

    static uint8_t slots[MAX_BATCH][SLOT];
    static struct mmsghdr messages[MAX_BATCH];
    static struct iovec vectors[MAX_BATCH];
    static struct sockaddr_in6 to6[MAX_BATCH];
    for (unsigned i = 0; i < c.batch; i++) {
        vectors[i].iov_base = slots[i];
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
        if (ipv6) {
            to6[i].sin6_family = AF_INET6;
            to6[i].sin6_addr = c.dest6;
            messages[i].msg_hdr.msg_name = &to6[i];
            messages[i].msg_hdr.msg_namelen = sizeof to6[i];
        } else {
            messages[i].msg_hdr.msg_name = &c.teredo_to;
            messages[i].msg_hdr.msg_namelen = sizeof c.teredo_to;
        }
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);

    /* Paced runs send small batches (about one per millisecond) so that the rate is smooth. */
    unsigned batch = c.batch;
    if (c.rate > 0) {
        double per_ms = c.rate / 1000.0;
        batch = per_ms < 1 ? 1 : per_ms > c.batch ? c.batch : (unsigned)per_ms;
    }
    uint64_t sent = 0, failed = 0, sequence = 0;
    double started = now(), deadline = started + c.seconds, finished = started;
    while (!stopping) {
        uint64_t left = c.count ? c.count - sequence : batch;
        if (c.count && left == 0)
            break;
        unsigned n = left < batch ? (unsigned)left : batch;
        if (c.rate > 0) {
            double due = started + (double)sequence / c.rate;
            if (due >= deadline)
                break;
            sleep_until(due);
        }
        finished = now();
        if (finished >= deadline)
            break;
        for (unsigned i = 0; i < n; i++)
            vectors[i].iov_len = build(&c, sequence + i, slots[i], &to6[i]);
        unsigned done = 0;
        while (done < n && !stopping) {
            int r = sendmmsg(fd, messages + done, n - done, 0);
            if (r > 0) {
                done += (unsigned)r;
                sent += (uint64_t)r;
            } else if (errno == EINTR) {
                continue;
            } else if (errno == ENOBUFS || errno == EAGAIN || errno == ENETUNREACH ||
                       errno == EHOSTUNREACH || errno == ECONNREFUSED || errno == EPERM) {
                done++; /* this datagram is lost; go on with the next */
                failed++;
            } else {
                char message[160];
                snprintf(message, sizeof message,
                         "sendmmsg failed: %s; check the lab's routes from this namespace",
                         strerror(errno));
                fail(message);
            }
        }
        sequence += done;
    }
    finished = now();
    double seconds = finished - started;
    static const char *names[] = {"teredo", "bubble", "native", "plain", "rs", "show"};
    printf("flood mode=%s sent=%llu failed=%llu seconds=%.3f pps=%.0f clients=%llu first=%llu\n",
           names[c.mode], (unsigned long long)sent, (unsigned long long)failed, seconds,
           seconds > 0 ? (double)sent / seconds : 0.0, (unsigned long long)c.clients,
           (unsigned long long)c.first);
    return 0;
}
