/* dp_structs.h: the structs shared by the fast path and the control plane.
 * Included by every program. ctl/flowkey.py and ctl/dpif.py mirror these structs with ctypes, and
 * tests/bpf/test_layout.py compares the two layouts against the compiled C. Never renumber an enum. */
#ifndef XDPSWITCH_DP_STRUCTS_H
#define XDPSWITCH_DP_STRUCTS_H

#include "dp_consts.h"

/* The flow key: every field a flow can match on. Defined here once. 104 bytes, no implicit padding. */
struct flow_key {
    __u32 in_port;      /* host order: datapath port number */
    __be16 vlan_tci;    /* network order: the 802.1Q TCI | VLAN_CFI when tagged, else 0 */
    __be16 dl_type;     /* network order: Ethernet type after the tag; FLOW_DL_TYPE_NONE for 802.3 */
    __u8 dl_dst[6];
    __u8 dl_src[6];
    __be32 nw_src;      /* network order: IPv4 source or ARP SPA */
    __be32 nw_dst;      /* network order: IPv4 destination or ARP TPA */
    __u8 nw_proto;      /* IPv4 protocol, IPv6 next header, or ARP opcode (low byte) */
    __u8 nw_tos;        /* IPv4 TOS or IPv6 traffic class: DSCP << 2 | ECN */
    __u8 nw_ttl;        /* IPv4 TTL or IPv6 hop limit */
    __u8 nw_frag;       /* FLOW_NW_FRAG_ANY | FLOW_NW_FRAG_LATER */
    __be16 tp_src;      /* network order: TCP/UDP/SCTP source port, or ICMP/ICMPv6 type */
    __be16 tp_dst;      /* network order: TCP/UDP/SCTP destination port, or ICMP/ICMPv6 code */
    __be16 tcp_flags;   /* network order: the low 12 bits of TCP's offset/flags word */
    __u8 arp_sha[6];
    __u8 arp_tha[6];
    __be16 vlan_tci1;   /* network order: the inner VLAN tag's TCI | VLAN_CFI, with DP_VLAN_LIMIT 2; else 0 */
    __be32 label;       /* network order: MPLS's top label stack entry; for IPv6, the flow label (the low 20
                         * bits) and OpenFlow's extension header flags (OFPIEH_*, 9 bits) above it */
    __u8 ipv6_src[16];
    __u8 ipv6_dst[16];
    __u8 nd_target[16]; /* IPv6 neighbor discovery's target (its link-layer options go to arp_sha/arp_tha) */
};
_Static_assert(sizeof(struct flow_key) == 104, "flow_key layout changed: update ctl/flowkey.py");
#define FLOW_KEY_WORDS (sizeof(struct flow_key) / 8)

/* The megaflow cache's index (mf_buckets): a megaflow of subtable mid with masked key w hashes to
 * h = mf_hash_masked(w, mf_seed(seed, mid)) (dp_hash.h: over the words the mask covers); it sits in bucket
 * h mod MF_BUCKETS as tag (h >> 32) | 1 (0: a free way) and its flow index. A bucket is one cache line; the
 * fast path compares its eight tags, then the one entry whose tag matched (its mask id and masked key, word by
 * word). User space never puts two megaflows
 * with one tag in a bucket, nor a ninth in a full one (the megaflow is refused: its packets take the slow
 * path), so a tag found names the one megaflow that can match. */
struct mf_bucket {
    __u32 tag[MF_BUCKET_WAYS];
    __u32 idx[MF_BUCKET_WAYS];
};
_Static_assert(sizeof(struct mf_bucket) == 64, "mf_bucket layout changed");

/* Datapath actions. Modifications come first; a megaflow ends in at most one terminal action
 * (output, group, flood, upcall, drop); no terminal action means drop. Never renumber. */
enum dp_action_type {
    DP_ACT_NONE = 0,
    DP_ACT_OUTPUT = 1,          /* arg16: port */
    DP_ACT_GROUP = 2,           /* arg32: group (a set of ports, ingress excluded) */
    DP_ACT_FLOOD = 3,           /* every port but the ingress port */
    DP_ACT_DROP = 4,
    DP_ACT_UPCALL = 5,          /* send to user space (slow path) */
    DP_ACT_SET_ETH_SRC = 6,     /* data[0..5] */
    DP_ACT_SET_ETH_DST = 7,     /* data[0..5] */
    DP_ACT_PUSH_VLAN = 8,       /* arg16: TCI, network order; arg32: TPID (0x8100 or 0x88a8) */
    DP_ACT_POP_VLAN = 9,
    DP_ACT_SET_VLAN = 10,       /* arg16: TCI, network order (an existing tag's whole TCI) */
    DP_ACT_SET_IPV4_SRC = 11,   /* arg32: address, network order */
    DP_ACT_SET_IPV4_DST = 12,   /* arg32: address, network order */
    DP_ACT_SET_IP_DSCP = 13,    /* arg16: DSCP (0..63); ECN kept; IPv4 and IPv6 */
    DP_ACT_DEC_TTL = 14,        /* IPv4 TTL / IPv6 hop limit; drop when it would reach 0 */
    DP_ACT_SET_IPV6_SRC = 15,   /* data: address */
    DP_ACT_SET_IPV6_DST = 16,   /* data: address */
    DP_ACT_SET_TP_SRC = 17,     /* arg16: port, network order; TCP and UDP */
    DP_ACT_SET_TP_DST = 18,     /* arg16: port, network order; TCP and UDP */
    DP_ACT_SELECT = 19,         /* a select group: pick a bucket by dp_select_hash() and go on at its first action.
                                 * arg32: the first bucket counter slot (dp_bucket_stats; bucket i at slot + i);
                                 * data[0]: buckets (at most DP_SELECT_MAX_BUCKETS); bucket i: data[1 + 3i] a u16
                                 * threshold (little-endian; it takes hash % 0xffff below it), data[3 + 3i] the
                                 * index of its first action. Each bucket's actions end in a terminal action. */
    DP_ACT_METER = 20,          /* arg32: the meter's slot in dp_meters; may drop (DROP_METER) or remark the DSCP */
    DP_ACT_MAX
};

struct dp_action {
    __u16 type;
    __be16 arg16;
    __u32 arg32;
    __u8 data[16];
};
_Static_assert(sizeof(struct dp_action) == 24, "dp_action layout changed");

/* mf_entries[flow_idx]. gen is odd while the megaflow lives and even once it is deleted; EMC entries
 * carry the gen they saw, so a deleted or replaced megaflow never runs from the EMC. */
struct mf_entry {
    __u32 gen;
    __u16 n_actions;
    __u8 mask_id;       /* its subtable: a lookup in another one never takes it (MF_MAX_MASKS <= 255) */
    __u8 flags;         /* MF_F_* */
    struct dp_action actions[MF_MAX_ACTIONS];
    struct flow_key key;    /* the masked key: what a packet's masked key must equal (last: an EMC hit never reads it) */
};

/* A simple-match megaflow (simple_match.h; ctl/datapath/dpif.py is_simple_match): its mask is the whole in_port and
 * dl_type, and at most vlan_tci and nw_frag, whose masked values are 0; dl_type is neither a VLAN TPID, IPv6 nor under
 * 0x600; its actions read nothing the parse sets (outputs, floods, groups, drops). So every untagged packet from
 * in_port with that dl_type and not an IPv4 fragment matches it. Set by user space when it writes the entry. */
#define MF_F_SIMPLE 1

/* mf_simple[in_port]: up to MF_SIMPLE_WAYS simple-match megaflows of the port, as flow index + 1 (0: none; the
 * ways in use come first). A hint only: the fast path takes a way's megaflow only if it is alive, MF_F_SIMPLE and
 * its key's first word is the packet's, so a stale or half-written way costs a fallback, never a wrong hit.
 * Owner: user space (Datapath); the fast path only reads it. */
struct mf_simple {
    __u32 idx[MF_SIMPLE_WAYS];
};

/* Packets and bytes: a select group's bucket (dp_bucket_stats), a meter's input or band (dp_meter_stats). */
struct dp_bucket_stats {
    __u64 packets;
    __u64 bytes;
};

/* A meter band's token bucket. Tokens are in cost units: for a kbps meter a packet costs its bits * 1e6, for a
 * pktps meter 1e9; so rate (kbps or packets/s) is also the tokens one nanosecond adds. */
struct dp_meter_band {
    __s64 tokens;       /* changed with atomic operations: every CPU shares the bucket */
    __u64 rate;
    __u64 burst;        /* the bucket's size, in tokens */
    __u32 type;         /* OFPMBT_DROP 1, OFPMBT_DSCP_REMARK 2 */
    __u32 prec_level;   /* DSCP_REMARK: how far to raise an AF DSCP's drop precedence */
};

struct dp_meter {
    __u64 last_ns;      /* the last refill (bpf_ktime_get_ns); claimed with a compare-and-swap */
    __u32 flags;        /* DP_METER_PKTPS */
    __u32 n_bands;
    struct dp_meter_band bands[DP_METER_MAX_BANDS];
};
#define DP_METER_PKTPS 1

struct mf_flow_stats {
    __u64 packets;
    __u64 bytes;
    __u64 used_ns;      /* CLOCK_MONOTONIC_COARSE of the last hit (dp_now_ns(): to the tick) */
};

/* An EMC entry: 128 bytes, what a short key's compare reads (gen, flow_idx, short_key and the key's first
 * FLOW_KEY_SHORT_WORDS words) in its first 56. */
struct emc_entry {
    __u32 gen;          /* 0: empty */
    __u32 flow_idx;
    __u32 short_key;    /* the key is short (dp_scratch.short_key) */
    __u32 pad_;
    struct flow_key key;
    __u64 pad2_;
};
_Static_assert(sizeof(struct emc_entry) == 128, "emc_entry layout changed");

/* This CPU's EMC probes and hits since the sampler's last verdict, how many packets still skip the probe, and how
 * many verdicts in a row said skip (the next skip is EMC_SKIP << that, at most << EMC_BACKOFF_MAX). */
struct emc_sampler {
    __u32 probes;
    __u32 hits;
    __u32 skip;
    __u32 backoff;
};

/* mf_order[slot]: the masks to visit, best first. Two slots; dp_config.mf_order_slot picks the live one,
 * so user space rewrites the other and flips (a reader never sees half an order). */
struct mf_order {
    __u32 n_masks;
    __u32 pad;
    __u8 ids[MF_MAX_MASKS];
};

struct dp_config {
    __u32 emc_insert_inv_prob;  /* insert into the EMC on 1 in N megaflow hits; 0: never (OVS: 100) */
    __u32 mf_order_slot;        /* 0 or 1 */
    __u32 flags;                /* DP_CFG_* */
    __u32 hash_seed;            /* mf_hash_masked()'s seed (with mf_seed()): random, chosen by user space when the
                                 * datapath is made */
};
#define DP_CFG_NO_HINTS 1       /* neither use nor update the mask hints (benchmarks, debugging) */
#define DP_CFG_SKB_FLOOD 2      /* some port takes the skb path: floods and groups go through dp_skb_tx */
#define DP_CFG_NO_SIMPLE 4      /* skip the simple match (benchmarks, debugging): every packet is parsed */

struct dp_port {
    __u32 port_no;
    __u32 flags;
};

/* dp_port_slots[ifindex % DP_PORT_SLOTS]: one port with that residue (the lowest ifindex), so that most
 * packets find their ingress port with an array lookup and a compare instead of a hash map lookup. User space
 * rewrites the whole array from dp_ports after every port change; ifindex 0: empty. */
struct dp_port_slot {
    __u32 ifindex;
    __u32 port_no;
};

struct dp_port_stats {
    __u64 rx_packets;
    __u64 rx_bytes;
    __u64 tx_packets;           /* outputs from the fast path (XDP redirect and skb path) */
    __u64 tx_bytes;
    __u64 drops;                /* dropped by an action on packets received here */
    __u64 tx_skb_packets;       /* of tx_packets, sent by the skb path (dp_skb_tx) */
};

/* Per output port (dp_port_cfg, by port number): how to reach it. A port whose device cannot take
 * XDP_REDIRECTed frames (a veth whose peer has neither an XDP program nor GRO: the kernel drops them) is
 * sent to through the skb path instead: XDP passes the packet up with struct dp_skb_meta in front, and
 * dp_skb_tx (tc ingress on every port) redirects the skb. User space sets DP_PORT_SKB_TX from the
 * device's xdp-features (NETDEV_XDP_ACT_NDO_XMIT). */
struct dp_port_cfg {
    __u32 ifindex;              /* 0: no such port */
    __u32 flags;                /* DP_PORT_* */
};
#define DP_PORT_SKB_TX 1

/* The ports a flood (key 0) or output group g (key 1 + g) reaches on the skb path, kept by user space. */
struct dp_skb_target {
    __u32 ifindex;
    __u32 port_no;
};
struct dp_skb_targets {
    __u32 n;
    __u32 pad;
    struct dp_skb_target t[DP_SKB_MAX_COPIES];
};

struct dp_skb_meta {
    __u32 magic;                /* DP_SKB_MAGIC: written by XDP for dp_skb_tx, nothing else */
    __u16 kind;                 /* DP_SKB_OUTPUT, DP_SKB_FLOOD, DP_SKB_GROUP */
    __u16 arg;                  /* the port, or the group */
    __u32 in_port;
};
_Static_assert(sizeof(struct dp_skb_meta) % 4 == 0, "XDP metadata is a multiple of 4 bytes");
#define DP_SKB_MAGIC 0x78647073 /* "xdps" */
#define DP_SKB_OUTPUT 1
#define DP_SKB_FLOOD 2
#define DP_SKB_GROUP 3

/* dp_stats indexes. The first four partition every packet the fast path sees:
 * EMC_HIT + MF_HIT + MISS + LOST == packets. Never renumber. */
enum dp_stat {
    DP_STAT_EMC_HIT = 0,
    DP_STAT_MF_HIT = 1,
    DP_STAT_MISS = 2,           /* sent to user space */
    DP_STAT_LOST = 3,           /* wanted user space, no socket bound, over the upcall limit (or unknown ingress) */
    DP_STAT_MASK_LOOKUPS = 4,   /* subtables looked up (megaflow hits and misses) */
    DP_STAT_HINT_HIT = 5,       /* megaflow hits found in the hinted subtable */
    DP_STAT_EMC_INSERT = 6,
    DP_STAT_EMC_SKIP = 7,       /* packets that did not probe the EMC: disabled, or its recent hit rate too low */
    DP_STAT_SIMPLE_HIT = 8,     /* megaflow hits found by the simple match, before any parse (simple_match.h) */
    DP_STAT_MAX
};

/* dp_drops indexes: why the fast path dropped a packet. Stable numbers; never renumber. */
enum dp_drop_reason {
    DROP_NONE = 0,
    DROP_ACTION = 1,            /* the flow says drop (or has no terminal action) */
    DROP_TTL_EXPIRED = 2,
    DROP_NO_PORT = 3,           /* output to a port that is not in the datapath */
    DROP_BAD_ACTION = 4,        /* an action that does not fit the packet (e.g. pop without a tag) */
    DROP_UNSUPPORTED = 5,       /* e.g. rewriting SCTP ports (CRC32c) */
    DROP_UNKNOWN_INGRESS = 6,   /* the program ran on a device that is not a datapath port */
    DROP_NO_UPCALL_SOCKET = 7,  /* a miss or slow-path packet with no AF_XDP socket bound */
    DROP_ADJUST_FAILED = 8,     /* bpf_xdp_adjust_head/meta refused */
    DROP_NO_PROGRAM = 9,        /* the megaflow program is not loaded (tail call failed) */
    DROP_CONTROLLER = 10,       /* the pipeline sent it to the controller (no OpenFlow channel yet) */
    DROP_METER = 11,            /* a meter's drop band: over its rate */
    DROP_UPCALL_LIMIT = 12,     /* an upcall over its port's (or the datapath's) upcall rate limit */
    DROP_MAX
};

/* What a miss carries into user space, in the XDP metadata just before the frame. */
struct upcall_meta {
    __u16 reason;               /* enum upcall_reason */
    __u16 in_port;
    __u32 hash;                 /* flow_key_hash() of the packet */
};

enum upcall_reason {
    UPCALL_MISS = 1,
    UPCALL_SLOW_PATH = 2,
};

#endif
