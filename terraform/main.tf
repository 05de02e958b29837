# The production graph of cd4ml. Nothing about stages, topics or settings is typed here: they come from the
# event catalog (functions/cd4ml/catalog.yaml), the event schemas beside it and the model manifests.

locals {
  catalog     = yamldecode(file("${path.module}/../functions/cd4ml/catalog.yaml"))
  schemas_dir = "${path.module}/../functions/cd4ml/schemas"

  # One topic per event type: one schema file per type, cd4ml.<noun>.<verb>.v1.json.
  event_types = toset([for f in fileset(local.schemas_dir, "cd4ml.*.json") : trimsuffix(f, ".json")])
  topic_ids   = { for t in local.event_types : t => replace(t, ".", "-") }

  stages   = local.catalog.stages
  delivery = local.catalog.delivery

  # Names derived from a stage name, as cd4ml.catalog derives them (fetch_data -> cd4ml-fetch-data).
  stage_slug         = { for s in keys(local.stages) : s => replace(s, "_", "-") }
  subscription_ids   = { for s, slug in local.stage_slug : s => "cd4ml-${slug}" }
  dead_letter_topics = { for s, slug in local.stage_slug : s => "cd4ml-${slug}-dead-letter" }
  dead_letter_holds  = { for s, slug in local.stage_slug : s => "cd4ml-${slug}-dead-letter-hold" }
  function_names     = { for s, slug in local.stage_slug : s => "cd4ml-${slug}" }

  # A stage's trigger is an event type (its topic) or a Google-owned topic named as is.
  trigger_topic_ids = { for s, stage in local.stages : s => lookup(local.topic_ids, stage.trigger, stage.trigger) }

  manifests_dir  = startswith(var.manifests_dir, "/") ? var.manifests_dir : "${path.module}/${var.manifests_dir}"
  manifest_files = { for f in fileset(local.manifests_dir, "**/manifest.yaml") : yamldecode(file("${local.manifests_dir}/${f}")).name => "${local.manifests_dir}/${f}" }
  manifests      = { for name, path in local.manifest_files : name => yamldecode(file(path)) }

  data_bucket     = coalesce(var.data_bucket_name, "${var.project_id}-cd4ml-data")
  artifact_bucket = coalesce(var.artifact_bucket_name, "${var.project_id}-cd4ml-artifacts")
  registry        = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"

  # The value of every setting in the catalog but the two set per stage (CD4ML_STAGE, CD4ML_DEAD_LETTER_TOPIC).
  # A stage gets the ones its catalog entry lists under `env`; a name missing here fails the plan.
  setting_values = {
    CD4ML_PROJECT                  = var.project_id
    CD4ML_REGION                   = var.region
    CD4ML_DATA_BUCKET              = google_storage_bucket.data.name
    CD4ML_ARTIFACT_BUCKET          = google_storage_bucket.artifacts.name
    CD4ML_VERTEX_ENDPOINT          = var.vertex_endpoint
    CD4ML_TRAINING_SERVICE_ACCOUNT = google_service_account.training.email
    CD4ML_CLOUDBUILD_ENDPOINT      = var.cloudbuild_endpoint
    CD4ML_BUILD_SERVICE_ACCOUNT    = google_service_account.build.id
    CD4ML_REGISTRY                 = local.registry
    CD4ML_GATE_URL                 = var.spinnaker_gate_url
    CD4ML_GATE_KEY_SECRET          = "${google_secret_manager_secret.gate_key.id}/versions/latest"
  }

  labels = merge(var.labels, { app = "cd4ml" })
}

data "google_project" "this" {
  project_id = var.project_id
}
