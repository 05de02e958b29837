# Where serving images go.

# A repository per model: Artifact Registry's IAM stops at the repository, and a model's build account may write its
# own model's images only (iam_bindings.yaml build_pushes_images). Images are REGION-docker.pkg.dev/PROJECT/
# <registry_repository_id>-MODEL/MODEL:RUN_ID (CD4ML_REGISTRY with {model}).
resource "google_artifact_registry_repository" "model" {
  #checkov:skip=CKV_GCP_84:Serving images hold a model already kept in the artifact bucket; Google-managed encryption at rest is the chosen default, CMEK would add a KMS key and service-agent grants.
  for_each = local.models

  project       = var.project_id
  location      = var.region
  repository_id = "${var.registry_repository_id}-${each.key}"
  format        = "DOCKER"
  description   = "cd4ml serving images of ${each.key}, tagged with the run id; pushes are announced on the gcr topic."
  labels        = local.labels
}
