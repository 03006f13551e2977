"""The fast path's C sources (emc.c, megaflow.c, skb_tx.c and their headers), compiled by bcc when the
daemon starts. A package only so that a wheel carries them (ctl/datapath/dpif_xdp.py finds them here)."""
