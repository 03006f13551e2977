"""Prometheus exporter of the fast path's counters: a custom Collector that reads the BPF maps at scrape
time. It arrives with the revalidator issue; the counters it will read are Datapath.stats(),
Datapath.port_stats() and Datapath.map_usage()."""
