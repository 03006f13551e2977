/* baseline.c: reference programs for bench/fastpath.py, never attached by the switch.
 * xdp_baseline parses exactly as emc_rx does, then redirects to port BENCH_OUT_PORT: the floor an EMC hit
 * is compared with. xdp_bare_redirect redirects there without parsing: the bare devmap redirect.
 * xdp_gen_tx (XDP_TX) is the generator, run in BPF_PROG_RUN's live-frames mode on the far end of the
 * input port's veth; xdp_sink drops everything on the far end of the output port's veth. */
#define BENCH_OUT_PORT 2
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
    return dp_tx_ports.redirect_map(BENCH_OUT_PORT, XDP_DROP);
}

int xdp_bare_redirect(struct xdp_md *ctx)
{
    return dp_tx_ports.redirect_map(BENCH_OUT_PORT, XDP_DROP);
}

/* A sink for the far end of a benchmark's output port: frames redirected there are dropped in XDP. */
int xdp_sink(struct xdp_md *ctx)
{
    return XDP_DROP;
}

int xdp_gen_tx(struct xdp_md *ctx)
{
    return XDP_TX;
}
