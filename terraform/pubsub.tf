# Topics and subscriptions: one topic per event type, Google's own topics, and per stage a push subscription
# with retry and dead-letter policy, a dead-letter topic and a pull subscription that holds what was dead-lettered.

resource "google_pubsub_topic" "event" {
  #checkov:skip=CKV_GCP_83:Messages carry run metadata (ids, URIs, metrics), never data or secrets; Google-managed encryption at rest is the chosen default, CMEK would add a KMS key and service-agent grants.
  for_each = local.topic_ids

  project = var.project_id
  name    = each.value
  labels  = local.labels
}

# Google's own topics: Cloud Build publishes build status to `cloud-builds`, which the project must create
# (https://cloud.google.com/build/docs/subscribe-build-notifications), and Artifact Registry publishes pushes to
# `gcr`, which it creates itself when its API is enabled, or finds there already if Container Registry made it
# (https://cloud.google.com/artifact-registry/docs/configure-notifications). Whether a topic exists therefore
# depends on the project's history, so Terraform never creates nor destroys them: README step 1 makes sure
# both exist (describe || create), and they are only read here. The plan stops before creating anything if
# one is missing: since hashicorp/google 5.0 this data source fails with "projects/P/topics/T not found"
# (data_source_pubsub_topic.go; GoogleCloudPlatform/magic-modules#8858), so no postcondition is needed.
data "google_pubsub_topic" "foreign" {
  for_each = local.foreign_topics

  project = var.project_id
  name    = each.key
}

# Deployments made before the topics were read created some of them as google_pubsub_topic.foreign: forget
# those without destroying them (Cloud Build and Artifact Registry keep publishing there). Terraform >= 1.7.
removed {
  from = google_pubsub_topic.foreign

  lifecycle {
    destroy = false
  }
}

# Cloud Storage's notifications of a bucket (catalog notification_topics): cd4ml's own topics, unlike Google's above;
# storage.tf attaches each to its bucket.
resource "google_pubsub_topic" "notification" {
  #checkov:skip=CKV_GCP_83:Messages describe objects of the data bucket (names, sizes, hashes), never their content; Google-managed encryption at rest is the chosen default.
  for_each = local.notification_topics

  project = var.project_id
  name    = each.key
  labels  = local.labels
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Dead letters are copies of event messages (run metadata only); Google-managed encryption at rest is the chosen default, CMEK would add a KMS key and service-agent grants.
  for_each = local.dead_letter_topics

  project = var.project_id
  name    = each.value
  labels  = local.labels
}

# Explicit authenticated push instead of a function event_trigger: an Eventarc trigger's subscription cannot
# dead-letter. The endpoint path /projects/P/topics/T is what makes functions-framework turn the raw push body
# into a google.cloud.pubsub.topic.v1.messagePublished CloudEvent.
resource "google_pubsub_subscription" "stage" {
  for_each = local.stage_subscriptions

  project = var.project_id
  name    = each.value.name
  topic   = "projects/${var.project_id}/topics/${each.value.topic}"
  labels  = local.labels

  ack_deadline_seconds = each.value.ack_deadline_seconds

  push_config {
    push_endpoint = "${google_cloudfunctions2_function.stage[each.value.stage].service_config[0].uri}/projects/${var.project_id}/topics/${each.value.topic}"

    oidc_token {
      service_account_email = google_service_account.invoker[each.value.stage].email
      audience              = google_cloudfunctions2_function.stage[each.value.stage].service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = each.value.minimum_backoff
    maximum_backoff = each.value.maximum_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter[each.value.stage].id
    max_delivery_attempts = each.value.max_delivery_attempts
  }

  # Never expire: a stage idle for 31 days (a monthly model's) must keep its subscription.
  expiration_policy {
    ttl = ""
  }

  # A push before its function's grants exist burns delivery attempts on 403 (and dead-letters the message
  # after max_delivery_attempts): the subscription is made after the push identity may invoke the function
  # (run.invoker), the Pub/Sub agent may mint its token and forward to the dead-letter topic, and the function
  # may do its work. Only the subscriber grant on the subscription itself must follow it (iam.tf).
  depends_on = [
    google_pubsub_topic.event,
    data.google_pubsub_topic.foreign,
    google_pubsub_topic.notification,
    google_pubsub_topic.dead_letter, # on_dead_letter reads the other stages' dead-letter topics
    google_cloud_run_v2_service_iam_member.grant,
    google_service_account_iam_member.grant,
    google_pubsub_topic_iam_member.grant,
    google_project_iam_member.grant,
    google_storage_bucket_iam_member.grant,
    google_secret_manager_secret_iam_member.grant,
    google_artifact_registry_repository_iam_member.grant,
  ]
}

resource "google_pubsub_subscription" "dead_letter_hold" {
  for_each = local.dead_letter_holds

  project = var.project_id
  name    = each.value.name
  topic   = google_pubsub_topic.dead_letter[each.key].id
  labels  = local.labels

  ack_deadline_seconds       = each.value.ack_deadline_seconds
  message_retention_duration = each.value.message_retention_duration
  # Pulling a message to look at it does not lose it: acknowledged ones stay until retention ends.
  retain_acked_messages = true

  expiration_policy {
    ttl = ""
  }
}
