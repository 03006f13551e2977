/* dp_maps.h: every map of the fast path. Included by emc.c, megaflow.c and baseline.c; all programs
 * compiled together share these maps. With -DDP_PIN_DIR="/sys/fs/bpf/..." each map is pinned there
 * under its own name, and a later load with the same directory reopens the same maps. */
#ifndef XDPSWITCH_DP_MAPS_H
#define XDPSWITCH_DP_MAPS_H

#include "dp_structs.h"

#ifdef DP_PIN_DIR
#define DP_PIN(_name) ":" DP_PIN_DIR "/" #_name
#else
#define DP_PIN(_name) ""
#endif

#define DP_MAP(_type, _key, _leaf, _name, _max) \
    BPF_F_TABLE(_type DP_PIN(_name), _key, _leaf, _name, _max, 0)

/* A devmap with bcc's redirect_map() member, pinnable (bcc's BPF_DEVMAP is not). */
#define DP_DEVMAP(_name, _max) \
    struct _name##_table_t { \
        u32 key; \
        int leaf; \
        u64 (*redirect_map)(int, int); \
        u32 max_entries; \
    }; \
    __attribute__((section("maps/devmap" DP_PIN(_name)))) \
    struct _name##_table_t _name = {.max_entries = (_max)}

/* Ports: ingress ifindex -> port number; port number -> ifindex for output and flood. */
DP_MAP("hash", u32, struct dp_port, dp_ports, DP_MAX_PORTS);
DP_MAP("array", u32, struct dp_port_slot, dp_port_slots, DP_PORT_SLOTS);
DP_DEVMAP(dp_tx_ports, DP_MAX_PORTS);
DP_MAP("percpu_array", u32, struct dp_port_stats, dp_port_stats, DP_MAX_PORTS);
DP_MAP("array", u32, struct dp_port_cfg, dp_port_cfg, DP_MAX_PORTS);
DP_MAP("array", u32, struct dp_skb_targets, dp_skb_targets, 1 + DP_MAX_GROUPS);

/* Output groups: a devmap per set of ports, broadcast to with the ingress port excluded. */
DP_DEVMAP(dp_group0, DP_MAX_PORTS);
DP_DEVMAP(dp_group1, DP_MAX_PORTS);
DP_DEVMAP(dp_group2, DP_MAX_PORTS);
DP_DEVMAP(dp_group3, DP_MAX_PORTS);
DP_DEVMAP(dp_group4, DP_MAX_PORTS);
DP_DEVMAP(dp_group5, DP_MAX_PORTS);
DP_DEVMAP(dp_group6, DP_MAX_PORTS);
DP_DEVMAP(dp_group7, DP_MAX_PORTS);

/* Select groups' buckets: packets and bytes each bucket took in the fast path (slots handed out by user space). */
DP_MAP("percpu_array", u32, struct dp_bucket_stats, dp_bucket_stats, DP_BUCKET_SLOTS);

/* Meters: their bands' token buckets (written by user space on a meter-mod), and per meter its input packets then
 * each band's (slot * (1 + DP_METER_MAX_BANDS) + 0, + 1 + band). */
DP_MAP("array", u32, struct dp_meter, dp_meters, DP_MAX_METERS);
DP_MAP("percpu_array", u32, struct dp_bucket_stats, dp_meter_stats, DP_MAX_METERS * (1 + DP_METER_MAX_BANDS));
/* Upcall limits: a packets/s meter per ingress port, and at 0 the datapath's (no band: no limit). */
DP_MAP("array", u32, struct dp_meter, dp_upcall_meters, DP_MAX_PORTS);

DP_MAP("array", u32, struct dp_config, dp_config, 1);
DP_MAP("percpu_array", u32, u64, dp_drops, DROP_MAX);

/* EMC: per CPU, direct-mapped by flow_key_hash(); and per CPU its probe sampler (emc.c; owner: emc_rx, zeroed by
 * user space when it empties the EMC). */
DP_MAP("percpu_array", u32, struct emc_entry, emc_entries, EMC_ENTRIES);
DP_MAP("percpu_array", u32, struct emc_sampler, emc_sampler, 1);

/* Megaflow cache: masks (subtables), their visiting order, the flows, their actions and stats. */
DP_MAP("array", u32, struct flow_key, mf_masks, MF_MAX_MASKS);
DP_MAP("array", u32, struct mf_order, mf_order, 2);
DP_MAP("percpu_array", u32, u64, mf_mask_hits, MF_MAX_MASKS);
DP_MAP("array", u32, struct mf_bucket, mf_buckets, MF_BUCKETS);
DP_MAP("array", u32, struct mf_entry, mf_entries, MF_MAX_FLOWS);
DP_MAP("percpu_array", u32, struct mf_flow_stats, mf_stats, MF_MAX_FLOWS);
/* Per ingress port, its simple-match megaflows (struct mf_simple; owner: user space). */
DP_MAP("array", u32, struct mf_simple, mf_simple, DP_MAX_PORTS);
/* Per CPU, at the flow hash's slot: the megaflow the last packet there hit (megaflow.c mf_hint_pack: its index,
 * its mask id + 1 and the hash's high bits; 0: no hint). Owner: mf_rx; user space only zeroes it (flush_emc). */
DP_MAP("percpu_array", u32, u64, mf_hints, MF_HINT_ENTRIES);
/* How many megaflows are installed, for the read-only tools (one read instead of all of mf_buckets). Owner: user
 * space (Datapath), which writes it after every change to the megaflows; the fast path never reads it. */
DP_MAP("array", u32, u64, mf_count, 1);

/* Hand-off from emc_rx to mf_rx (tail call) and the AF_XDP sockets of the upcall handlers. */
/* The packet's state while its actions run lives here too, not on the stack: the verifier does not
 * track map values, so the action loop's states prune instead of multiplying. */
struct dp_scratch {
    /* The packet counters (enum dp_stat; dp_stat_add), first: user space reads them at offset 0 of each CPU's
     * scratch (ctl/datapath/view.py). Only the fast path writes them, only counting up. */
    __u64 stats[DP_STAT_MAX];
    struct flow_key key;
    __u32 hash;         /* flow_key_hash(&key), once hashed is set (dp_flow_hash()) */
    __u16 l3_off;       /* 0: no L3 header; moves when a tag is pushed or popped */
    __u16 l4_off;       /* 0: no L4 header */
    __u32 tagged;       /* the VLAN tags the packet carries now (as parsed, then pushed and popped) */
    __u32 reason;       /* enum dp_drop_reason of the last dp_execute() */
    __u32 next;         /* dp_execute() skips the actions before this one (a select group's bucket) */
    __u32 hashed;       /* hash is the key's: computed only when something needs it (dp_parse() clears it) */
    __u32 short_key;    /* an IPv4 key with no inner tag, whose words after FLOW_KEY_SHORT_WORDS are all zero
                         * (dp_parse(); the bpf tier checks it on every frame it parses) */
    __u32 pad_;
    __u64 now_jiffies;  /* dp_now_ns(): the jiffy of the last clock read on this CPU */
    __u64 now_ns;       /*   and what bpf_ktime_get_coarse_ns() said then */
    __u64 rnd;          /* dp_random()'s state (0: not seeded yet) */
};
_Static_assert(__builtin_offsetof(struct dp_scratch, stats) == 0, "the counters are first (view.py)");
DP_MAP("percpu_array", u32, struct dp_scratch, dp_scratch, 1);
DP_MAP("prog", u32, u32, dp_progs, 1);
#define DP_PROG_MEGAFLOW 0
_BPF_XSKMAP(upcall_xsks, DP_MAX_PORTS * DP_MAX_QUEUES, DP_PIN(upcall_xsks));

#endif
