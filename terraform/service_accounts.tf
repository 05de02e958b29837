# Every identity cd4ml runs as; what each may do is in iam_bindings.yaml.

# Google's Pub/Sub service agent (service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com) forwards dead
# letters and signs pushes. On a new project it may not exist yet, and a grant to it then fails: this makes
# it (services.generateServiceIdentity; a no-op where it exists) and gives its member, so every grant to it
# follows. The resource is in google-beta only (hashicorp/google 8.7 has no google_project_service_identity).
resource "google_project_service_identity" "pubsub_agent" {
  provider = google-beta

  project = var.project_id
  service = "pubsub.googleapis.com"
}

resource "google_service_account" "function" {
  for_each = local.stage_slug

  project      = var.project_id
  account_id   = "cd4ml-${each.value}"
  display_name = "cd4ml ${each.key}"
  description  = "Runtime identity of the cd4ml ${each.key} function."
}

# The identity Pub/Sub signs each push with; it may invoke its stage's function and nothing else.
resource "google_service_account" "invoker" {
  for_each = local.stage_slug

  project      = var.project_id
  account_id   = "cd4ml-push-${each.value}"
  display_name = "cd4ml push to ${each.key}"
  description  = "OIDC identity of the push subscription that feeds the cd4ml ${each.key} function."
}

resource "google_service_account" "training" {
  project      = var.project_id
  account_id   = "cd4ml-training"
  display_name = "cd4ml training jobs"
  description  = "Vertex AI CustomJobs submitted by cd4ml run as this account."
}

resource "google_service_account" "build" {
  project      = var.project_id
  account_id   = "cd4ml-build"
  display_name = "cd4ml image builds"
  description  = "Cloud Build builds submitted by cd4ml run as this account."
}
