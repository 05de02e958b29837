# One Cloud Functions (gen2) function per stage, all from one archive of functions/.

data "archive_file" "functions" {
  type        = "zip"
  source_dir  = "${path.module}/../functions"
  output_path = "${path.module}/.build/functions.zip"
  excludes    = ["**/__pycache__/**", "**/*.pyc", ".mypy_cache/**", ".pytest_cache/**"]
}

# The name carries the archive's hash, so a code change is a new object and every function redeploys.
resource "google_storage_bucket_object" "functions_source" {
  bucket       = google_storage_bucket.bucket["artifacts"].name
  name         = "sources/functions-${data.archive_file.functions.output_md5}.zip"
  source       = data.archive_file.functions.output_path
  content_type = "application/zip"
}

resource "google_cloudfunctions2_function" "stage" {
  for_each = local.stages

  project     = var.project_id
  location    = var.region
  name        = local.function_names[each.key]
  description = each.value.doc
  labels      = merge(local.labels, { cd4ml-stage = local.stage_slug[each.key] })

  build_config {
    runtime     = "python311"
    entry_point = each.key

    source {
      storage_source {
        bucket = google_storage_bucket.bucket["artifacts"].name
        object = google_storage_bucket_object.functions_source.name
      }
    }
  }

  service_config {
    available_memory   = each.value.memory
    timeout_seconds    = each.value.timeout_seconds
    max_instance_count = var.max_instance_count
    # Pub/Sub's pushes are internal; people call the decision endpoint from their machines (Cloud Run's invoker IAM
    # admits the approvers only, and the function verifies their ID token).
    ingress_settings               = contains(local.http_stages, each.key) ? "ALLOW_ALL" : "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.function[each.key].email

    # Exactly the names catalog.tf derives for the stage (its catalog `env`, CD4ML_STAGE, CD4ML_DEAD_LETTER_TOPIC).
    environment_variables = {
      for name in local.function_env_names[each.key] : name => merge(local.setting_values, local.stage_settings[each.key])[name]
    }
  }
}
