"""The training workload: a byte-level decoder-only transformer on real text."""
