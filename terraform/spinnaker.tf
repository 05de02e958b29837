# What the functions need to call Spinnaker Gate: each model's webhook key, and the functions' client certificate.

# One secret per model, cd4ml-spinnaker-key-<model>: its version (the key that model's pipeline trigger expects as a
# payload constraint) is added out of band, so no key passes through Terraform state. A key opens only its own
# model's pipeline, and a key read from one model's executions starts no other model's.
resource "google_secret_manager_secret" "gate_key" {
  for_each = local.manifests

  project   = var.project_id
  secret_id = "cd4ml-spinnaker-key-${each.key}"
  labels    = local.labels

  replication {
    auto {}
  }
}

# The functions' X.509 client certificate for Gate (PEM certificate, then its key; added out of band): Gate
# authenticates every call but webhooks when auth is on. Read when spinnaker_gate_auth is "x509".
resource "google_secret_manager_secret" "gate_client_certificate" {
  project   = var.project_id
  secret_id = "cd4ml-spinnaker-client-certificate"
  labels    = local.labels

  replication {
    auto {}
  }
}
