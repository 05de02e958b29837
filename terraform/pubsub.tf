# Topics and subscriptions: one topic per event type, Google's own topics, and per stage a push subscription
# with retry and dead-letter policy, a dead-letter topic and a pull subscription that holds what was dead-lettered.

resource "google_pubsub_topic" "event" {
  #checkov:skip=CKV_GCP_83:Messages carry run metadata (ids, URIs, metrics), never data or secrets; Google-managed encryption at rest is the chosen default, CMEK would add a KMS key and service-agent grants.
  for_each = local.topic_ids

  project = var.project_id
  name    = each.value
  labels  = local.labels
}

# Cloud Build publishes build status to `cloud-builds` and Artifact Registry publishes pushes to `gcr`, but
# only if the topic exists, and neither service reliably creates it. Created here unless adopted (already there).
resource "google_pubsub_topic" "foreign" {
  #checkov:skip=CKV_GCP_83:Google's services publish here in their own format; Google-managed encryption at rest is the chosen default, CMEK would add a KMS key and service-agent grants.
  for_each = setsubtract(local.foreign_topics, var.adopt_foreign_topics)

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
    push_endpoint = "${google_cloudfunctions2_function.stage[each.key].service_config[0].uri}/projects/${var.project_id}/topics/${each.value.topic}"

    oidc_token {
      service_account_email = google_service_account.invoker[each.key].email
      audience              = google_cloudfunctions2_function.stage[each.key].service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = each.value.minimum_backoff
    maximum_backoff = each.value.maximum_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter[each.key].id
    max_delivery_attempts = each.value.max_delivery_attempts
  }

  # Never expire: a stage idle for 31 days (a monthly model's) must keep its subscription.
  expiration_policy {
    ttl = ""
  }

  depends_on = [google_pubsub_topic.event, google_pubsub_topic.foreign]
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
