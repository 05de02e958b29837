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
