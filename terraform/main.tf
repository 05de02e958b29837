# The production graph of cd4ml. Nothing about stages, topics, schedules or settings is typed here: catalog.tf
# derives them from the event catalog, the event schemas and the model manifests.

locals {
  registry = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"

  # The value of every catalog setting but the two set per stage (catalog.tf: stage_settings). A function
  # gets the ones its catalog entry lists under `env`; a name missing here fails the plan.
  setting_values = {
    CD4ML_PROJECT                  = var.project_id
    CD4ML_REGION                   = var.region
    CD4ML_FIRESTORE_DATABASE       = var.firestore_database
    CD4ML_DATA_BUCKET              = google_storage_bucket.bucket["data"].name
    CD4ML_ARTIFACT_BUCKET          = google_storage_bucket.bucket["artifacts"].name
    CD4ML_VERTEX_ENDPOINT          = var.vertex_endpoint
    CD4ML_TRAINING_SERVICE_ACCOUNT = google_service_account.training.email
    CD4ML_CLOUDBUILD_ENDPOINT      = var.cloudbuild_endpoint
    CD4ML_BUILD_SERVICE_ACCOUNT    = google_service_account.build.email
    CD4ML_REGISTRY                 = local.registry
    CD4ML_REGISTRY_API             = "" # https://<registry host>, Artifact Registry's Docker Registry API v2
    CD4ML_GATE_URL                 = var.spinnaker_gate_url
    CD4ML_GATE_KEY_SECRET          = "${google_secret_manager_secret.gate_key.id}/versions/latest"
    CD4ML_NOTIFY_SECRETS           = "projects/${var.project_id}/secrets/cd4ml-notify-{channel}/versions/latest"
    CD4ML_APPROVAL_POLICY          = jsonencode(local.approval_policy)
    CD4ML_DECISION_AUDIENCES       = join(",", concat([local.decision_url], var.decision_user_audiences))
    CD4ML_TOKEN_CERTS_URL          = "https://www.googleapis.com/oauth2/v1/certs"
    CD4ML_DECISION_URL             = local.decision_url
  }

  labels = merge(var.labels, { app = "cd4ml" })
}
