# Where serving images go.

resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Serving images hold a model already kept in the artifact bucket; Google-managed encryption at rest is the chosen default, CMEK would add a KMS key and service-agent grants.
  project       = var.project_id
  location      = var.region
  repository_id = var.registry_repository_id
  format        = "DOCKER"
  description   = "cd4ml serving images, tagged with the run id; pushes are announced on the gcr topic."
  labels        = local.labels
}
