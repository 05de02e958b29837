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

# One training and one build identity per model (catalog.tf model_accounts): a model's trainer and its build (which
# runs the model's own serving code in the smoke test) can touch that model's objects and image repository only.
resource "google_service_account" "model_training" {
  for_each = local.model_accounts

  project      = var.project_id
  account_id   = each.value.train
  display_name = "cd4ml training of ${each.key}"
  description  = "Vertex AI CustomJobs of the cd4ml model ${each.key} run as this account."
}

resource "google_service_account" "model_build" {
  for_each = local.model_accounts

  project      = var.project_id
  account_id   = each.value.build
  display_name = "cd4ml builds of ${each.key}"
  description  = "Cloud Build builds of the cd4ml model ${each.key} run as this account."

  lifecycle {
    precondition {
      condition     = length(local.model_name_clashes) == 0
      error_message = "Model names must not start with another model's name and a dash (their runs/ and builds/ prefixes would overlap): ${join("; ", local.model_name_clashes)}."
    }
  }
}
