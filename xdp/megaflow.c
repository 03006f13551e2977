/* megaflow.c: the megaflow cache, tail-called by emc_rx on an EMC miss with the parsed key in dp_scratch.
 * Tuple space search: one subtable per distinct mask, visited in mf_order (ranked by recent hits by user
 * space). First the per-CPU hint at the packet's flow hash (dp_flow_hash) is tried: the megaflow the last
 * packet there hit (OVS's signature match cache idea), checked like any candidate, then its subtable (the
 * kernel datapath's mask cache idea), so most hits cost no masked hash at all and the rest one masked lookup.
 * With a single subtable the hint is neither read nor written. A hit runs the actions and, on 1 in
 * emc_insert_inv_prob hits, fills the EMC; a miss goes to user space through upcall_xsks. */
#include "actions.h"

/* A hint (mf_hints): bits 0-31 the megaflow's index, 32-39 its mask id + 1 (0: no hint), 40-63 the flow hash's
 * bits 8-31 (the slot is its low bits): a packet whose hash differs there is another flow's, whose megaflow it
 * does not fetch; it tries the hinted subtable only. */
#define MF_HINT_SIG_MASK 0xffffff00U
_Static_assert(MF_MAX_MASKS <= 255, "a hint keeps the mask id + 1 in 8 bits");

static __always_inline __u64 mf_hint_pack(__u32 hash, __u32 mid, __u32 idx)
{
    return ((__u64)((hash & MF_HINT_SIG_MASK) | (mid + 1)) << 32) | idx;
}

/* Whether megaflow i is this packet's in subtable mid (mask m): alive, in that subtable, and its masked key the
 * packet's. On a match, *flow_idx, *fe and *gen describe it. */
static __always_inline int mf_is_match(__u32 i, __u32 mid, const __u64 *m, const struct flow_key *key,
                                       __u32 *flow_idx, struct mf_entry **fe, __u32 *gen)
{
    struct mf_entry *f = mf_entries.lookup(&i);
    if (!f || f->mask_id != mid)
        return 0;
    if (!mf_key_match((const __u64 *)key, m, (const __u64 *)&f->key))
        return 0; /* a packet whose masked key merely shares the tag or the hint: not this megaflow */
    __u32 g = f->gen;
    if (!(g & 1))
        return 0; /* being deleted */
    *flow_idx = i;
    *fe = f;
    *gen = g;
    return 1;
}

/* Look the key up in subtable mid (its mask m, from mf_masks): hash its words the mask covers, masked, compare the tags of its bucket in
 * mf_buckets, then the one entry whose tag matched: its subtable and masked key (over the mask's words). On a hit, *flow_idx,
 * *fe and *gen describe the megaflow. Every map here is an array: the verifier inlines their lookups (no hashing
 * of map keys). */
static __always_inline int mf_lookup_mask(__u32 mid, const __u64 *m, const struct flow_key *key, __u32 seed,
                                          __u32 *flow_idx, struct mf_entry **fe, __u32 *gen)
{
    __u64 h = mf_hash_masked((const __u64 *)key, m, mf_seed(seed, mid));
    __u32 bi = (__u32)h & (MF_BUCKETS - 1);
    __u32 tag = (__u32)(h >> 32) | 1;
    struct mf_bucket *b = mf_buckets.lookup(&bi);
    if (!b)
        return 0;
    __u32 i = MF_MAX_FLOWS; /* none */
#pragma unroll
    for (int j = 0; j < MF_BUCKET_WAYS; j++)
        if (b->tag[j] == tag)
            i = b->idx[j];
    if (i >= MF_MAX_FLOWS)
        return 0;
    return mf_is_match(i, mid, m, key, flow_idx, fe, gen);
}

int mf_rx(struct xdp_md *ctx)
{
    __u32 zero = 0;
    struct dp_scratch *s = dp_scratch.lookup(&zero);
    struct dp_config *cfg = dp_config.lookup(&zero);
    if (!s || !cfg)
        return XDP_ABORTED;

    __u32 seed = cfg->hash_seed;
    struct mf_entry *f = 0;
    __u32 idx = 0, gen = 0, mid = 0, lookups = 0;
    int found = 0;

    __u32 oslot = cfg->mf_order_slot & 1;
    struct mf_order *order = mf_order.lookup(&oslot);
    __u32 n = order ? order->n_masks : 0;
    /* with one subtable there is nothing to choose: no hint to read or keep */
    __u64 *hint = 0;
    __u32 h = 0;
    if (!(cfg->flags & DP_CFG_NO_HINTS) && n > 1) {
        h = dp_flow_hash(s);
        __u32 hslot = h & (MF_HINT_ENTRIES - 1);
        hint = mf_hints.lookup(&hslot);
    }
    __u64 hv = hint ? *hint : 0;
    __u32 hinted = (__u32)(hv >> 32) & 0xff; /* mask id + 1 */
    if (hinted && hinted <= MF_MAX_MASKS) {
        mid = hinted - 1;
        lookups = 1;
        const __u64 *m = (const __u64 *)mf_masks.lookup(&mid);
        if (m) {
            /* this flow's own hint (else another flow's at the slot): its megaflow first, then the subtable */
            if (!(((__u32)(hv >> 32) ^ h) & MF_HINT_SIG_MASK))
                found = mf_is_match((__u32)hv, mid, m, &s->key, &idx, &f, &gen);
            if (!found)
                found = mf_lookup_mask(mid, m, &s->key, seed, &idx, &f, &gen);
        }
        if (found)
            dp_stat_add(s, DP_STAT_HINT_HIT, 1);
    }
    if (!found) {
        if (order) {
            for (__u32 i = 0; i < MF_MAX_MASKS; i++) {
                if (i >= n)
                    break;
                __u32 w = order->ids[i];
                if (w + 1 == hinted)
                    continue;
                lookups++;
                const __u64 *wm = (const __u64 *)mf_masks.lookup(&w);
                if (wm && mf_lookup_mask(w, wm, &s->key, seed, &idx, &f, &gen)) {
                    mid = w;
                    found = 1;
                    break;
                }
            }
        }
    }
    dp_stat_add(s, DP_STAT_MASK_LOOKUPS, lookups);

    if (!found || !f) {
        __u32 in_port = s->key.in_port;
        if (dp_upcall_limited(in_port)) {
            dp_stat_add(s, DP_STAT_LOST, 1);
            dp_drop_count(DROP_UPCALL_LIMIT, in_port);
            return XDP_DROP;
        }
        int v = dp_upcall(ctx, in_port, dp_flow_hash(s), UPCALL_MISS);
        if (v == XDP_REDIRECT) {
            dp_stat_add(s, DP_STAT_MISS, 1);
        } else {
            dp_stat_add(s, DP_STAT_LOST, 1);
            dp_drop_count(DROP_NO_UPCALL_SOCKET, in_port);
        }
        return v;
    }

    __u64 *mh = mf_mask_hits.lookup(&mid);
    if (mh)
        *mh += 1;
    if (hint) {
        __u64 nv = mf_hint_pack(h, mid, idx);
        if (nv != hv) /* unchanged: no store (a hit on the hinted megaflow writes nothing) */
            *hint = nv;
    }

    __u32 inv = cfg->emc_insert_inv_prob;
    if (inv && (inv == 1 || ((__u64)dp_random(s) * inv) >> 32 == 0)) { /* 1 in inv, no division */
        __u32 slot = dp_flow_hash(s) & (EMC_ENTRIES - 1);
        struct emc_entry *e = emc_entries.lookup(&slot);
        if (e) {
            __builtin_memcpy(&e->key, &s->key, sizeof(e->key));
            e->flow_idx = idx;
            e->short_key = s->short_key;
            e->gen = gen;
            dp_stat_add(s, DP_STAT_EMC_INSERT, 1);
        }
    }
    return dp_hit(ctx, idx, f, s, DP_STAT_MF_HIT);
}
