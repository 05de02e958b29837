# Every role binding comes from iam_bindings.yaml (each with its reason) through catalog.tf's iam_plan, and is
# made at the narrowest resource the service offers: one *_iam_member resource per kind of resource. No binding
# is written anywhere else; tests/terraform/test_iam.py holds that.

locals {
  # Symbolic member (catalog.tf: iam_plan) -> IAM member
  iam_members = merge(
    { for s in keys(local.stages) : "function:${s}" => "serviceAccount:${google_service_account.function[s].email}" },
    { for s in keys(local.stages) : "invoker:${s}" => "serviceAccount:${google_service_account.invoker[s].email}" },
    {
      pubsub_agent  = google_project_service_identity.pubsub_agent.member
      storage_agent = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
    },
    { for m in local.models : "model_training:${m}" => "serviceAccount:${google_service_account.model_training[m].email}" },
    { for m in local.models : "model_build:${m}" => "serviceAccount:${google_service_account.model_build[m].email}" },
    { for a in local.approvers : "approver:${a}" => a },
    { for sa in google_service_account.ui : "ui" => "serviceAccount:${sa.email}" },
    { for v in var.ui_viewers : "ui_viewer:${v}" => v },
  )

  # Symbolic target -> the resource the binding is on, as its *_iam_member resource names it. A subscription is
  # named, not referenced: the subscriptions wait for the grants (pubsub.tf), so a reference here would be a
  # cycle; google_pubsub_subscription_iam_member waits for them with depends_on instead.
  iam_targets = merge(
    { for t in local.event_types : "topic:${t}" => google_pubsub_topic.event[t].name },
    { for s in keys(local.stages) : "dead_letter_topic:${s}" => google_pubsub_topic.dead_letter[s].name },
    { for k, sub in local.stage_subscriptions : "subscription:${k}" => sub.name },
    { for s in keys(local.stages) : "run_service:${s}" => google_cloudfunctions2_function.stage[s].name },
    { for c in local.notify_channels : "secret:notify:${c}" => google_secret_manager_secret.notify[c].secret_id },
    { for m in keys(local.manifests) : "secret:gate_key:${m}" => google_secret_manager_secret.gate_key[m].secret_id },
    { for s in keys(local.stages) : "service_account:invoker:${s}" => google_service_account.invoker[s].name },
    { for service in google_cloud_run_v2_service.ui : "ui_service" => service.name },
    { for m in local.models : "service_account:model_training:${m}" => google_service_account.model_training[m].name },
    { for m in local.models : "service_account:model_build:${m}" => google_service_account.model_build[m].name },
    { for m in local.models : "model_repository:${m}" => google_artifact_registry_repository.model[m].name },
    {
      "project"                 = var.project_id
      "bucket:data"             = google_storage_bucket.bucket["data"].name
      "bucket:artifact"         = google_storage_bucket.bucket["artifacts"].name
      "secret:gate_client_cert" = google_secret_manager_secret.gate_client_certificate.secret_id
      "data_arrivals_topic"     = google_pubsub_topic.notification["cd4ml-data-arrivals"].name
    },
  )

  iam_grants = { for k, g in local.iam_plan : k => merge(g, {
    member = local.iam_members[g.member]
    target = local.iam_targets[g.target]
    # `custom/ID`: the project's custom role made below, where a predefined role holds more than the calls need.
    role = startswith(g.role, "custom/") ? google_project_iam_custom_role.cd4ml[trimprefix(g.role, "custom/")].name : g.role
  }) }
}

resource "google_project_iam_custom_role" "cd4ml" {
  for_each = yamldecode(file("${path.module}/iam_bindings.yaml")).custom_roles

  project     = var.project_id
  role_id     = each.key
  title       = each.value.title
  description = each.value.why
  permissions = each.value.permissions
}

resource "google_project_iam_member" "grant" {
  for_each = { for k, g in local.iam_grants : k => g if g.kind == "project" }

  project = each.value.target
  role    = each.value.role
  member  = each.value.member

  dynamic "condition" {
    for_each = each.value.condition == null ? [] : [each.value.condition]
    content {
      title       = condition.value.title
      description = condition.value.description
      expression  = condition.value.expression
    }
  }
}

resource "google_pubsub_topic_iam_member" "grant" {
  for_each = { for k, g in local.iam_grants : k => g if g.kind == "topic" }

  project = var.project_id
  topic   = each.value.target
  role    = each.value.role
  member  = each.value.member
}

resource "google_pubsub_subscription_iam_member" "grant" {
  for_each = { for k, g in local.iam_grants : k => g if g.kind == "subscription" }

  project      = var.project_id
  subscription = each.value.target
  role         = each.value.role
  member       = each.value.member

  depends_on = [google_pubsub_subscription.stage]
}

resource "google_cloud_run_v2_service_iam_member" "grant" {
  for_each = { for k, g in local.iam_grants : k => g if g.kind == "run_service" }

  project  = var.project_id
  location = var.region
  name     = each.value.target
  role     = each.value.role
  member   = each.value.member
}

resource "google_service_account_iam_member" "grant" {
  for_each = { for k, g in local.iam_grants : k => g if g.kind == "service_account" }

  service_account_id = each.value.target
  role               = each.value.role
  member             = each.value.member
}

resource "google_storage_bucket_iam_member" "grant" {
  for_each = { for k, g in local.iam_grants : k => g if g.kind == "bucket" }

  bucket = each.value.target
  role   = each.value.role
  member = each.value.member

  dynamic "condition" {
    for_each = each.value.condition == null ? [] : [each.value.condition]
    content {
      title       = condition.value.title
      description = condition.value.description
      expression  = condition.value.expression
    }
  }
}

resource "google_secret_manager_secret_iam_member" "grant" {
  for_each = { for k, g in local.iam_grants : k => g if g.kind == "secret" }

  project   = var.project_id
  secret_id = each.value.target
  role      = each.value.role
  member    = each.value.member
}

resource "google_artifact_registry_repository_iam_member" "grant" {
  for_each = { for k, g in local.iam_grants : k => g if g.kind == "repository" }

  project    = var.project_id
  location   = var.region
  repository = each.value.target
  role       = each.value.role
  member     = each.value.member
}
