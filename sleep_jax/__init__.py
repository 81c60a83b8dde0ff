"""sleep_jax: offline recurrent passes ("sleep") for Gated DeltaNet / attention hybrids."""
