"""Train and evaluate the digits classifier."""
