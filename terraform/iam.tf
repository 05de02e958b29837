# Every role binding comes from iam_bindings.yaml (each with its reason) and is made at the narrowest
# resource the service offers: one rule becomes one binding per stage and target. No binding is written
# anywhere else; tests/terraform/test_iam.py holds that.

locals {
  iam_rules  = yamldecode(file("${path.module}/iam_bindings.yaml")).bindings
  iam_scopes = concat(keys(local.stages), [""]) # "" is the scope of a rule without stages

  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # "<member>/<stage>" -> IAM member
  iam_members = merge(
    { for s in keys(local.stages) : "function/${s}" => "serviceAccount:${google_service_account.function[s].email}" },
    { for s in keys(local.stages) : "invoker/${s}" => "serviceAccount:${google_service_account.invoker[s].email}" },
    { for s in local.iam_scopes : "pubsub_agent/${s}" => local.pubsub_agent },
    { for s in local.iam_scopes : "training/${s}" => "serviceAccount:${google_service_account.training.email}" },
    { for s in local.iam_scopes : "build/${s}" => "serviceAccount:${google_service_account.build.email}" },
  )

  # `on` -> the resource type that binds it (one *_iam_member resource below per type)
  iam_kinds = {
    "project"                  = "project"
    "emits_topics"             = "topic"
    "dead_letter_topic"        = "topic"
    "subscription"             = "subscription"
    "run_service"              = "run_service"
    "service_account:training" = "service_account"
    "service_account:build"    = "service_account"
    "service_account:invoker"  = "service_account"
    "bucket:data"              = "bucket"
    "bucket:artifact"          = "bucket"
    "secret:gate_key"          = "secret"
    "repository"               = "repository"
  }

  # "<on>/<stage>" -> { key known at plan time => resource the binding is on }
  iam_targets = merge(
    { for s in local.iam_scopes : "project/${s}" => { self = var.project_id } },
    { for s, stage in local.stages : "emits_topics/${s}" => { for t in stage.emits : t => google_pubsub_topic.event[t].name } },
    { for s in keys(local.stages) : "dead_letter_topic/${s}" => { self = google_pubsub_topic.dead_letter[s].name } },
    { for s in keys(local.stages) : "subscription/${s}" => { self = google_pubsub_subscription.stage[s].name } },
    { for s in keys(local.stages) : "run_service/${s}" => { self = google_cloudfunctions2_function.stage[s].name } },
    { for s in keys(local.stages) : "service_account:invoker/${s}" => { self = google_service_account.invoker[s].name } },
    { for s in local.iam_scopes : "service_account:training/${s}" => { self = google_service_account.training.name } },
    { for s in local.iam_scopes : "service_account:build/${s}" => { self = google_service_account.build.name } },
    { for s in local.iam_scopes : "bucket:data/${s}" => { self = google_storage_bucket.data.name } },
    { for s in local.iam_scopes : "bucket:artifact/${s}" => { self = google_storage_bucket.artifacts.name } },
    { for s in local.iam_scopes : "secret:gate_key/${s}" => { self = google_secret_manager_secret.gate_key.secret_id } },
    { for s in local.iam_scopes : "repository/${s}" => { self = google_artifact_registry_repository.images.name } },
  )

  iam_grants = { for g in flatten([
    for name, rule in local.iam_rules : [
      for stage in(contains(try(rule.stages, [""]), "*") ? keys(local.stages) : try(rule.stages, [""])) : [
        for target_key, target in local.iam_targets["${rule.on}/${stage}"] : {
          key    = "${name}/${stage}/${target_key}"
          kind   = local.iam_kinds[rule.on]
          role   = rule.role
          member = local.iam_members["${rule.member}/${stage}"]
          target = target
          condition = (
            length(try(rule.prefixes, [])) > 0 ? {
              title       = "only ${join(" ", try(rule.prefixes, []))}"
              description = "Objects under, and listings of, ${join(", ", try(rule.prefixes, []))}."
              expression = join(" || ", flatten([for p in try(rule.prefixes, []) : [
                "resource.name.startsWith(\"projects/_/buckets/${target}/objects/${p}\")",
                "api.getAttribute(\"storage.googleapis.com/objectListPrefix\", \"\").startsWith(\"${p}\")",
              ]]))
            } :
            try(rule.condition, "") == "firestore_database" ? {
              title       = "only database ${var.firestore_database}"
              description = "The run ledger's Firestore database."
              expression  = "resource.name == \"projects/${var.project_id}/databases/${var.firestore_database}\""
            } : null
          )
        }
      ]
    ]
  ]) : g.key => g }
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
