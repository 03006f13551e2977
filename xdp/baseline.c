/* baseline.c: reference programs for bench/fastpath.py, never attached by the switch.
 * xdp_baseline parses exactly as emc_rx does, then redirects to port BENCH_OUT_PORT: the floor an EMC hit
 * is compared with. xdp_bare_redirect redirects there without parsing: the bare devmap redirect.
 * xdp_gen_tx (XDP_TX) is the generator, run in BPF_PROG_RUN's live-frames mode on the far end of the
 * input port's veth; xdp_sink drops everything on the far end of the output port's veth. */
#define BENCH_OUT_PORT 2
#include "actions.h"

int xdp_baseline(struct xdp_md *ctx)
{
    if (!dp_parse(ctx))
        return XDP_DROP;
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
