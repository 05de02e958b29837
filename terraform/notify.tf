# Notifications: where notify posts what happened to the runs, per the manifests' `notify` routes.

# One secret per notification channel the manifests route to (`notify: [{channel: …}]`): its versions hold the
# channel's webhook URL (a Slack incoming webhook, or any JSON endpoint), added out of band like the gate key,
# so no URL passes through Terraform state. Only notify may read them (iam_bindings.yaml, read_notify_webhooks).
resource "google_secret_manager_secret" "notify" {
  for_each = local.notify_channels

  project   = var.project_id
  secret_id = "cd4ml-notify-${each.key}"
  labels    = local.labels

  replication {
    auto {}
  }
}
