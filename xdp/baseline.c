/* baseline.c: reference programs for bench/fastpath.py, never attached by the switch.
 * xdp_baseline parses exactly as emc_rx does, then redirects to port 1: the floor an EMC hit is compared
 * with. xdp_bare_redirect redirects to port 1 without parsing: the bare devmap redirect. */
#include "actions.h"

int xdp_baseline(struct xdp_md *ctx)
{
    __u32 zero = 0;
    struct dp_scratch *s = dp_scratch.lookup(&zero);
    if (!s)
        return XDP_ABORTED;
    __u32 ifindex = ctx->ingress_ifindex;
    struct dp_port *port = dp_ports.lookup(&ifindex);
    if (!port)
        return XDP_DROP;
    __builtin_memset(&s->key, 0, sizeof(s->key));
    s->key.in_port = port->port_no;
    struct pkt_layout lay;
    parse_packet(ctx, &s->key, &lay);
    s->l3_off = lay.l3_off;
    s->l4_off = lay.l4_off;
    return dp_tx_ports.redirect_map(1, XDP_DROP);
}

int xdp_bare_redirect(struct xdp_md *ctx)
{
    return dp_tx_ports.redirect_map(1, XDP_DROP);
}
