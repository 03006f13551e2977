/* emc.c: the program attached to every port. Parses the packet into the per-CPU scratch, looks it up in
 * the exact-match cache (EMC), runs the actions on a hit, and tail-calls mf_rx (megaflow.c) on a miss.
 * An EMC entry names a megaflow by index and generation; a deleted or replaced megaflow has a new
 * generation, so a stale entry is a miss, never a wrong action (as OVS's EMC checks flow->dead). */
#include "actions.h"

int emc_rx(struct xdp_md *ctx)
{
    struct dp_scratch *s = dp_parse(ctx);
    if (!s) {
        dp_stat_add(DP_STAT_LOST, 1);
        dp_drop_count(DROP_UNKNOWN_INGRESS, 0);
        return XDP_DROP;
    }
    s->hash = flow_key_hash(&s->key);

    __u32 in_port = s->key.in_port;
    struct dp_port_stats *ps = dp_port_stats.lookup(&in_port);
    if (ps) {
        ps->rx_packets++;
        ps->rx_bytes += ctx->data_end - ctx->data;
    }

    __u32 slot = s->hash & (EMC_ENTRIES - 1);
    struct emc_entry *e = emc_entries.lookup(&slot);
    if (e && e->gen && flow_key_equal(&e->key, &s->key)) {
        __u32 idx = e->flow_idx;
        struct mf_entry *f = mf_entries.lookup(&idx);
        if (f && f->gen == e->gen)
            return dp_hit(ctx, idx, f, s, DP_STAT_EMC_HIT);
    }

    dp_progs.call(ctx, DP_PROG_MEGAFLOW);
    /* only reached when mf_rx is not in dp_progs */
    dp_stat_add(DP_STAT_LOST, 1);
    dp_drop_count(DROP_NO_PROGRAM, in_port);
    return XDP_DROP;
}
