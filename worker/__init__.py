"""Execution: the claim loop, upstream providers, retries and the sweeper."""
