/* dp_consts.h: sizes and constants of the xdpswitch fast path.
 * Included by dp_structs.h, and so by every program (emc.c, megaflow.c, baseline.c).
 * Each size is #ifndef so ctl/datapath.py can override it with a -D cflag. */
#ifndef XDPSWITCH_DP_CONSTS_H
#define XDPSWITCH_DP_CONSTS_H

#ifndef DP_MAX_PORTS
#define DP_MAX_PORTS 256            /* datapath port numbers 1..DP_MAX_PORTS-1 */
#endif
#ifndef DP_MAX_QUEUES
#define DP_MAX_QUEUES 16            /* rx queues per port that can have an upcall socket */
#endif
#ifndef EMC_ENTRIES
#define EMC_ENTRIES 8192            /* per CPU; a power of two (OVS: EM_FLOW_HASH_ENTRIES) */
#endif
/* The EMC probe sampler: after at least EMC_SAMPLE probes, a CPU whose probes hit fewer than 1 in EMC_MIN_HIT_RATIO
 * (many more flows than the EMC holds: each probe a cache miss that saves nothing) skips the probe for the next
 * EMC_SKIP packets, then samples again. Each verdict in a row that says skip doubles the next skip, up to
 * EMC_SKIP << EMC_BACKOFF_MAX packets (then 0.4 % of packets probe); a sample that pays starts again at EMC_SKIP.
 * Inserts go on meanwhile, so the EMC is warm when the flows get fewer. */
#define EMC_SAMPLE 256
#define EMC_MIN_HIT_RATIO 8
#define EMC_SKIP 4096
#define EMC_BACKOFF_MAX 4
/* dp_port_slots: the ingress ports by ifindex modulo this (a power of two), in front of dp_ports */
#define DP_PORT_SLOTS 1024
#ifndef MF_MAX_MASKS
#define MF_MAX_MASKS 64             /* subtables; bounds the tuple space search loop */
#endif
#ifndef MF_MAX_FLOWS
#define MF_MAX_FLOWS 262144         /* megaflows; indexes mf_entries and mf_stats */
#endif
#ifndef MF_BUCKETS
#define MF_BUCKETS 524288           /* mf_buckets: a power of two, at least 2 * MF_MAX_FLOWS (DatapathConfig.n_buckets) */
#endif
#define MF_SIMPLE_WAYS 4            /* simple-match megaflows per ingress port (mf_simple): one per dl_type in use */
#define MF_BUCKET_WAYS 8            /* megaflows per bucket: eight tags and eight indexes, one cache line */
#ifndef MF_HINT_ENTRIES
#define MF_HINT_ENTRIES 4096        /* per CPU; a power of two: the flow hash (dp_flow_hash) -> last megaflow hit */
#endif
#ifndef MF_MAX_ACTIONS
#define MF_MAX_ACTIONS 8            /* datapath actions per megaflow */
#endif
#ifndef DP_SELECT_MAX_BUCKETS
#define DP_SELECT_MAX_BUCKETS 5     /* buckets of a select group the fast path picks from (they fit dp_action.data) */
#endif
#ifndef DP_BUCKET_SLOTS
#define DP_BUCKET_SLOTS 4096        /* select buckets' counters (dp_bucket_stats) */
#endif
#ifndef DP_MAX_METERS
#define DP_MAX_METERS 1024          /* OpenFlow meters (dp_meters) */
#endif
#define DP_METER_MAX_BANDS 4        /* bands per meter */
#define DP_MAX_GROUPS 8             /* output sets (several ports) in use at once; one devmap each */
#ifndef DP_SKB_MAX_COPIES
#define DP_SKB_MAX_COPIES 64        /* ports a flood or group reaches on the skb path (a verifier bound) */
#endif
#ifndef DP_IPV6_MAX_EXT
#define DP_IPV6_MAX_EXT 4           /* IPv6 extension headers walked before giving up */
#endif
#ifndef DP_VLAN_LIMIT
#define DP_VLAN_LIMIT 1             /* VLAN tags parsed (OVS's vlan-limit): 1, or 2 (0 means 2: all the key holds) */
#endif
#ifndef DP_ND_MAX_OPTS
#define DP_ND_MAX_OPTS 4            /* neighbor discovery options read (OVS reads them all) */
#endif

#define ETH_HLEN_ 14
#define VLAN_HLEN_ 4
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define ETH_P_IP_ 0x0800
#define ETH_P_ARP_ 0x0806
#define ETH_P_RARP_ 0x8035
#define ETH_P_IPV6_ 0x86DD
#define ETH_P_MPLS_UC_ 0x8847
#define ETH_P_MPLS_MC_ 0x8848
#define ETH_TYPE_MIN_ 0x0600
#define FLOW_DL_TYPE_NONE 0x05FF    /* as OVS: an 802.3 frame without an Ethernet II type */
#define VLAN_CFI 0x1000             /* in flow_key.vlan_tci: a tag is present (as OVS) */

#define FLOW_NW_FRAG_ANY 1
#define FLOW_NW_FRAG_LATER 2

#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_SCTP_ 132

#endif
