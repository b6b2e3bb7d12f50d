/* The kernel fast path of an established Teredo peer: two TC programs (clsact/tcx).
 *
 * teredo_decap runs at the ingress of the IPv4-facing interfaces. A datagram for the daemon's
 * UDP port whose payload is one plain IPv6 packet from an established peer at its learned
 * mapping, for a destination the daemon serves, loses its IPv4 and UDP headers and is
 * redirected to the ingress of the Teredo TUN interface: the IPv6 stack sees it exactly as if
 * the daemon had read the datagram and written the packet (RFC 4380 §5.2.3 rx case 1, §5.4.2).
 * A relay's program also learns a new source whose Teredo address embeds the address and port
 * it came from (rx case 3), as the daemon's engine would.
 *
 * teredo_encap runs at the egress of the TUN interface. An IPv6 packet the kernel routes into
 * it, for an established peer heard from less than 30 s ago (RFC 4380 §5.2.4), with complete
 * TCP/UDP checksums, gets an IPv4 header (DF off, RFC 4380 §5.1.2; TTL 64) and a UDP header
 * from the daemon's bound address and port to the peer's mapping, and leaves through the IPv4
 * interface the routing table names, with the MAC addresses of its neighbour entry; where the
 * routing lookup needs IPv4 forwarding and it is off, through bpf_redirect_neigh.
 *
 * Anything else is passed unchanged (TC_ACT_OK): the daemon's user-space path handles it, so
 * the programs only ever take a packet whose outcome they can reproduce exactly. Each decision
 * has a pure-Python twin in teredo/bpf/datapath.py (python_decap_verdict, python_encap_verdict);
 * the tests run these programs through BPF_PROG_TEST_RUN against the twins, and the twins
 * against the engine's fast paths (TunnelEngine.accept_from_teredo, forward_to_teredo). Read
 * the twins' documentation for the rules and the reasons; the map layouts and counter indexes
 * are declared there too and must match this file.
 *
 * Built at install time with clang -O2 -g -target bpf (setup.py); loaded by
 * teredo/adapters/bpf.py. Needs Linux >= 6.3 (BPF_F_ADJ_ROOM_DECAP_L3_IPV6).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV6 /* Linux 6.3; older uapi headers lack it */
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif
#ifndef BPF_FIB_LOOKUP_SRC /* Linux 6.7 */
#define BPF_FIB_LOOKUP_SRC (1U << 4)
#endif

#define AF_INET 2
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMPV6 58
#define PROTO_NO_NEXT_HEADER 59
#define ETH_BYTES 14
#define IPV4_BYTES 20
#define UDP_BYTES 8
#define IPV6_BYTES 40
#define OUTER_BYTES (IPV4_BYTES + UDP_BYTES)
#define IPV4_MORE_FRAGMENTS_AND_OFFSET 0x3FFF
#define OUTER_TTL 64
#define MAX_UDP_PAYLOAD 65507
#define SUM_CHUNK 256
#define MAX_SUMMED_BYTES 4096 /* larger packets are left to user space */

/* teredo/bpf/datapath.py: ROLE_*, PEER_TRUSTED, Counter */
#define ROLE_RELAY 0
#define ROLE_HOST_SPECIFIC_RELAY 1
#define ROLE_CLIENT 2
#define PEER_TRUSTED 1
#define E2BIG 7

enum counter {
    DECAPSULATED,
    ENCAPSULATED,
    RX_NOT_UNICAST,
    RX_GSO,
    RX_FRAGMENT_OR_OPTIONS,
    RX_BAD_LENGTH,
    RX_BAD_CHECKSUM,
    RX_NOT_PLAIN_IPV6,
    RX_UNKNOWN_PEER,
    RX_MAPPING_MISMATCH,
    RX_NOT_SERVED,
    RX_TOO_BIG,
    RX_FAILED,
    RX_LEARNED,
    RX_PEERS_FULL,
    TX_NOT_IPV6,
    TX_GSO,
    TX_UNKNOWN_PEER,
    TX_STALE_PEER,
    TX_FOREIGN_SOURCE,
    TX_CHECKSUM_INCOMPLETE,
    TX_TOO_BIG,
    TX_NO_ROUTE,
    TX_NO_NEIGHBOUR,
    TX_FAILED,
    COUNTERS
};

struct peer_key {
    __u8 address[16];
};

struct peer_value {
    __be32 ipv4;     /* the mapping: IPv4 address ... */
    __be16 port;     /* ... and UDP port, both in network byte order */
    __u16 flags;     /* PEER_TRUSTED */
    __u64 last_rx;   /* CLOCK_MONOTONIC ns of the last reception (time.monotonic()) */
};

struct config {
    __be32 local_ipv4;     /* the daemon's bound address; 0 when bound to any */
    __be16 local_port;     /* its bound port */
    __u8 role;             /* ROLE_* */
    __u8 tun_l2_bytes;     /* 0 at the TUN; ETH_BYTES when test-running teredo_encap */
    __u8 prefix[4];        /* the Teredo /32 */
    __u32 tun_ifindex;     /* where decapsulated packets go */
    __u32 fib_ifindex;     /* the IPv4 interface for the routing lookup of teredo_encap */
    __be32 source_ipv4;    /* the outer source when bound to any and the lookup names none */
    __u64 validity_ns;     /* RFC 4380 §5.2.4: 30 s */
    __u8 learn;            /* a relay: trust a self-consistent new source here (RFC 4380 §5.4.2) */
    __u8 allow_private;    /* AllowPrivateAddresses: learn non-global mappings too */
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct peer_key);
    __type(value, struct peer_value);
    __uint(max_entries, 65536); /* the loader sets MaxPeers */
} peers SEC(".maps");

/* The client's own address, or a host-specific relay's addresses: what they serve. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, struct peer_key);
    __type(value, __u8);
    __uint(max_entries, 256);
} local_addresses SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, struct config);
    __uint(max_entries, 1);
} settings SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, COUNTERS);
} counters SEC(".maps");

struct outer_headers {
    struct iphdr ip;
    struct udphdr udp;
};

struct ipv4_pseudo_header {
    __be32 source;
    __be32 destination;
    __u8 zero;
    __u8 protocol;
    __be16 length;
};

struct ipv6_pseudo_header {
    __u8 addresses[32];
    __be32 length;
    __u8 zero[3];
    __u8 next_header;
};

static __always_inline int count(enum counter which, int verdict)
{
    __u32 key = which;
    __u64 *value = bpf_map_lookup_elem(&counters, &key);
    if (value)
        *value += 1;
    return verdict;
}

static __always_inline __u16 fold(__u64 sum)
{
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    return (__u16)sum;
}

/* Add the one's complement sum of `length` bytes of the packet from `offset` to *sum, in
 * memory order (as bpf_csum_diff sums). Through a stack buffer, so the packet may be
 * non-linear; an odd last byte is padded with zero (RFC 1071). -1 when too long or on error. */
static __always_inline int sum_packet(struct __sk_buff *skb, __u32 offset, __u32 length, __u64 *sum)
{
    __u8 buffer[SUM_CHUNK + 4]; /* + 4: the verifier's bound of the rounded-up tail */
    __u32 done = 0;

    if (length > MAX_SUMMED_BYTES)
        return -1;
    for (int i = 0; i < MAX_SUMMED_BYTES / SUM_CHUNK; i++) {
        __u32 left = length - done;
        if (left == 0)
            return 0;
        if (left >= SUM_CHUNK) {
            if (bpf_skb_load_bytes(skb, offset + done, buffer, SUM_CHUNK))
                return -1;
            *sum += (__u32)bpf_csum_diff(0, 0, (__be32 *)buffer, SUM_CHUNK, 0);
            done += SUM_CHUNK;
            continue;
        }
        __builtin_memset(buffer, 0, sizeof(buffer));
        asm volatile("" : "+r"(left)); /* keep the mask: the verifier needs the bound */
        left &= SUM_CHUNK - 1;
        if (left == 0 || bpf_skb_load_bytes(skb, offset + done, buffer, left))
            return -1;
        *sum += (__u32)bpf_csum_diff(0, 0, (__be32 *)buffer, (left + 3) & ~3U, 0);
        return 0;
    }
    return done == length ? 0 : -1;
}

static __always_inline __u64 sum_bytes(void *bytes, __u32 size)
{
    return (__u32)bpf_csum_diff(0, 0, (__be32 *)bytes, size, 0);
}

/* RFC 4380 §5.2.4's global unicast IPv4 (teredo/core/address.py is_global_ipv4), host order. */
static __always_inline int global_ipv4(__u32 address)
{
    __u32 first = address >> 24;

    if (first == 0 || first == 10 || first == 127 || (first >= 224 && first < 240))
        return 0;
    if ((address & 0xFFFF0000) == 0xA9FE0000 || (address & 0xFFF00000) == 0xAC100000 ||
        (address & 0xFFFF0000) == 0xC0A80000 || (address & 0xFFFFFF00) == 0xC0586300 ||
        address == 0xFFFFFFFF)
        return 0; /* 169.254/16, 172.16/12, 192.168/16, 192.88.99/24, broadcast */
    return 1;
}

/* Whether a relay may trust a source it has no entry for, as its engine does (RFC 4380
 * §5.4.2, §5.2.3 rx case 3): a Teredo address whose embedded mapping is the outer source,
 * global unless AllowPrivateAddresses. */
static __always_inline int learnable(const struct config *cfg, const struct ipv6hdr *ip6,
                                     __be32 outer_ipv4, __be16 outer_port)
{
    const __u8 *s = ip6->saddr.in6_u.u6_addr8;

    if (!cfg->learn || s[0] != cfg->prefix[0] || s[1] != cfg->prefix[1] ||
        s[2] != cfg->prefix[2] || s[3] != cfg->prefix[3])
        return 0;
    if ((ip6->saddr.in6_u.u6_addr32[3] ^ 0xFFFFFFFF) != outer_ipv4 ||
        (__be16)(ip6->saddr.in6_u.u6_addr16[5] ^ 0xFFFF) != outer_port)
        return 0;
    return cfg->allow_private || global_ipv4(bpf_ntohl(outer_ipv4));
}

/* RFC 4380 §5.4.2 / relay.py _serves: what a peer's packet may be delivered to. */
static __always_inline int serves(const struct config *cfg, const struct in6_addr *destination)
{
    const __u8 *d = destination->in6_u.u6_addr8;

    if (cfg->role != ROLE_RELAY)
        return bpf_map_lookup_elem(&local_addresses, d) != 0;
    if (d[0] == 0xFF || (d[0] == 0xFE && (d[1] & 0xC0) == 0x80))
        return 0; /* multicast, link-local */
    if (destination->in6_u.u6_addr32[0] == 0 && destination->in6_u.u6_addr32[1] == 0 &&
        destination->in6_u.u6_addr32[2] == 0 && d[12] == 0 && d[13] == 0 && d[14] == 0 &&
        d[15] <= 1)
        return 0; /* unspecified, loopback */
    /* A Teredo destination is never forwarded natively (RFC 4380 §5.4.2). */
    return !(d[0] == cfg->prefix[0] && d[1] == cfg->prefix[1] && d[2] == cfg->prefix[2] &&
             d[3] == cfg->prefix[3]);
}

SEC("tc")
int teredo_decap(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct config *cfg = bpf_map_lookup_elem(&settings, &zero);
    if (!cfg)
        return TC_ACT_OK;

    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    if (data + ETH_BYTES + IPV4_BYTES + UDP_BYTES > data_end) {
        if (skb->len < ETH_BYTES + OUTER_BYTES + IPV6_BYTES ||
            bpf_skb_pull_data(skb, ETH_BYTES + OUTER_BYTES + IPV6_BYTES))
            return TC_ACT_OK;
        data = (void *)(long)skb->data;
        data_end = (void *)(long)skb->data_end;
    }
    struct ethhdr *eth = data;
    struct iphdr *ip = data + ETH_BYTES;
    struct udphdr *udp = data + ETH_BYTES + IPV4_BYTES;
    if ((void *)(udp + 1) > data_end)
        return TC_ACT_OK;
    if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != PROTO_UDP ||
        udp->dest != cfg->local_port || (cfg->local_ipv4 && ip->daddr != cfg->local_ipv4))
        return TC_ACT_OK; /* not for the daemon's socket: none of our business */

    /* For the daemon's port from here on: count why a datagram is left to user space. */
    __u32 daddr = bpf_ntohl(ip->daddr);
    if (skb->pkt_type != PACKET_HOST || daddr >= 0xE0000000)
        return count(RX_NOT_UNICAST, TC_ACT_OK); /* multicast (local discovery), broadcast */
    if (skb->gso_size)
        return count(RX_GSO, TC_ACT_OK); /* coalesced by GRO: many datagrams in one */
    if (ip->version != 4 || ip->ihl != 5 || (ip->frag_off & bpf_htons(IPV4_MORE_FRAGMENTS_AND_OFFSET)))
        return count(RX_FRAGMENT_OR_OPTIONS, TC_ACT_OK);
    __u32 ip_length = bpf_ntohs(ip->tot_len);
    __u32 udp_length = bpf_ntohs(udp->len);
    if (ip_length + ETH_BYTES != skb->len || udp_length + IPV4_BYTES != ip_length)
        return count(RX_BAD_LENGTH, TC_ACT_OK); /* padded, truncated or inconsistent */
    __u32 payload = udp_length - UDP_BYTES;
    if (payload <= IPV6_BYTES)
        return count(RX_NOT_PLAIN_IPV6, TC_ACT_OK);
    if (data + ETH_BYTES + OUTER_BYTES + IPV6_BYTES > data_end) {
        if (bpf_skb_pull_data(skb, ETH_BYTES + OUTER_BYTES + IPV6_BYTES))
            return count(RX_FAILED, TC_ACT_OK);
        data = (void *)(long)skb->data;
        data_end = (void *)(long)skb->data_end;
    }
    ip = data + ETH_BYTES;
    udp = data + ETH_BYTES + IPV4_BYTES;
    struct ipv6hdr *ip6 = data + ETH_BYTES + OUTER_BYTES;
    if ((void *)(ip6 + 1) > data_end)
        return count(RX_FAILED, TC_ACT_OK);
    if (ip6->version != 6 || IPV6_BYTES + bpf_ntohs(ip6->payload_len) != payload)
        return count(RX_NOT_PLAIN_IPV6, TC_ACT_OK); /* trailers, headers, bubbles (§5.2.3) */

    struct peer_value *peer = bpf_map_lookup_elem(&peers, &ip6->saddr);
    if (peer) {
        if (!(peer->flags & PEER_TRUSTED))
            return count(RX_UNKNOWN_PEER, TC_ACT_OK);
        if (peer->ipv4 != ip->saddr || peer->port != udp->source)
            return count(RX_MAPPING_MISMATCH, TC_ACT_OK); /* RFC 4380 §5.2.3, §5.4.2 */
    } else if (!learnable(cfg, ip6, ip->saddr, udp->source)) {
        return count(RX_UNKNOWN_PEER, TC_ACT_OK);
    }
    if (!serves(cfg, &ip6->daddr))
        return count(RX_NOT_SERVED, TC_ACT_OK);
    if (udp_length > MAX_SUMMED_BYTES)
        return count(RX_TOO_BIG, TC_ACT_OK);

    /* The IPv4 header checksum, as the IP layer would check it. The UDP checksum is not
     * checked: the inner IPv6 packet carries its own, end to end (TCP, UDP and ICMPv6
     * checksums are mandatory in IPv6 and cover its addresses, RFC 8200 §8.1), and a datagram
     * a local socket sent over a veth has only a partial one, which the stack trusts. */
    __u8 header[IPV4_BYTES];
    if (bpf_skb_load_bytes(skb, ETH_BYTES, header, IPV4_BYTES))
        return count(RX_FAILED, TC_ACT_OK);
    if (fold(sum_bytes(header, IPV4_BYTES)) != 0xFFFF)
        return count(RX_BAD_CHECKSUM, TC_ACT_OK);

    if (!peer) {
        /* Learned here, only now that the packet will be taken: nothing dropped or passed
         * creates an entry. The daemon adopts it when one of its packets reaches user space,
         * and removes it once idle (teredo/core/peers.py PeerTable.sweep_learned). */
        struct peer_value learned = {
            .ipv4 = ip->saddr,
            .port = udp->source,
            .flags = PEER_TRUSTED,
            .last_rx = bpf_ktime_get_ns(),
        };
        long result = bpf_map_update_elem(&peers, &ip6->saddr, &learned, BPF_NOEXIST);
        if (result == -E2BIG)
            return count(RX_PEERS_FULL, TC_ACT_OK); /* the daemon's table takes it */
        if (result)
            return count(RX_FAILED, TC_ACT_OK); /* e.g. another CPU learned it meanwhile */
        count(RX_LEARNED, 0);
    }

    if (bpf_skb_adjust_room(skb, -OUTER_BYTES, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_DECAP_L3_IPV6))
        return count(RX_FAILED, TC_ACT_OK);
    __be16 ipv6_type = bpf_htons(ETH_P_IPV6);
    if (bpf_skb_store_bytes(skb, 12, &ipv6_type, sizeof(ipv6_type), 0))
        return count(RX_FAILED, TC_ACT_SHOT); /* the packet is already changed */
    /* RFC 4380 §5.2.3: the peer's last reception date (a learned one has it already) */
    if (peer)
        __sync_lock_test_and_set(&peer->last_rx, bpf_ktime_get_ns());
    count(DECAPSULATED, 0);
    return bpf_redirect(cfg->tun_ifindex, BPF_F_INGRESS);
}

/* Whether the TCP or UDP checksum of the packet at `l3` is complete, adding the packet's sum
 * (header and payload) to *sum for the outer UDP checksum. A partial checksum (the TUN device
 * was opened with offloads and the stack left it for the reader to finish) does not verify:
 * user space finishes it. Other upper layers are never left partial by the stack. */
static __always_inline int summed_and_complete(struct __sk_buff *skb, __u32 l3, __u32 length,
                                               struct ipv6hdr *ip6, __u64 *sum)
{
    __u64 upper = 0;
    if (sum_packet(skb, l3 + IPV6_BYTES, length - IPV6_BYTES, &upper))
        return 0;
    __u8 next_header = ip6->nexthdr;
    if (next_header == PROTO_TCP || next_header == PROTO_UDP) {
        struct ipv6_pseudo_header pseudo = {.length = bpf_htonl(length - IPV6_BYTES),
                                            .next_header = next_header};
        __builtin_memcpy(pseudo.addresses, &ip6->saddr, 32);
        if (fold(upper + sum_bytes(&pseudo, sizeof(pseudo))) != 0xFFFF)
            return 0;
    } else if (next_header == 0 || next_header == 43 || next_header == 60) {
        return 0; /* hop-by-hop, routing, destination options: a partial TCP/UDP may follow */
    }
    *sum += upper;
    return 1;
}

/* The output route to a peer's mapping from the daemon's address and port (bpf_fib_lookup). */
static __always_inline long route_to(struct __sk_buff *skb, const struct config *cfg,
                                     struct bpf_fib_lookup *route, __be32 peer_ipv4,
                                     __be16 peer_port, __u32 length, __u32 flags)
{
    __builtin_memset(route, 0, sizeof(*route));
    route->family = AF_INET;
    route->l4_protocol = PROTO_UDP;
    route->sport = cfg->local_port;
    route->dport = peer_port;
    route->tot_len = length + OUTER_BYTES;
    route->ifindex = cfg->fib_ifindex;
    route->ipv4_src = cfg->local_ipv4;
    route->ipv4_dst = peer_ipv4;
    return bpf_fib_lookup(skb, route, sizeof(*route), BPF_FIB_LOOKUP_OUTPUT | flags);
}

SEC("tc")
int teredo_encap(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct config *cfg = bpf_map_lookup_elem(&settings, &zero);
    if (!cfg)
        return TC_ACT_OK;
    if (skb->protocol != bpf_htons(ETH_P_IPV6))
        return count(TX_NOT_IPV6, TC_ACT_OK);
    if (skb->gso_size)
        return count(TX_GSO, TC_ACT_OK); /* user space cuts super-packets in runs */
    __u32 l3 = cfg->tun_l2_bytes ? ETH_BYTES : 0;
    if (skb->len < l3 + IPV6_BYTES)
        return count(TX_NOT_IPV6, TC_ACT_OK);
    __u32 length = skb->len - l3;

    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    if (data + l3 + IPV6_BYTES > data_end) {
        if (bpf_skb_pull_data(skb, l3 + IPV6_BYTES))
            return count(TX_FAILED, TC_ACT_OK);
        data = (void *)(long)skb->data;
        data_end = (void *)(long)skb->data_end;
    }
    struct ipv6hdr *ip6 = data + (l3 ? ETH_BYTES : 0);
    if ((void *)(ip6 + 1) > data_end)
        return count(TX_FAILED, TC_ACT_OK);
    if (ip6->version != 6)
        return count(TX_NOT_IPV6, TC_ACT_OK);

    struct peer_value *peer = bpf_map_lookup_elem(&peers, &ip6->daddr);
    if (!peer || !(peer->flags & PEER_TRUSTED))
        return count(TX_UNKNOWN_PEER, TC_ACT_OK);
    __u64 now = bpf_ktime_get_ns();
    if ((__s64)(now - peer->last_rx) >= (__s64)cfg->validity_ns)
        return count(TX_STALE_PEER, TC_ACT_OK); /* RFC 4380 §5.2.4: bubbles first */
    if (cfg->role == ROLE_CLIENT && !bpf_map_lookup_elem(&local_addresses, &ip6->saddr))
        return count(TX_FOREIGN_SOURCE, TC_ACT_OK); /* peers would refuse it (client.py) */
    if (length > MAX_UDP_PAYLOAD || length > MAX_SUMMED_BYTES)
        return count(TX_TOO_BIG, TC_ACT_OK);

    __u64 sum = 0;
    if (!summed_and_complete(skb, l3, length, ip6, &sum))
        return count(TX_CHECKSUM_INCOMPLETE, TC_ACT_OK);
    data = (void *)(long)skb->data;
    data_end = (void *)(long)skb->data_end;
    ip6 = data + (l3 ? ETH_BYTES : 0);
    if ((void *)(ip6 + 1) > data_end)
        return count(TX_FAILED, TC_ACT_OK);
    sum += sum_bytes(ip6, IPV6_BYTES);

    __be32 peer_ipv4 = peer->ipv4;
    __be16 peer_port = peer->port;
    __be32 source = cfg->local_ipv4;
    struct bpf_fib_lookup route;
    long found = route_to(skb, cfg, &route, peer_ipv4, peer_port, length, source ? 0 : BPF_FIB_LOOKUP_SRC);
    if (found < 0 && !source) /* BPF_FIB_LOOKUP_SRC is Linux 6.7: without it, source_ipv4 */
        found = route_to(skb, cfg, &route, peer_ipv4, peer_port, length, 0);
    int direct = found == BPF_FIB_LKUP_RET_SUCCESS;
    if (direct) {
        source = route.ipv4_src ? route.ipv4_src : cfg->source_ipv4;
        if (!source)
            return count(TX_NO_ROUTE, TC_ACT_OK);
    } else if (found == BPF_FIB_LKUP_RET_FWD_DISABLED) {
        /* The lookup needs IPv4 forwarding on the interface; a host without it gets the
         * kernel's own route and neighbour resolution through bpf_redirect_neigh. */
        if (!source)
            source = cfg->source_ipv4;
        __u32 mtu_length = length + OUTER_BYTES; /* the IPv4 length, as the lookup takes it */
        if (!source || bpf_check_mtu(skb, cfg->fib_ifindex, &mtu_length, 0, 0))
            return count(TX_NO_ROUTE, TC_ACT_OK);
    } else if (found == BPF_FIB_LKUP_RET_NO_NEIGH) {
        return count(TX_NO_NEIGHBOUR, TC_ACT_OK); /* user space's send resolves it */
    } else {
        return count(TX_NO_ROUTE, TC_ACT_OK); /* incl. too big for the route's MTU */
    }

    struct outer_headers outer = {
        .ip = {.version = 4, .ihl = 5, .tot_len = bpf_htons(length + OUTER_BYTES),
               .id = (__be16)bpf_get_prandom_u32(), .frag_off = 0 /* DF off: RFC 4380 §5.1.2 */,
               .ttl = OUTER_TTL, .protocol = PROTO_UDP, .saddr = source, .daddr = peer_ipv4},
        .udp = {.source = cfg->local_port, .dest = peer_port,
                .len = bpf_htons(length + UDP_BYTES)},
    };
    outer.ip.check = ~fold(sum_bytes(&outer.ip, IPV4_BYTES));
    struct ipv4_pseudo_header pseudo = {
        .source = source,
        .destination = peer_ipv4,
        .protocol = PROTO_UDP,
        .length = outer.udp.len,
    };
    sum += sum_bytes(&pseudo, sizeof(pseudo));
    sum += sum_bytes(&outer.udp, UDP_BYTES);
    __u16 check = ~fold(sum);
    outer.udp.check = check ? check : 0xFFFF;

    if (bpf_skb_adjust_room(skb, OUTER_BYTES, BPF_ADJ_ROOM_MAC,
                            BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP))
        return count(TX_FAILED, TC_ACT_OK);
    if (bpf_skb_store_bytes(skb, l3, &outer, OUTER_BYTES, 0))
        return count(TX_FAILED, TC_ACT_SHOT);
    /* An Ethernet header: the route's addresses, or a blank one that bpf_redirect_neigh
     * pulls before it asks the neighbour layer (it refuses a packet without one). */
    if (!l3 && bpf_skb_change_head(skb, ETH_BYTES, 0))
        return count(TX_FAILED, TC_ACT_SHOT);
    struct ethhdr eth = {.h_proto = bpf_htons(ETH_P_IP)};
    if (direct) {
        __builtin_memcpy(eth.h_dest, route.dmac, ETH_ALEN);
        __builtin_memcpy(eth.h_source, route.smac, ETH_ALEN);
    }
    if (bpf_skb_store_bytes(skb, 0, &eth, ETH_BYTES, 0))
        return count(TX_FAILED, TC_ACT_SHOT);
    count(ENCAPSULATED, 0);
    if (direct)
        return bpf_redirect(route.ifindex, 0);
    return bpf_redirect_neigh(cfg->fib_ifindex, 0, 0, 0);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
