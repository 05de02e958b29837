"""Offline checks of terraform/: formatting, Terraform's own validate and plan (stand-in providers), checkov, parity
with the catalog and the local stack, IAM, creation order."""
