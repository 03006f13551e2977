/* skb_tx.c: the skb path of the output actions, a tc (clsact ingress) program on every port. XDP passes a
 * packet up with struct dp_skb_meta in front when its output port cannot take XDP_REDIRECTed frames (see
 * struct dp_port_cfg); here the skb is redirected to that port (bpf_redirect), or cloned to every member of
 * the flood or group. Packets without the note are not ours: they go on as usual. */
#include "stats.h"

static __always_inline void skb_tx_count(__u32 port, __u32 len)
{
    struct dp_port_stats *st = dp_port_stats.lookup(&port);
    if (st) {
        st->tx_packets++;
        st->tx_bytes += len;
        st->tx_skb_packets++;
    }
}

int dp_skb_tx(struct __sk_buff *skb)
{
    struct dp_skb_meta *m = (void *)(long)skb->data_meta;
    if ((void *)(m + 1) > (void *)(long)skb->data || m->magic != DP_SKB_MAGIC)
        return TC_ACT_OK;
    __u32 kind = m->kind, arg = m->arg, in_port = m->in_port, len = skb->len;
    if (kind == DP_SKB_OUTPUT) {
        struct dp_port_cfg *pc = dp_port_cfg.lookup(&arg);
        if (!pc || !pc->ifindex) {
            dp_drop_count(DROP_NO_PORT, in_port);
            return TC_ACT_SHOT;
        }
        skb_tx_count(arg, len);
        return bpf_redirect(pc->ifindex, 0);
    }
    /* flood or group: a copy to each target but the ingress port (user space keeps the target lists) */
    __u32 key = kind == DP_SKB_GROUP ? 1 + arg : 0;
    struct dp_skb_targets *ts = dp_skb_targets.lookup(&key);
    if (!ts)
        return TC_ACT_SHOT;
    __u32 n = ts->n;
    for (__u32 i = 0; i < DP_SKB_MAX_COPIES; i++) {
        if (i >= n)
            break;
        __u32 p = ts->t[i].port_no;
        if (p == in_port)
            continue;
        if (bpf_clone_redirect(skb, ts->t[i].ifindex, 0) == 0)
            skb_tx_count(p, len);
    }
    return TC_ACT_SHOT; /* the copies went; the original is done with */
}
