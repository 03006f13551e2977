/* simple_match.h: Open vSwitch's simple match (dpif-netdev, since 2.17), tried by emc_rx before it parses the packet.
 * Included by emc.c. A megaflow that matches only the ingress port and the Ethernet type (MF_F_SIMPLE, dp_structs.h),
 * as a port-to-port rule's does, is found from the port (mf_simple) and the frame's Ethernet type alone: no flow key,
 * no flow hash, no EMC probe. Only an untagged frame that is not an IPv4 fragment takes this path, since its vlan_tci
 * and nw_frag are then 0 as the parser would set them, and an MF_F_SIMPLE megaflow's masked values of both are 0; every
 * other frame, and one whose megaflow is not there, goes on to the parse and the EMC as before. */
#ifndef XDPSWITCH_SIMPLE_MATCH_H
#define XDPSWITCH_SIMPLE_MATCH_H

#include "actions.h"

/* The simple-match megaflow of this frame from in_port: its index in *flow_idx and entry in *fe, and the flow key's
 * first word (in_port, vlan_tci 0, dl_type: KEY_WORD 0) in *word0. 0: none, parse the frame. */
static __always_inline int mf_simple_lookup(struct xdp_md *ctx, __u32 in_port, __u32 *flow_idx,
                                            struct mf_entry **fe, __u64 *word0)
{
    struct mf_simple *sm = mf_simple.lookup(&in_port);
    if (!sm || !sm->idx[0])
        return 0;
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return 0;
    __be16 type = eth->h_proto;
    if (type == bpf_htons(ETH_P_IP_)) {
        struct iphdr *ip = (void *)(eth + 1);
        /* a fragment's nw_frag is not 0 (or a malformed header's is, which the parser decides): parse it */
        if ((void *)ip + 8 > end || (ip->frag_off & bpf_htons(0x3fff)))
            return 0;
    } else if (bpf_ntohs(type) < ETH_TYPE_MIN_ || type == bpf_htons(ETH_P_8021Q_) ||
               type == bpf_htons(ETH_P_8021AD_)) {
        return 0; /* 802.3 or tagged: no simple megaflow has this type (the ways' check would refuse each one) */
    }
    __u64 w0 = in_port | (__u64)type << 48;
#pragma unroll
    for (int j = 0; j < MF_SIMPLE_WAYS; j++) {
        __u32 i = sm->idx[j];
        if (!i)
            return 0;
        i -= 1;
        struct mf_entry *f = mf_entries.lookup(&i);
        if (f && (f->flags & MF_F_SIMPLE) && (f->gen & 1) && KEY_WORD(&f->key, 0) == w0) {
            *flow_idx = i;
            *fe = f;
            *word0 = w0;
            return 1;
        }
    }
    return 0;
}

#endif
