/* emc.c: the program attached to every port. First the simple match (simple_match.h: a port-to-port megaflow found
 * from the ingress port and the Ethernet type, with no parse). Otherwise it parses the packet into the per-CPU
 * scratch, looks it up in the exact-match cache (EMC), runs the actions on a hit, and tail-calls mf_rx (megaflow.c)
 * on a miss.
 * A short key (an IPv4 packet's: dp_parse) is hashed and compared over its first words only, the rest being zero.
 * An EMC entry names a megaflow by index and generation; a deleted or replaced megaflow has a new
 * generation, so a stale entry is a miss, never a wrong action (as OVS's EMC checks flow->dead).
 * The probe is skipped when the EMC is off (emc_insert_inv_prob 0, as OVS skips emc_lookup) and, per CPU,
 * while recent probes have mostly missed (emc_sample): with far more flows than the EMC holds a probe is a
 * cache miss that saves nothing, which is the cost OVS's signature match cache exists to avoid. A skipped probe
 * skips the whole-key hash too (dp_flow_hash: computed when first needed). */
#include "simple_match.h"

/* After a miss: once EMC_SAMPLE probes are in, judge them; under 1 hit in EMC_MIN_HIT_RATIO, skip the next
 * EMC_SKIP packets' probes, twice as many after each such verdict in a row, up to EMC_SKIP << EMC_BACKOFF_MAX
 * (while the EMC thrashes, 6 % of packets probe at first, 0.4 % after four verdicts). */
static __always_inline void emc_sample(struct emc_sampler *es)
{
    if (es->probes < EMC_SAMPLE)
        return;
    if ((__u64)es->hits * EMC_MIN_HIT_RATIO < es->probes) {
        __u32 b = es->backoff < EMC_BACKOFF_MAX ? es->backoff : EMC_BACKOFF_MAX;
        es->skip = EMC_SKIP << b;
        es->backoff = b + 1;
    } else {
        es->backoff = 0;
    }
    es->probes = 0;
    es->hits = 0;
}

int emc_rx(struct xdp_md *ctx)
{
    __u32 zero = 0;
    __u32 in_port = dp_in_port(ctx);
    if (in_port == DP_NO_PORT) {
        struct dp_scratch *sc = dp_scratch.lookup(&zero);
        if (sc)
            dp_stat_add(sc, DP_STAT_LOST, 1);
        dp_drop_count(DROP_UNKNOWN_INGRESS, 0);
        return XDP_DROP;
    }
    struct dp_port_stats *ps = dp_port_stats.lookup(&in_port);
    if (ps) {
        ps->rx_packets++;
        ps->rx_bytes += ctx->data_end - ctx->data;
    }

    struct dp_config *cfg = dp_config.lookup(&zero);
    if (cfg && !(cfg->flags & DP_CFG_NO_SIMPLE)) {
        __u32 idx;
        struct mf_entry *f;
        __u64 w0;
        if (mf_simple_lookup(ctx, in_port, &idx, &f, &w0)) {
            struct dp_scratch *ss = dp_scratch.lookup(&zero);
            if (!ss)
                return XDP_ABORTED;
            /* all a simple-match megaflow's actions read of the packet's state (dpif.is_simple_match admits only
             * outputs, floods, groups and drops): the ingress port. The rest of the scratch is the last parse's. */
            KEY_WORD(&ss->key, 0) = w0;
            dp_stat_add(ss, DP_STAT_SIMPLE_HIT, 1);
            return dp_hit(ctx, idx, f, ss, DP_STAT_MF_HIT);
        }
    }

    struct dp_scratch *s = dp_parse_from(ctx, in_port);
    if (!s)
        return XDP_ABORTED;

    struct emc_sampler *es = emc_sampler.lookup(&zero);
    if (cfg && cfg->emc_insert_inv_prob && es && !es->skip) {
        es->probes++;
        __u32 slot = dp_flow_hash(s) & (EMC_ENTRIES - 1);
        struct emc_entry *e = emc_entries.lookup(&slot);
        /* short_key is a function of the key: keys whose flags differ differ; two short keys differ, if at all,
         * in their first words */
        if (e && e->gen && e->short_key == s->short_key &&
            (s->short_key ? flow_key_equal(&e->key, &s->key, FLOW_KEY_SHORT_WORDS)
                          : flow_key_equal(&e->key, &s->key, FLOW_KEY_WORDS))) {
            __u32 idx = e->flow_idx;
            struct mf_entry *f = mf_entries.lookup(&idx);
            if (f && f->gen == e->gen) {
                es->hits++;
                return dp_hit(ctx, idx, f, s, DP_STAT_EMC_HIT);
            }
        }
        emc_sample(es);
    } else {
        if (es && es->skip)
            es->skip--;
        dp_stat_add(s, DP_STAT_EMC_SKIP, 1);
    }

    dp_progs.call(ctx, DP_PROG_MEGAFLOW);
    /* only reached when mf_rx is not in dp_progs */
    dp_stat_add(s, DP_STAT_LOST, 1);
    dp_drop_count(DROP_NO_PROGRAM, in_port);
    return XDP_DROP;
}
