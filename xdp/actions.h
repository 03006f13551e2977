/* actions.h: runs a megaflow's datapath actions on the packet, and the upcall.
 * Included by emc.c and megaflow.c: an EMC hit and a megaflow hit run the same code. Checksums are
 * updated incrementally (RFC 1624) on every rewrite that touches them. */
#ifndef XDPSWITCH_ACTIONS_H
#define XDPSWITCH_ACTIONS_H

#include "parser.h"
#include "stats.h"

#define DP_VERDICT_UPCALL 0x100 /* not an XDP action: "send this to user space" */

static __always_inline __u32 csum_diff16(__u16 from, __u16 to)
{
    return (__u16)~from + (__u32)to;
}

static __always_inline __u32 csum_diff32(__u32 from, __u32 to)
{
    return csum_diff16(from & 0xffff, to & 0xffff) + csum_diff16(from >> 16, to >> 16);
}

/* Apply a sum of csum_diff*() terms to a checksum field. */
static __always_inline __u16 csum_apply(__u16 csum, __u32 diff)
{
    __u32 s = (__u16)~csum + diff;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return ~(__u16)s;
}

/* A pointer to len bytes at off, or NULL when the packet is shorter. */
#define PKT_AT(ctx, off, len) ({ \
    void *_d = (void *)(long)(ctx)->data; \
    void *_e = (void *)(long)(ctx)->data_end; \
    void *_p = _d + ((off) & PKT_OFF_MASK); \
    (_p + (len) > _e) ? (void *)0 : _p; })

/* Fix the L4 checksum after a pseudo-header (address) change worth diff. */
static __always_inline void l4_csum_fix(struct xdp_md *ctx, struct dp_scratch *ps, __u32 diff)
{
    if (!ps->l4_off)
        return;
    if (ps->key.nw_proto == IPPROTO_TCP_) {
        __u16 *c = PKT_AT(ctx, ps->l4_off + 16, 2);
        if (c)
            *c = csum_apply(*c, diff);
    } else if (ps->key.nw_proto == IPPROTO_UDP_) {
        __u16 *c = PKT_AT(ctx, ps->l4_off + 6, 2);
        if (c && (*c || ps->key.dl_type == bpf_htons(ETH_P_IPV6_))) {
            *c = csum_apply(*c, diff);
            if (!*c)
                *c = 0xffff;
        }
    } else if (ps->key.nw_proto == IPPROTO_ICMPV6_ && ps->key.dl_type == bpf_htons(ETH_P_IPV6_)) {
        __u16 *c = PKT_AT(ctx, ps->l4_off + 2, 2);
        if (c)
            *c = csum_apply(*c, diff);
    }
}

static __always_inline __u32 act_set_ipv4(struct xdp_md *ctx, struct dp_scratch *ps, __u32 field, __u32 addr)
{
    if (ps->key.dl_type != bpf_htons(ETH_P_IP_) || !ps->l3_off)
        return DROP_BAD_ACTION;
    struct iphdr *ip = PKT_AT(ctx, ps->l3_off, sizeof(struct iphdr));
    if (!ip)
        return DROP_BAD_ACTION;
    __u32 *a = field ? &ip->daddr : &ip->saddr;
    __u32 diff = csum_diff32(*a, addr);
    *a = addr;
    ip->check = csum_apply(ip->check, diff);
    l4_csum_fix(ctx, ps, diff);
    return 0;
}

static __always_inline __u32 act_set_ipv6(struct xdp_md *ctx, struct dp_scratch *ps, __u32 field,
                                          const __u8 *addr)
{
    if (ps->key.dl_type != bpf_htons(ETH_P_IPV6_) || !ps->l3_off)
        return DROP_BAD_ACTION;
    __u32 *a = PKT_AT(ctx, ps->l3_off + (field ? 24 : 8), 16);
    if (!a)
        return DROP_BAD_ACTION;
    const __u32 *n = (const __u32 *)addr;
    __u32 diff = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        diff += csum_diff32(a[i], n[i]);
        a[i] = n[i];
    }
    l4_csum_fix(ctx, ps, diff);
    return 0;
}

static __always_inline __u32 act_set_tp(struct xdp_md *ctx, struct dp_scratch *ps, __u32 field, __be16 port)
{
    if (!ps->l4_off)
        return DROP_BAD_ACTION;
    if (ps->key.nw_proto == IPPROTO_SCTP_)
        return DROP_UNSUPPORTED; /* its checksum is a CRC32c over the whole packet */
    if (ps->key.nw_proto != IPPROTO_TCP_ && ps->key.nw_proto != IPPROTO_UDP_)
        return DROP_BAD_ACTION;
    __be16 *p = PKT_AT(ctx, ps->l4_off + (field ? 2 : 0), 2);
    if (!p)
        return DROP_BAD_ACTION;
    __u32 diff = csum_diff16(*p, port);
    *p = port;
    l4_csum_fix(ctx, ps, diff);
    return 0;
}

static __always_inline __u32 act_dscp(struct xdp_md *ctx, struct dp_scratch *ps, __u8 dscp)
{
    if (ps->key.dl_type == bpf_htons(ETH_P_IP_) && ps->l3_off) {
        __u16 *w = PKT_AT(ctx, ps->l3_off, 2);      /* version/ihl, tos */
        if (!w)
            return DROP_BAD_ACTION;
        __u8 *b = (__u8 *)w;
        __u16 old = *w;
        b[1] = (dscp << 2) | (b[1] & 3);
        struct iphdr *ip = PKT_AT(ctx, ps->l3_off, sizeof(struct iphdr));
        if (!ip)
            return DROP_BAD_ACTION;
        ip->check = csum_apply(ip->check, csum_diff16(old, *(__u16 *)ip));
        return 0;
    }
    if (ps->key.dl_type == bpf_htons(ETH_P_IPV6_) && ps->l3_off) {
        __u8 *b = PKT_AT(ctx, ps->l3_off, 2);      /* version | tclass | flow label */
        if (!b)
            return DROP_BAD_ACTION;
        __u8 tc = (b[0] << 4) | (b[1] >> 4);
        tc = (dscp << 2) | (tc & 3);
        b[0] = (b[0] & 0xf0) | (tc >> 4);
        b[1] = (b[1] & 0x0f) | (tc << 4);
        return 0;
    }
    return DROP_BAD_ACTION;
}

static __always_inline __u32 act_dec_ttl(struct xdp_md *ctx, struct dp_scratch *ps)
{
    if (ps->key.dl_type == bpf_htons(ETH_P_IP_) && ps->l3_off) {
        struct iphdr *ip = PKT_AT(ctx, ps->l3_off, sizeof(struct iphdr));
        if (!ip)
            return DROP_BAD_ACTION;
        if (ip->ttl <= 1)
            return DROP_TTL_EXPIRED;
        __u16 old = *(__u16 *)&ip->ttl; /* ttl, protocol */
        ip->ttl--;
        ip->check = csum_apply(ip->check, csum_diff16(old, *(__u16 *)&ip->ttl));
        return 0;
    }
    if (ps->key.dl_type == bpf_htons(ETH_P_IPV6_) && ps->l3_off) {
        struct ipv6hdr *ip6 = PKT_AT(ctx, ps->l3_off, sizeof(struct ipv6hdr));
        if (!ip6)
            return DROP_BAD_ACTION;
        if (ip6->hop_limit <= 1)
            return DROP_TTL_EXPIRED;
        ip6->hop_limit--;
        return 0;
    }
    return DROP_BAD_ACTION;
}

/* The VLAN tags a frame carries now, read and written through memory every time: the verifier then keeps no
 * exact count across the action loop, which would multiply the states it walks (one per count). */
#define TAGS(ps) (*(volatile __u32 *)&(ps)->tagged)

static __always_inline __u32 act_push_vlan(struct xdp_md *ctx, struct dp_scratch *ps, __be16 tci, __u32 tpid)
{
    __u8 macs[12];
    __u8 *old = PKT_AT(ctx, 0, 14);
    if (!old)
        return DROP_BAD_ACTION;
    __builtin_memcpy(macs, old, 12);
    if (bpf_xdp_adjust_head(ctx, -VLAN_HLEN_))
        return DROP_ADJUST_FAILED;
    __u8 *eth = PKT_AT(ctx, 0, 18);
    if (!eth)
        return DROP_ADJUST_FAILED;
    __builtin_memcpy(eth, macs, 12);
    *(__be16 *)(eth + 12) = bpf_htons(tpid);
    *(__be16 *)(eth + 14) = tci & ~bpf_htons(VLAN_CFI);
    if (ps->l3_off)
        ps->l3_off += VLAN_HLEN_;
    if (ps->l4_off)
        ps->l4_off += VLAN_HLEN_;
    TAGS(ps) = TAGS(ps) + 1;
    return 0;
}

static __always_inline __u32 act_pop_vlan(struct xdp_md *ctx, struct dp_scratch *ps)
{
    __u8 macs[12];
    __u8 *eth = PKT_AT(ctx, 0, 18);
    if (!eth || !TAGS(ps))
        return DROP_BAD_ACTION;
    __builtin_memcpy(macs, eth, 12);
    if (bpf_xdp_adjust_head(ctx, VLAN_HLEN_))
        return DROP_ADJUST_FAILED;
    eth = PKT_AT(ctx, 0, 14);
    if (!eth)
        return DROP_ADJUST_FAILED;
    __builtin_memcpy(eth, macs, 12);
    if (ps->l3_off)
        ps->l3_off -= VLAN_HLEN_;
    if (ps->l4_off)
        ps->l4_off -= VLAN_HLEN_;
    TAGS(ps) = TAGS(ps) - 1;
    return 0;
}

/* The skb path: pass the packet up with a note for dp_skb_tx (tc ingress), which redirects the skb. */
static __always_inline int dp_skb_pass(struct xdp_md *ctx, struct dp_scratch *ps, __u16 kind, __u16 arg)
{
    if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct dp_skb_meta))) {
        ps->reason = DROP_ADJUST_FAILED;
        return XDP_DROP;
    }
    struct dp_skb_meta *m = (void *)(long)ctx->data_meta;
    if ((void *)(m + 1) > (void *)(long)ctx->data) {
        ps->reason = DROP_ADJUST_FAILED;
        return XDP_DROP;
    }
    m->magic = DP_SKB_MAGIC;
    m->kind = kind;
    m->arg = arg;
    m->in_port = ps->key.in_port;
    ps->reason = 0;
    return XDP_PASS;
}

static __always_inline int dp_skb_flood(void)
{
    __u32 zero = 0;
    struct dp_config *cfg = dp_config.lookup(&zero);
    return cfg && (cfg->flags & DP_CFG_SKB_FLOOD);
}

static __always_inline int act_group(__u32 g)
{
    const __u64 f = BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS;
    switch (g) {
    case 0: return dp_group0.redirect_map(0, f);
    case 1: return dp_group1.redirect_map(0, f);
    case 2: return dp_group2.redirect_map(0, f);
    case 3: return dp_group3.redirect_map(0, f);
    case 4: return dp_group4.redirect_map(0, f);
    case 5: return dp_group5.redirect_map(0, f);
    case 6: return dp_group6.redirect_map(0, f);
    case 7: return dp_group7.redirect_map(0, f);
    }
    return XDP_DROP;
}

static __always_inline void dp_count(void *map_lookup_result, __u64 len)
{
    struct dp_bucket_stats *c = map_lookup_result;
    if (c) {
        c->packets++;
        c->bytes += len;
    }
}

/* Raise an AF DSCP's drop precedence by prec (at most to 3): AF11 (10) becomes AF12 (12). Other DSCPs stay. */
static __always_inline __u32 act_dscp_remark(struct xdp_md *ctx, struct dp_scratch *ps, __u32 prec)
{
    __u8 *b = 0;
    __u8 dscp;
    if (ps->key.dl_type == bpf_htons(ETH_P_IP_) && ps->l3_off) {
        b = PKT_AT(ctx, ps->l3_off, 2);
        if (!b)
            return DROP_BAD_ACTION;
        dscp = b[1] >> 2;
    } else if (ps->key.dl_type == bpf_htons(ETH_P_IPV6_) && ps->l3_off) {
        b = PKT_AT(ctx, ps->l3_off, 2);
        if (!b)
            return DROP_BAD_ACTION;
        dscp = ((b[0] & 0x0f) << 2) | (b[1] >> 6);
    } else {
        return 0;
    }
    __u32 cls = dscp >> 3, drop = (dscp >> 1) & 3;
    if (cls < 1 || cls > 4 || drop < 1 || (dscp & 1))
        return 0;
    drop += prec;
    if (drop > 3)
        drop = 3;
    return act_dscp(ctx, ps, (cls << 3) | (drop << 1));
}

#define METER_MAX_IDLE_NS 10000000000ULL   /* a refill never adds more than 10 s of tokens (no overflow) */

/* A meter's token buckets (OpenFlow 1.3): refill every band for the time since the last refill (one CPU claims each
 * interval with a compare-and-swap), take the packet's cost from the buckets that have it, and return the exceeded
 * band with the highest rate, or DP_METER_MAX_BANDS when the packet is within every rate. */
static __always_inline __u32 meter_band_hit(struct dp_meter *m, __u64 len)
{
    __u64 now = bpf_ktime_get_ns();
    __u64 last = m->last_ns;
    __u32 n = m->n_bands;
    if (now > last && __sync_val_compare_and_swap(&m->last_ns, last, now) == last) {
        __u64 el = now - last;
        if (el > METER_MAX_IDLE_NS)
            el = METER_MAX_IDLE_NS;
#pragma unroll
        for (__u32 b = 0; b < DP_METER_MAX_BANDS; b++) {
            if (b >= n)
                break;
            struct dp_meter_band *band = &m->bands[b];
            __s64 add = el * band->rate;
            __s64 t = __sync_fetch_and_add(&band->tokens, add) + add;
            if (t > (__s64)band->burst)
                band->tokens = band->burst;   /* a full bucket: a race here only loses what overflowed anyway */
        }
    }
    __s64 cost = (m->flags & DP_METER_PKTPS) ? 1000000000LL : (__s64)len * 8000000LL;
    __u32 hit = DP_METER_MAX_BANDS;
    __u64 hit_rate = 0;
#pragma unroll
    for (__u32 b = 0; b < DP_METER_MAX_BANDS; b++) {
        if (b >= n)
            break;
        struct dp_meter_band *band = &m->bands[b];
        if (band->tokens >= cost)
            __sync_fetch_and_sub(&band->tokens, cost);
        else if (band->rate >= hit_rate) {
            hit = b;
            hit_rate = band->rate;
        }
    }
    return hit;
}

/* The meter instruction: count the packet in, and apply the band it exceeds. Returns 0 (pass, maybe remarked) or
 * a drop reason. */
static __always_inline __u32 act_meter(struct xdp_md *ctx, struct dp_scratch *ps, __u32 slot)
{
    struct dp_meter *m = dp_meters.lookup(&slot);
    if (!m)
        return DROP_BAD_ACTION;
    __u64 len = ctx->data_end - ctx->data;
    __u32 k = slot * (1 + DP_METER_MAX_BANDS);
    dp_count(dp_meter_stats.lookup(&k), len);
    __u32 hit = meter_band_hit(m, len);
    if (hit >= DP_METER_MAX_BANDS)
        return 0;
    __u32 type = 0, prec = 0;
    switch (hit) {  /* constant indexes: the verifier follows them */
    case 0: type = m->bands[0].type; prec = m->bands[0].prec_level; break;
    case 1: type = m->bands[1].type; prec = m->bands[1].prec_level; break;
    case 2: type = m->bands[2].type; prec = m->bands[2].prec_level; break;
    default: type = m->bands[3].type; prec = m->bands[3].prec_level; break;
    }
    k += 1 + hit;
    dp_count(dp_meter_stats.lookup(&k), len);
    if (type == 2)
        return act_dscp_remark(ctx, ps, prec);
    return DROP_METER;
}

/* The upcall limits (OVS has them for the controller path; here for every upcall, so one port's flood of new flows
 * is dropped at the driver, counted, before it can take the handlers from the others): the ingress port's meter,
 * then the whole datapath's (dp_upcall_meters[0]). A meter without bands is no limit. */
static __always_inline int dp_upcall_limited(__u32 in_port)
{
    __u32 zero = 0;
    struct dp_meter *m = dp_upcall_meters.lookup(&in_port);
    if (m && m->n_bands && meter_band_hit(m, 0) < DP_METER_MAX_BANDS)
        return 1;
    m = dp_upcall_meters.lookup(&zero);
    return m && m->n_bands && meter_band_hit(m, 0) < DP_METER_MAX_BANDS;
}

/* Where the actions go on after a select group's action: its bucket's first action (counted in the bucket's slot). */
static __always_inline __u32 act_select(struct xdp_md *ctx, struct dp_scratch *ps, const struct dp_action *a)
{
    __u32 v = dp_select_hash(&ps->key) % 0xffff;
    __u32 n = a->data[0];
    __u32 pick = DP_SELECT_MAX_BUCKETS;
#pragma unroll
    for (__u32 b = 0; b < DP_SELECT_MAX_BUCKETS; b++) {
        __u16 thr = a->data[1 + 3 * b] | (__u16)a->data[2 + 3 * b] << 8;
        if (pick == DP_SELECT_MAX_BUCKETS && b < n && v < thr)
            pick = b;
    }
    if (pick == DP_SELECT_MAX_BUCKETS)
        return 0;  /* no bucket: the caller drops */
    __u32 slot = a->arg32 + pick;
    dp_count(dp_bucket_stats.lookup(&slot), ctx->data_end - ctx->data);
    switch (pick) {  /* constant offsets into data[]: the verifier reads no variable index into a map value */
    case 0: return a->data[3];
    case 1: return a->data[6];
    case 2: return a->data[9];
    case 3: return a->data[12];
    default: return a->data[15];
    }
}

/* The output action: a redirect to the port through dp_tx_ports (or the skb path, for a port whose device takes no
 * XDP redirects), counted in the port's tx counters. */
static __always_inline int act_output(struct xdp_md *ctx, struct dp_scratch *ps, __u32 port)
{
    struct dp_port_cfg *pc = dp_port_cfg.lookup(&port);
    if (pc && (pc->flags & DP_PORT_SKB_TX))
        return dp_skb_pass(ctx, ps, DP_SKB_OUTPUT, port);  /* counted by dp_skb_tx */
    int v = dp_tx_ports.redirect_map(port, XDP_DROP);
    if (v != XDP_REDIRECT) {
        ps->reason = DROP_NO_PORT;
        return XDP_DROP;
    }
    struct dp_port_stats *st = dp_port_stats.lookup(&port);
    if (st) {
        st->tx_packets++;
        st->tx_bytes += ctx->data_end - ctx->data;
    }
    ps->reason = 0;
    return v;
}

/* The action dp_execute() goes on at, read and written through memory (as TAGS): a select group's jump then does not
 * split the verifier's states of the action loop by target. */
#define NEXT(ps) (*(volatile __u32 *)&(ps)->next)

/* Run the actions. Returns an XDP action or DP_VERDICT_UPCALL; ps->reason says why a packet was dropped. */
static __always_inline int dp_execute(struct xdp_md *ctx, const struct mf_entry *f, struct dp_scratch *ps)
{
    __u32 n = f->n_actions;
    ps->reason = DROP_ACTION;
    NEXT(ps) = 0;
    for (__u32 i = 0; i < MF_MAX_ACTIONS; i++) {
        if (i >= n)
            break;
        /* keep i a plain counter: clang would otherwise end the loop on "offset == min(n, MAX) * 24", a bound the
         * verifier cannot follow */
        asm volatile("" : "+r"(i));
        if (i >= MF_MAX_ACTIONS)
            break;
        const struct dp_action *a = &f->actions[i];
        __u32 r = 0;
        /* an action before NEXT is another select bucket's: it runs as DP_ACT_NONE (a "continue" here lets clang
         * read actions[MF_MAX_ACTIONS] on a path the verifier cannot rule out) */
        __u32 type = i < NEXT(ps) ? DP_ACT_NONE : a->type;
        if (type == DP_ACT_OUTPUT)   /* most megaflows end in one: one compare, not a walk of the switch's */
            return act_output(ctx, ps, bpf_ntohs(a->arg16));
        switch (type) {
        case DP_ACT_NONE:
            break;
        case DP_ACT_GROUP:
            if (dp_skb_flood())
                return dp_skb_pass(ctx, ps, DP_SKB_GROUP, a->arg32);
            ps->reason = 0;
            return act_group(a->arg32);
        case DP_ACT_FLOOD:
            if (dp_skb_flood())
                return dp_skb_pass(ctx, ps, DP_SKB_FLOOD, 0);
            ps->reason = 0;
            return dp_tx_ports.redirect_map(0, BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS);
        case DP_ACT_UPCALL:
            ps->reason = 0;
            return DP_VERDICT_UPCALL;
        case DP_ACT_DROP: /* arg16: the drop reason, 0 for DROP_ACTION */
            if (a->arg16)
                ps->reason = bpf_ntohs(a->arg16);
            return XDP_DROP;
        case DP_ACT_SET_ETH_SRC:
        case DP_ACT_SET_ETH_DST: {
            __u8 *eth = PKT_AT(ctx, 0, 14);
            if (!eth) {
                r = DROP_BAD_ACTION;
                break;
            }
            __builtin_memcpy(eth + (a->type == DP_ACT_SET_ETH_SRC ? 6 : 0), a->data, 6);
            break;
        }
        case DP_ACT_PUSH_VLAN:
            r = act_push_vlan(ctx, ps, a->arg16, a->arg32);
            break;
        case DP_ACT_POP_VLAN:
            r = act_pop_vlan(ctx, ps);
            break;
        case DP_ACT_SET_VLAN: {
            __be16 *tci = PKT_AT(ctx, 14, 2);
            if (!tci || !TAGS(ps))
                r = DROP_BAD_ACTION;
            else
                *tci = a->arg16 & ~bpf_htons(VLAN_CFI);
            break;
        }
        case DP_ACT_SET_IPV4_SRC:
        case DP_ACT_SET_IPV4_DST:
            r = act_set_ipv4(ctx, ps, a->type == DP_ACT_SET_IPV4_DST, a->arg32);
            break;
        case DP_ACT_SET_IP_DSCP:
            r = act_dscp(ctx, ps, bpf_ntohs(a->arg16) & 0x3f);
            break;
        case DP_ACT_DEC_TTL:
            r = act_dec_ttl(ctx, ps);
            break;
        case DP_ACT_SET_IPV6_SRC:
        case DP_ACT_SET_IPV6_DST:
            r = act_set_ipv6(ctx, ps, a->type == DP_ACT_SET_IPV6_DST, a->data);
            break;
        case DP_ACT_SET_TP_SRC:
        case DP_ACT_SET_TP_DST:
            r = act_set_tp(ctx, ps, a->type == DP_ACT_SET_TP_DST, a->arg16);
            break;
        case DP_ACT_METER:
            r = act_meter(ctx, ps, a->arg32);
            break;
        case DP_ACT_SELECT: {
            __u32 to = act_select(ctx, ps, a);
            if (to <= i)
                r = DROP_ACTION;    /* no bucket to take (or a bad index): nothing is emitted */
            else
                NEXT(ps) = to;
            break;
        }
        default:
            r = DROP_BAD_ACTION;
        }
        if (r) {
            ps->reason = r;
            return XDP_DROP;
        }
    }
    return XDP_DROP; /* no terminal action: drop (reason DROP_ACTION) */
}

/* Send the packet to the upcall socket of its ingress port and queue, with struct upcall_meta in front.
 * Returns XDP_REDIRECT, or XDP_DROP when no socket is bound (or the queue is beyond DP_MAX_QUEUES). */
static __always_inline int dp_upcall(struct xdp_md *ctx, __u32 in_port, __u32 hash, __u16 reason)
{
    __u32 q = ctx->rx_queue_index;
    if (q >= DP_MAX_QUEUES || in_port >= DP_MAX_PORTS)
        return XDP_DROP;
    if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct upcall_meta)))
        return XDP_DROP;
    struct upcall_meta *m = (void *)(long)ctx->data_meta;
    if ((void *)(m + 1) > (void *)(long)ctx->data)
        return XDP_DROP;
    m->reason = reason;
    m->in_port = in_port;
    m->hash = hash;
    return upcall_xsks.redirect_map(in_port * DP_MAX_QUEUES + q, XDP_DROP);
}

/* CLOCK_MONOTONIC_COARSE for a megaflow's last use, read once per jiffy per CPU. bpf_ktime_get_coarse_ns() cost
 * about 35 ns a call here (an EMC hit went from about 170 to 137 ns without it, measured in turns); bpf_jiffies64() is
 * a load the verifier inlines, and the coarse clock only moves at a tick anyway. The tick advances jiffies before
 * the clock, so a new jiffy is taken only once the clock has moved too: a cached time is never older than the
 * jiffy it is used in. */
static __always_inline __u64 dp_now_ns(struct dp_scratch *s)
{
    __u64 j = bpf_jiffies64();
    if (j != s->now_jiffies) {
        __u64 ns = bpf_ktime_get_coarse_ns();
        if (ns != s->now_ns) {
            s->now_ns = ns;
            s->now_jiffies = j;
        }
    }
    return s->now_ns;
}

/* A per-CPU pseudo-random number for the EMC's 1-in-N insert draw (xorshift64*, seeded once per CPU from
 * bpf_get_prandom_u32()). A helper call on every megaflow hit costs more than this on a kernel whose returns go
 * through a mitigation thunk; a draw needs no more than an even spread. */
static __always_inline __u32 dp_random(struct dp_scratch *s)
{
    __u64 x = s->rnd;
    if (!x)
        x = ((__u64)bpf_get_prandom_u32() << 32) | 1;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s->rnd = x;
    return (__u32)((x * 0x2545f4914f6cdd1dULL) >> 32);
}

/* A cache hit on megaflow flow_idx: count it, run its actions, count any drop. */
static __always_inline int dp_hit(struct xdp_md *ctx, __u32 flow_idx, const struct mf_entry *f,
                                  struct dp_scratch *s, __u32 stat)
{
    struct mf_flow_stats *fs = mf_stats.lookup(&flow_idx);
    if (fs) {
        fs->packets++;
        fs->bytes += ctx->data_end - ctx->data;
        fs->used_ns = dp_now_ns(s);
    }
    dp_stat_add(s, stat, 1);

    int verdict = dp_execute(ctx, f, s);
    if (verdict == DP_VERDICT_UPCALL) {
        if (dp_upcall_limited(s->key.in_port)) {
            verdict = XDP_DROP;
            s->reason = DROP_UPCALL_LIMIT;
        } else {
            verdict = dp_upcall(ctx, s->key.in_port, dp_flow_hash(s), UPCALL_SLOW_PATH);
            if (verdict != XDP_REDIRECT)
                s->reason = DROP_NO_UPCALL_SOCKET;
        }
    }
    if (verdict == XDP_DROP)
        dp_drop_count(s->reason, s->key.in_port);
    return verdict;
}

#endif
