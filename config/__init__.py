"""The sample configuration and sensor registry, shipped so that an installed citywatch runs without a checkout."""
