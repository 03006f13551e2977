/* stats.h: counter helpers. Included by emc.c, megaflow.c and baseline.c (through actions.h). */
#ifndef XDPSWITCH_STATS_H
#define XDPSWITCH_STATS_H

#include "dp_maps.h"

/* Add n to this CPU's counter idx (enum dp_stat). The counters live in the per-CPU scratch, which every program has
 * in hand: no map lookup per count. */
static __always_inline void dp_stat_add(struct dp_scratch *s, __u32 idx, __u64 n)
{
    if (idx < DP_STAT_MAX)
        s->stats[idx] += n;
}

static __always_inline void dp_drop_count(__u32 reason, __u32 in_port)
{
    __u64 *v = dp_drops.lookup(&reason);
    if (v)
        *v += 1;
    struct dp_port_stats *ps = dp_port_stats.lookup(&in_port);
    if (ps)
        ps->drops++;
}

#endif
