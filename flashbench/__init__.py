"""flashbench: measure checkpoint-and-recovery strategies on real MLX training and
project their costs onto clusters of thousands of devices."""
