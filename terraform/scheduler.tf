# Cloud Scheduler: one job per model manifest publishing run.requested, and the watch tick (catalog.tf: schedules).
# Scheduler sets only static attributes: no ce-id, ce-time or ce-subject (the message id and publish time stand in).

resource "google_cloud_scheduler_job" "job" {
  for_each = local.schedules

  project     = var.project_id
  region      = var.region
  name        = each.value.job
  description = each.key == "watch-tick" ? "Every minute: watch_training reads the state of in-flight training jobs." : "Requests a cd4ml run of model ${each.key} (${local.manifest_files[each.key]})."
  schedule    = each.value.schedule
  time_zone   = each.value.time_zone

  pubsub_target {
    topic_name = google_pubsub_topic.event[each.value.attributes["ce-type"]].id
    data       = base64encode(each.value.data)
    attributes = each.value.attributes
  }

  # A job publishing before the subscriptions exist loses the message (Pub/Sub keeps nothing for a topic
  # without subscriptions); one publishing before the grants exist starts a run that fails on 403. So the
  # jobs come last: after every subscription, every grant, and the index watch_training's stale-run query needs.
  depends_on = [
    google_pubsub_subscription.stage,
    google_pubsub_subscription_iam_member.grant,
    google_cloud_run_v2_service_iam_member.grant,
    google_service_account_iam_member.grant,
    google_pubsub_topic_iam_member.grant,
    google_project_iam_member.grant,
    google_storage_bucket_iam_member.grant,
    google_secret_manager_secret_iam_member.grant,
    google_artifact_registry_repository_iam_member.grant,
    google_firestore_index.runs_by_status,
  ]

  lifecycle {
    precondition {
      condition     = each.key == "watch-tick" ? !contains(keys(local.manifests), "watch-tick") : can(regex("^[a-z][a-z0-9-]{0,39}$", each.key))
      error_message = "A model name must match ^[a-z][a-z0-9-]{0,39}$ (manifest.schema.json) and not be watch-tick, the watch tick's key: ${each.key}."
    }
  }
}
