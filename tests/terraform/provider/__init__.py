"""Offline `terraform validate` / `terraform plan` of terraform/: stand-ins of the google, google-beta and archive
providers that speak Terraform's plugin protocol with the real providers' schemas (read from their cdktn bindings)."""
