/* parser.h: packet -> struct flow_key, the way ctl/flowkey.py parse() does it.
 * Included by actions.h (so by emc.c, megaflow.c and baseline.c). The two parsers must agree on every packet, malformed ones included:
 * tests/bpf/test_parser_diff.py checks it. Rules (as OVS's flow_extract, simplified):
 *  - fields are filled layer by layer; a layer that is truncated or fails its sanity check stops the
 *    parse and leaves it and every later layer zero;
 *  - an Ethernet type below 0x600 gives dl_type FLOW_DL_TYPE_NONE; VLAN tags, 802.1Q (0x8100) or 802.1ad
 *    (0x88a8), are parsed up to DP_VLAN_LIMIT (OVS's vlan-limit; default 1: an inner tag is payload, dl_type
 *    its TPID; 2: the inner tag goes to vlan_tci1);
 *  - ARP fields only for Ethernet/IPv4 ARP; the opcode goes to nw_proto when it fits a byte;
 *  - IPv4 needs version 4, ihl >= 5, tot_len >= ihl and tot_len <= the bytes present;
 *  - IPv6 needs version 6 and payload_len <= the bytes present; up to DP_IPV6_MAX_EXT extension headers
 *    (hop-by-hop, routing, destination, AH, fragment) are walked; nw_proto is where the walk stopped,
 *    and L4 is parsed only if it stopped on a non-extension header;
 *  - later fragments have no L4 fields; a truncated L4 header leaves them zero;
 *  - MPLS (0x8847, 0x8848): the top label stack entry goes to label, nothing past it is parsed (as OVS: the
 *    payload's type is not in the packet); IPv6's flow label goes to label's low 20 bits;
 *  - ipv6_exthdr, in label's bits 20-28: OpenFlow's flags for the extension headers walked (HOP 64, DEST 8, ROUTER 32, FRAG 16,
 *    AUTH 4), ESP 2 and NONEXT 1 for where the walk stopped, UNREP 128 for a repeat (DEST may come twice),
 *    UNSEQ 256 for one out of RFC 8200's order;
 *  - neighbor discovery (ICMPv6 135/136, code 0): the target, then up to DP_ND_MAX_OPTS options within the
 *    IPv6 payload as OVS reads them: source and target link-layer addresses (length 1) to arp_sha and
 *    arp_tha; a zero-length or overlong option, or a second of either address, voids all three. */
#ifndef XDPSWITCH_PARSER_H
#define XDPSWITCH_PARSER_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include "dp_maps.h"
#include "dp_hash.h"

#define PKT_OFF_MASK 0x3fff /* verifier: every packet offset is provably bounded */

/* Word i of a flow key. The parser writes the words of the common packets (Ethernet, IPv4, TCP/UDP/SCTP) whole, not
 * field by field: the flow hash and the EMC's compare read the key a word at a time right after, and a word load
 * that spans several narrower stores still in flight cannot take its value from them (it waits for them to reach
 * the cache). Fields written one by one are those of the rarer packets. */
#define KEY_WORD(key, i) (((__u64 *)(key))[i])

struct pkt_layout {
    __u16 l3_off;       /* 0: no L3 header */
    __u16 l4_off;       /* 0: no L4 header (absent, truncated or a later fragment) */
    __u32 tags;         /* the VLAN tags parsed (vlan_tci, vlan_tci1) */
};

/* The ND target and link-layer options of an ICMPv6 NS/NA at off (its ICMPv6 header), within pend, as OVS's
 * parse_icmpv6(): a zero-length or overlong option ends the walk (what was found stays); a second source or
 * target address voids all three. */
static __always_inline void parse_nd(void *data, void *end, void *pend, __u32 off, struct flow_key *key)
{
    __u8 *p = data + (off & PKT_OFF_MASK);
    if ((void *)(p + 24) > end || (void *)(p + 24) > pend)
        return;
    __builtin_memcpy(key->nd_target, p + 8, 16);
    off += 24;
    for (int i = 0; i < DP_ND_MAX_OPTS; i++) {
        __u8 *o = data + (off & PKT_OFF_MASK);
        if ((void *)(o + 8) > end || (void *)(o + 8) > pend)
            return;
        __u32 len = o[1] * 8;
        if (!len || (void *)o + len > pend)
            return;
        if (len == 8 && (o[0] == 1 || o[0] == 2)) {
            __u8 *lla = o[0] == 1 ? key->arp_sha : key->arp_tha;
            if (lla[0] | lla[1] | lla[2] | lla[3] | lla[4] | lla[5])
                goto invalid;
            __builtin_memcpy(lla, o + 2, 6);
        }
        off += len;
    }
    return;
invalid:
    __builtin_memset(key->nd_target, 0, 16);
    __builtin_memset(key->arp_sha, 0, 6);
    __builtin_memset(key->arp_tha, 0, 6);
}

/* The transport header at off, within pend (the end of the IP payload: Ethernet padding is not payload), as
 * OVS's miniflow_extract: by the protocol number alone, whatever the IP version. */
static __always_inline void parse_l4(void *data, void *end, void *pend, __u32 off, __u8 proto,
                                     struct flow_key *key, struct pkt_layout *lay)
{
    __u8 *p = data + (off & PKT_OFF_MASK);

    if (proto == IPPROTO_TCP_) {
        if ((void *)(p + 20) > end || (void *)(p + 20) > pend)
            return;
        __u32 doff = (p[12] >> 4) * 4;
        if (doff < 20 || (void *)p + doff > pend)
            return;
        /* tp_src, tp_dst and tcp_flags: one key word (KEY_WORD; arp_sha is zero for IP) */
        KEY_WORD(key, 4) = (__u64)*(__u32 *)p | (__u64)(*(__be16 *)(p + 12) & bpf_htons(0x0fff)) << 32;
    } else if (proto == IPPROTO_UDP_) {
        if ((void *)(p + 8) > end || (void *)(p + 8) > pend)
            return;
        KEY_WORD(key, 4) = *(__u32 *)p;  /* tp_src, tp_dst */
    } else if (proto == IPPROTO_SCTP_) {
        if ((void *)(p + 12) > end || (void *)(p + 12) > pend)
            return;
        KEY_WORD(key, 4) = *(__u32 *)p;
    } else if (proto == IPPROTO_ICMP_ || proto == IPPROTO_ICMPV6_) {
        if ((void *)(p + 8) > end || (void *)(p + 8) > pend)
            return;
        key->tp_src = bpf_htons(p[0]);
        key->tp_dst = bpf_htons(p[1]);
        if (proto == IPPROTO_ICMPV6_ && (p[0] == 135 || p[0] == 136) && p[1] == 0)
            parse_nd(data, end, pend, off, key);
    } else {
        return;
    }
    lay->l4_off = off;
}

static __always_inline void parse_ipv4(void *data, void *end, __u32 off, struct flow_key *key,
                                       struct pkt_layout *lay)
{
    struct iphdr *ip = data + (off & PKT_OFF_MASK);
    if ((void *)(ip + 1) > end)
        return;
    __u32 ihl = ip->ihl * 4;
    __u32 tot = bpf_ntohs(ip->tot_len);
    if (ip->version != 4 || ihl < 20 || tot < ihl || (void *)ip + tot > end)
        return;
    __u8 frag = 0;
    if (ip->frag_off & bpf_htons(0x3fff))
        frag = ip->frag_off & bpf_htons(0x1fff) ? FLOW_NW_FRAG_ANY | FLOW_NW_FRAG_LATER : FLOW_NW_FRAG_ANY;
    /* whole key words (see KEY_WORD): dl_src's last four bytes (the frame's bytes 8-11) and nw_src; nw_dst,
     * nw_proto, nw_tos, nw_ttl and nw_frag */
    KEY_WORD(key, 2) = (__u64)*(__u32 *)(data + 8) | (__u64)ip->saddr << 32;
    KEY_WORD(key, 3) = (__u64)ip->daddr | (__u64)ip->protocol << 32 | (__u64)ip->tos << 40 |
                       (__u64)ip->ttl << 48 | (__u64)frag << 56;
    if (frag & FLOW_NW_FRAG_LATER)
        return;
    parse_l4(data, end, (void *)ip + tot, off + ihl, ip->protocol, key, lay);
}

/* OpenFlow's flag and RFC 8200's rank of an extension header (rank 0: not one we walk) */
static __always_inline __u16 exthdr_flag(__u8 nh, __u16 seen, __u8 *rank)
{
    switch (nh) {
    case 0: *rank = 1; return 64;
    case 60: *rank = (seen & 32) ? 7 : 2; return 8;
    case 43: *rank = 3; return 32;
    case 44: *rank = 4; return 16;
    case 51: *rank = 5; return 4;
    }
    *rank = 0;
    return 0;
}

static __always_inline void parse_ipv6(void *data, void *end, __u32 off, struct flow_key *key,
                                       struct pkt_layout *lay)
{
    struct ipv6hdr *ip6 = data + (off & PKT_OFF_MASK);
    if ((void *)(ip6 + 1) > end)
        return;
    if (ip6->version != 6 || (void *)(ip6 + 1) + bpf_ntohs(ip6->payload_len) > end)
        return;
    __builtin_memcpy(key->ipv6_src, &ip6->saddr, 16);
    __builtin_memcpy(key->ipv6_dst, &ip6->daddr, 16);

    __u8 nh = ip6->nexthdr, frag = 0;
    void *pend = (void *)(ip6 + 1) + bpf_ntohs(ip6->payload_len);
    off += sizeof(*ip6);
    int done = 0;
    __u16 eh = 0, dests = 0;
    __u8 last = 0;
    for (int i = 0; i < DP_IPV6_MAX_EXT; i++) {
        __u8 *h = data + (off & PKT_OFF_MASK);
        if (nh != 0 && nh != 43 && nh != 60 && nh != 51 && nh != 44) {
            done = 1;
            break;
        }
        __u8 rank;
        __u16 flag = exthdr_flag(nh, eh, &rank);
        if (nh == 60 ? ++dests > 2 : (eh & flag) != 0)
            eh |= 128;
        if (rank < last || (nh == 0 && i))
            eh |= 256;
        eh |= flag;
        last = rank;
        /* as OVS: an extension header cut short by the payload voids every L3 field but the addresses */
        if ((void *)(h + 8) > end || (void *)(h + 8) > pend)
            return;
        __u32 len = nh == 51 ? (h[1] + 2) * 4 : nh == 44 ? 8 : (h[1] + 1) * 8;
        if ((void *)h + len > pend)
            return;
        if (nh == 44) {
            __be16 offlg = *(__be16 *)(h + 2);
            if (offlg)
                frag = FLOW_NW_FRAG_ANY;
            if (offlg & bpf_htons(0xfff8)) {
                /* a later fragment: OVS's nw_proto is the fragment header's own number */
                nh = 44;
                frag |= FLOW_NW_FRAG_LATER;
                done = 2;
                break;
            }
        }
        nh = h[0];
        off += len;
    }
    if (!done) {
        /* the walk may have ended exactly on a non-extension header */
        done = nh != 0 && nh != 43 && nh != 60 && nh != 51 && nh != 44;
    }
    if (done == 1 && nh == 50)
        eh |= last > 6 ? 256 | 2 : 2;
    else if (done == 1 && nh == 59)
        eh |= 1;
    key->label = (*(__be32 *)ip6 & bpf_htonl(0x000fffff)) | bpf_htonl((__u32)eh << 20);
    key->nw_tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
    key->nw_ttl = ip6->hop_limit;
    key->nw_frag = frag;
    key->nw_proto = nh;
    if (done == 1)
        parse_l4(data, end, pend, off, nh, key, lay);
}

/* Fill key (which the caller has zeroed but for in_port) and lay from the packet. */
static __always_inline void parse_packet(struct xdp_md *ctx, struct flow_key *key, struct pkt_layout *lay)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;

    lay->l3_off = 0;
    lay->l4_off = 0;
    lay->tags = 0;
    if ((void *)(eth + 1) > end)
        return;
    /* dl_dst and dl_src's first two bytes are the frame's first eight; the rest of dl_src goes with nw_src's word
     * (parse_ipv4) or alone */
    KEY_WORD(key, 1) = *(__u64 *)data;
    KEY_WORD(key, 2) = *(__u32 *)(data + 8);
    __be16 type = eth->h_proto;
    __u32 off = ETH_HLEN_;

    if (type == bpf_htons(ETH_P_8021Q_) || type == bpf_htons(ETH_P_8021AD_)) {
        __be16 *tag = data + off;
        if ((void *)(tag + 2) > end) {
            key->dl_type = type;
            return;
        }
        key->vlan_tci = tag[0] | bpf_htons(VLAN_CFI);
        lay->tags = 1;
        type = tag[1];
        off += VLAN_HLEN_;
        if (DP_VLAN_LIMIT != 1 && (type == bpf_htons(ETH_P_8021Q_) || type == bpf_htons(ETH_P_8021AD_))) {
            __be16 *inner = data + ETH_HLEN_ + VLAN_HLEN_;
            if ((void *)(inner + 2) > end) {
                key->dl_type = type;
                return;
            }
            key->vlan_tci1 = inner[0] | bpf_htons(VLAN_CFI);
            lay->tags = 2;
            type = inner[1];
            off += VLAN_HLEN_;
        }
    }
    if (bpf_ntohs(type) < ETH_TYPE_MIN_) {
        /* 802.3: LLC/SNAP with OUI 0 carries an Ethernet type, as OVS's parse_ethertype reads it */
        __u8 *llc = data + (off & PKT_OFF_MASK);
        if ((void *)(llc + 8) > end || llc[0] != 0xaa || llc[1] != 0xaa || llc[2] != 0x03 || llc[3] || llc[4] ||
            llc[5] || bpf_ntohs(*(__be16 *)(llc + 6)) < ETH_TYPE_MIN_) {
            key->dl_type = bpf_htons(FLOW_DL_TYPE_NONE);
            return;
        }
        type = *(__be16 *)(llc + 6);
        off += 8;
    }
    key->dl_type = type;
    lay->l3_off = off;

    if (type == bpf_htons(ETH_P_IP_)) {
        parse_ipv4(data, end, off, key, lay);
    } else if (type == bpf_htons(ETH_P_IPV6_)) {
        parse_ipv6(data, end, off, key, lay);
    } else if (type == bpf_htons(ETH_P_MPLS_UC_) || type == bpf_htons(ETH_P_MPLS_MC_)) {
        __be32 *lse = data + off;
        if ((void *)(lse + 1) <= end)
            key->label = *lse;
    } else if (type == bpf_htons(ETH_P_ARP_) || type == bpf_htons(ETH_P_RARP_)) {
        __u8 *a = data + off;
        if ((void *)(a + 28) > end)
            return;
        if (*(__be16 *)a != bpf_htons(1) || *(__be16 *)(a + 2) != bpf_htons(ETH_P_IP_) || a[4] != 6 ||
            a[5] != 4)
            return;
        if (a[6] == 0)
            key->nw_proto = a[7];
        __builtin_memcpy(key->arp_sha, a + 8, 6);
        __builtin_memcpy(&key->nw_src, a + 14, 4);
        __builtin_memcpy(key->arp_tha, a + 18, 6);
        __builtin_memcpy(&key->nw_dst, a + 24, 4);
    }
}

#define DP_NO_PORT 0xffffffffU

/* What every program does first: find the ingress port's number (dp_port_slots, else dp_ports), or DP_NO_PORT when
 * the ingress device is not a datapath port. */
static __always_inline __u32 dp_in_port(struct xdp_md *ctx)
{
    __u32 ifindex = ctx->ingress_ifindex;
    __u32 slot = ifindex & (DP_PORT_SLOTS - 1);
    struct dp_port_slot *ps = dp_port_slots.lookup(&slot);
    if (ps && ifindex && ps->ifindex == ifindex)
        return ps->port_no;
    struct dp_port *port = dp_ports.lookup(&ifindex);
    return port ? port->port_no : DP_NO_PORT;
}

/* Zero the per-CPU scratch key and parse the packet from port_no into it. Returns the scratch (NULL: none). */
static __always_inline struct dp_scratch *dp_parse_from(struct xdp_md *ctx, __u32 port_no)
{
    __u32 zero = 0;
    struct dp_scratch *s = dp_scratch.lookup(&zero);
    if (!s)
        return 0;
    __builtin_memset(&s->key, 0, sizeof(s->key));
    s->hashed = 0;
    struct pkt_layout lay;
    parse_packet(ctx, &s->key, &lay);
    /* IPv4 leaves the ARP, MPLS, IPv6 and ND words zero; only an inner tag (vlan-limit 2) is beyond the first words */
    s->short_key = s->key.dl_type == bpf_htons(ETH_P_IP_) && !s->key.vlan_tci1;
    /* in_port, vlan_tci and dl_type as one word (KEY_WORD) */
    KEY_WORD(&s->key, 0) = port_no | (__u64)s->key.vlan_tci << 32 | (__u64)s->key.dl_type << 48;
    s->l3_off = lay.l3_off;
    s->l4_off = lay.l4_off;
    s->tagged = lay.tags;
    return s;
}

/* dp_in_port, then dp_parse_from. Returns the scratch, or NULL when the ingress device is not a datapath port. */
static __always_inline struct dp_scratch *dp_parse(struct xdp_md *ctx)
{
    __u32 port_no = dp_in_port(ctx);
    if (port_no == DP_NO_PORT)
        return 0;
    return dp_parse_from(ctx, port_no);
}

/* The packet's flow hash (ctl/flowkey.py key_hash): the EMC's slot and the mask hint's, and what an upcall carries.
 * Independent multiplies that run side by side, not a dependent chain (the chain of mf_hash over the whole key
 * was about 15 ns of an EMC hit's 85): the words flows mostly differ in each on its own (ingress port, VLAN and
 * Ethernet type; the MACs; the IPv4 addresses and IP fields; the L4 ports and TCP flags), the others XORed in
 * pairs first (ARP addresses; inner VLAN and label; the halves of each IPv6 address; the ND target). The final
 * fold and multiply bring every bit to the ones the slots take. Two flows that share a slot cost each other an EMC
 * or hint miss, never a wrong hit: the EMC compares the key (every word that can be set).
 * A short key (an IPv4 packet's: dp_scratch.short_key, set by dp_parse) has only zeros after its first
 * FLOW_KEY_SHORT_WORDS words (ARP addresses, the inner tag, the MPLS label, IPv6 addresses, ND target): its hash
 * leaves their terms out, the same value, and the EMC compares only its first words (OVS's miniflow idea: only
 * what the packet has). */
#define FLOW_KEY_SHORT_WORDS 5

static __always_inline __u32 flow_key_hash(const struct flow_key *key, __u32 short_key)
{
    const __u64 *w = (const __u64 *)key;
    __u64 x = (w[0] * 0x9e3779b97f4a7c15ULL) ^ (w[1] * 0xc2b2ae3d27d4eb4fULL) ^ (w[2] * 0xff51afd7ed558ccdULL) ^
              (w[3] * 0xc4ceb9fe1a85ec53ULL) ^ (w[4] * 0x165667b19e3779f9ULL);
    if (!short_key)
        x ^= ((w[5] ^ w[6]) * 0xbf58476d1ce4e5b9ULL) ^ ((w[7] ^ w[8]) * 0x27d4eb2f165667c5ULL) ^
             ((w[9] ^ w[10]) * 0x94d049bb133111ebULL) ^ ((w[11] ^ w[12]) * 0xd6e8feb86659fd93ULL);
    x ^= x >> 32;
    return (__u32)((x * 0x9e3779b97f4a7c15ULL) >> 32);
}

/* The packet's flow hash (flow_key_hash), computed the first time it is needed: an EMC probe or insert, a mask
 * hint, an upcall. A packet whose EMC probe is skipped (the EMC off, or thrashing) and that hits the one subtable
 * never pays for it. */
static __always_inline __u32 dp_flow_hash(struct dp_scratch *s)
{
    if (!s->hashed) {
        s->hash = flow_key_hash(&s->key, s->short_key);
        s->hashed = 1;
    }
    return s->hash;
}

static __always_inline __u32 rotl32(__u32 x, int r)
{
    return (x << r) | (x >> (32 - r));
}

/* A select group's bucket hash (ctl/flowkey.py select_hash): symmetric over the MAC addresses, the Ethernet type,
 * the IPv4/ARP and IPv6 addresses, the IP protocol and the L4 ports (OVS's flow_hash_symmetric_l4). Never the TCP
 * flags: every packet of a connection takes the same bucket. */
static __always_inline __u32 dp_select_hash(const struct flow_key *k)
{
    __u64 macs = 0;     /* the two MACs XORed, in an aligned word */
    __u8 *mac = (__u8 *)&macs;
#pragma unroll
    for (int i = 0; i < 6; i++)
        mac[i] = k->dl_dst[i] ^ k->dl_src[i];
    __u32 v6 = 0;
    const __u32 *a6 = (const __u32 *)k->ipv6_src;  /* ipv6_src and ipv6_dst: 8 words at offset 56 */
#pragma unroll
    for (int i = 0; i < 8; i++)
        v6 ^= a6[i];
    __u32 w[5];
    w[0] = *(__u32 *)mac;
    w[1] = *(__u16 *)(mac + 4) | (__u32)*(const __u16 *)&k->dl_type << 16;
    w[2] = k->nw_src ^ k->nw_dst;
    w[3] = v6;
    w[4] = ((__u32)k->tp_src ^ (__u32)k->tp_dst) | (__u32)k->nw_proto << 16;
    __u32 h = 0x9747b28c;
#pragma unroll
    for (int i = 0; i < 5; i++) {
        __u32 x = rotl32(w[i] * 0xcc9e2d51, 15) * 0x1b873593;
        h = rotl32(h ^ x, 13) * 5 + 0xe6546b64;
    }
    h ^= h >> 16;
    h *= 0x85ebca6b;
    h ^= h >> 13;
    h *= 0xc2b2ae35;
    return h ^ (h >> 16);
}

/* Whether two keys are equal over their first n words (FLOW_KEY_WORDS: the whole key). */
static __always_inline int flow_key_equal(const struct flow_key *a, const struct flow_key *b, const int n)
{
    const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
    __u64 d = 0;
#pragma unroll
    for (int i = 0; i < n; i++)
        d |= x[i] ^ y[i];
    return d == 0;
}

#endif
