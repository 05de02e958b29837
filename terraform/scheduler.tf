# Cloud Scheduler: one job per model manifest publishing run.requested, and the watch tick.
# Scheduler sets only static attributes: no ce-id, ce-time or ce-subject (the message id and publish time stand in).

locals {
  run_requested = "cd4ml.run.requested.v1"
  watch_ticked  = "cd4ml.watch.ticked.v1"
  job_source    = "//cloudscheduler.googleapis.com/projects/${var.project_id}/locations/${var.region}/jobs"
}

resource "google_cloud_scheduler_job" "run" {
  for_each = local.manifests

  project     = var.project_id
  region      = var.region
  name        = "cd4ml-run-${each.key}"
  description = "Requests a cd4ml run of model ${each.key} (${local.manifest_files[each.key]})."
  schedule    = each.value.schedule
  time_zone   = try(each.value.time_zone, "Etc/UTC")

  pubsub_target {
    topic_name = google_pubsub_topic.event[local.run_requested].id
    data       = base64encode(jsonencode({ model = each.key, trigger = "schedule" }))
    attributes = {
      "ce-specversion" = "1.0"
      "ce-type"        = local.run_requested
      "ce-source"      = "${local.job_source}/cd4ml-run-${each.key}"
      "content-type"   = "application/json"
    }
  }

  lifecycle {
    precondition {
      condition     = can(regex("^[a-z][a-z0-9-]{0,39}$", each.key))
      error_message = "Model name ${each.key} (${local.manifest_files[each.key]}) must match ^[a-z][a-z0-9-]{0,39}$."
    }
  }
}

resource "google_cloud_scheduler_job" "watch_tick" {
  project     = var.project_id
  region      = var.region
  name        = "cd4ml-watch-tick"
  description = "Every minute: watch_training reads the state of in-flight training jobs."
  schedule    = "* * * * *"
  time_zone   = "Etc/UTC"

  pubsub_target {
    topic_name = google_pubsub_topic.event[local.watch_ticked].id
    data       = base64encode("{}")
    attributes = {
      "ce-specversion" = "1.0"
      "ce-type"        = local.watch_ticked
      "ce-source"      = "${local.job_source}/cd4ml-watch-tick"
      "content-type"   = "application/json"
    }
  }
}
