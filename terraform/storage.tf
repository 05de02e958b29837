# The data bucket (source data, datasets/) and the artifact bucket (manifests/, packages/, serving/, sources/,
# runs/, builds/), private and versioned; iam_bindings.yaml says who may touch which prefix.

resource "google_storage_bucket" "bucket" {
  #checkov:skip=CKV_GCP_62:Access is recorded by Cloud Audit Logs (Data Access logs), which Google recommends over legacy usage logs; a log bucket would itself need one.
  for_each = { data = local.data_bucket, artifacts = local.artifact_bucket }

  project  = var.project_id
  name     = each.value
  location = coalesce(var.bucket_location, var.region)
  labels   = local.labels

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
    }
    action {
      type = "Delete"
    }
  }
}

# fetch_data reads a model's manifest from manifests/MODEL.yaml (`cd4ml model push` writes the same object).
resource "google_storage_bucket_object" "manifest" {
  for_each = local.manifest_files

  bucket         = google_storage_bucket.bucket["artifacts"].name
  name           = "manifests/${each.key}.yaml"
  source         = each.value
  source_md5hash = filemd5(each.value)
  content_type   = "application/yaml"
  cache_control  = "no-store"
}

# New source data starts runs (manifest trigger.on_new_data): the bucket notifies its topic (catalog
# notification_topics) with payload JSON_API_V1 (https://cloud.google.com/storage/docs/pubsub-notifications).
# Cloud Storage publishes as the project's service agent, which needs pubsub.publisher on the topic first
# (iam_bindings.yaml storage_notifications_publish; https://cloud.google.com/storage/docs/reporting-changes#prereqs).
data "google_storage_project_service_account" "gcs" {
  project = var.project_id
}

resource "google_storage_notification" "arrivals" {
  for_each = local.notification_topics

  bucket         = google_storage_bucket.bucket[each.value.bucket == "data" ? "data" : "artifacts"].name
  topic          = google_pubsub_topic.notification[each.key].id
  payload_format = "JSON_API_V1"
  event_types    = each.value.event_types

  depends_on = [google_pubsub_topic_iam_member.grant]
}
