# The production graph of cd4ml. Nothing about stages, topics, schedules or settings is typed here: catalog.tf
# derives them from the event catalog, the event schemas and the model manifests.

locals {
  # {model}: a repository per model (registry.tf); the functions put the model's name in (cd4ml.identities).
  registry = "${var.region}-docker.pkg.dev/${var.project_id}/${var.registry_repository_id}-{model}"

  # The value of every catalog setting but the two set per stage (catalog.tf: stage_settings). A function
  # gets the ones its catalog entry lists under `env`; a name missing here fails the plan.
  setting_values = {
    CD4ML_PROJECT                  = var.project_id
    CD4ML_REGION                   = var.region
    CD4ML_FIRESTORE_DATABASE       = var.firestore_database
    CD4ML_DATA_BUCKET              = google_storage_bucket.bucket["data"].name
    CD4ML_ARTIFACT_BUCKET          = google_storage_bucket.bucket["artifacts"].name
    CD4ML_VERTEX_ENDPOINT          = var.vertex_endpoint
    CD4ML_TRAINING_SERVICE_ACCOUNT = "{account}@${var.project_id}.iam.gserviceaccount.com" # the model's own (service_accounts.tf)
    CD4ML_CLOUDBUILD_ENDPOINT      = var.cloudbuild_endpoint
    CD4ML_BUILD_SERVICE_ACCOUNT    = "{account}@${var.project_id}.iam.gserviceaccount.com" # the model's own (service_accounts.tf)
    CD4ML_REGISTRY                 = local.registry
    CD4ML_REGISTRY_API             = "" # https://<registry host>, Artifact Registry's Docker Registry API v2
    CD4ML_GATE_URL                 = var.spinnaker_gate_url
    CD4ML_GATE_AUTH                = var.spinnaker_gate_auth == "x509" ? "x509:${google_secret_manager_secret.gate_client_certificate.id}/versions/latest" : var.spinnaker_gate_auth
    CD4ML_GATE_KEY_SECRET          = "projects/${var.project_id}/secrets/cd4ml-spinnaker-key-{model}/versions/latest"
    CD4ML_GATE_CONFIRM_SECONDS     = tostring(var.spinnaker_confirm_seconds)
    CD4ML_NOTIFY_SECRETS           = "projects/${var.project_id}/secrets/cd4ml-notify-{channel}/versions/latest"
    CD4ML_APPROVAL_POLICY          = jsonencode(local.approval_policy)
    CD4ML_DECISION_AUDIENCES       = join(",", concat([local.decision_url], var.decision_user_audiences))
    CD4ML_TOKEN_CERTS_URL          = "https://www.googleapis.com/oauth2/v1/certs"
    CD4ML_DECISION_URL             = local.decision_url
  }

  labels = merge(var.labels, { app = "cd4ml" })
}
