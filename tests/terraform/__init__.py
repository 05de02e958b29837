"""Offline checks of terraform/: formatting, provider schema, checkov, parity with the catalog and the local stack, IAM."""
