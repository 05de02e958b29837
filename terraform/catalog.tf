# What the event catalog (functions/cd4ml/catalog.yaml), the event schemas beside it, the model manifests and
# iam_bindings.yaml define, as plain values. Locals only, no resource: tests/terraform evaluates this file with
# `terraform console` (no provider needed) and compares the result with cd4ml.catalog and the local stack.

locals {
  catalog     = yamldecode(file("${path.module}/../functions/cd4ml/catalog.yaml"))
  schemas_dir = "${path.module}/../functions/cd4ml/schemas"

  # One topic per event type: one schema file per type, cd4ml.<noun>.<verb>.v1.json; dots become dashes.
  event_types = toset([for f in fileset(local.schemas_dir, "cd4ml.*.json") : trimsuffix(f, ".json")])
  topic_ids   = { for t in local.event_types : t => replace(t, ".", "-") }

  foreign_topics = toset(keys(local.catalog.foreign_topics))
  # Topics cd4ml creates for Cloud Storage's notifications (storage.tf makes each bucket's notification config).
  notification_topics = try(local.catalog.notification_topics, {})
  stages              = local.catalog.stages
  delivery            = local.catalog.delivery
  stage_slug          = { for s in keys(local.stages) : s => replace(s, "_", "-") }
  dead_letter_topics  = { for s, slug in local.stage_slug : s => "cd4ml-${slug}-dead-letter" }
  function_names      = { for s, slug in local.stage_slug : s => "cd4ml-${slug}" }

  # A stage's trigger is an event type (its topic) or a Google-owned topic, named as is. A stage with `triggers`
  # (notify) has several: the first is its trigger_topic_ids entry.
  # An HTTP stage (catalog `http: true`, decide_approval) has no trigger: no subscription, people call its URL.
  stage_triggers    = { for s, stage in local.stages : s => try(stage.triggers, [stage.trigger], []) }
  trigger_topic_ids = { for s, ts in local.stage_triggers : s => lookup(local.topic_ids, ts[0], ts[0]) if length(ts) > 0 }
  http_stages       = toset([for s, stage in local.stages : s if try(stage.http, false)])

  # Every stage subscription pushes to its function, with the catalog's delivery policy: keyed by stage (one
  # trigger), or by "stage:event type" with the name cd4ml-<stage>-<topic without cd4ml-> (several triggers).
  stage_subscription_inputs = merge(
    { for s, ts in local.stage_triggers : s => { stage = s, name = "cd4ml-${local.stage_slug[s]}", topic = local.trigger_topic_ids[s] } if length(ts) == 1 },
    { for p in flatten([for s, ts in local.stage_triggers : [for t in ts : { stage = s, trigger = t }] if length(ts) > 1]) :
      "${p.stage}:${p.trigger}" => {
        stage = p.stage
        name  = "cd4ml-${local.stage_slug[p.stage]}-${trimprefix(lookup(local.topic_ids, p.trigger, p.trigger), "cd4ml-")}"
        topic = lookup(local.topic_ids, p.trigger, p.trigger)
    } },
  )
  stage_subscriptions = { for k, input in local.stage_subscription_inputs : k => merge(input, {
    ack_deadline_seconds  = local.delivery.ack_deadline_seconds
    minimum_backoff       = "${local.delivery.minimum_backoff_seconds}s"
    maximum_backoff       = "${local.delivery.maximum_backoff_seconds}s"
    dead_letter_topic     = local.dead_letter_topics[input.stage]
    max_delivery_attempts = local.delivery.max_delivery_attempts
  }) }

  # What a stage's dead-letter topic received is kept for inspection by a pull subscription.
  dead_letter_holds = { for s, topic in local.dead_letter_topics : s => {
    name                       = "${topic}-hold"
    topic                      = topic
    ack_deadline_seconds       = 60
    message_retention_duration = "${local.delivery.dead_letter_retention_seconds}s"
  } }

  # The environment variable names of each function: its catalog `env` and the two every stage gets.
  stage_settings     = { for s in keys(local.stages) : s => { CD4ML_STAGE = s, CD4ML_DEAD_LETTER_TOPIC = local.dead_letter_topics[s] } }
  function_env_names = { for s, stage in local.stages : s => toset(concat(stage.env, keys(local.stage_settings[s]))) }

  # One Cloud Scheduler job per manifest (**/manifest.yaml under var.manifests_dir), and the watch tick.
  manifests_dir  = startswith(var.manifests_dir, "/") ? var.manifests_dir : "${path.module}/${var.manifests_dir}"
  manifest_files = { for f in fileset(local.manifests_dir, "**/manifest.yaml") : yamldecode(file("${local.manifests_dir}/${f}")).name => "${local.manifests_dir}/${f}" }
  manifests      = { for name, path in local.manifest_files : name => yamldecode(file(path)) }
  job_source     = "//cloudscheduler.googleapis.com/projects/${var.project_id}/locations/${var.region}/jobs"
  schedules = merge(
    { for name, m in local.manifests : name => {
      job       = "cd4ml-${name}"
      schedule  = m.schedule
      time_zone = try(m.time_zone, "Etc/UTC")
      data      = jsonencode({ model = name, trigger = "schedule" })
      attributes = {
        "ce-specversion" = "1.0"
        "ce-type"        = "cd4ml.run.requested.v1"
        "ce-source"      = "${local.job_source}/cd4ml-${name}"
        "content-type"   = "application/json"
      }
    } },
    { "watch-tick" = {
      job       = "cd4ml-watch-tick"
      schedule  = "* * * * *"
      time_zone = "Etc/UTC"
      data      = "{}"
      attributes = {
        "ce-specversion" = "1.0"
        "ce-type"        = "cd4ml.watch.ticked.v1"
        "ce-source"      = "${local.job_source}/cd4ml-watch-tick"
        "content-type"   = "application/json"
      }
    } },
  )

  # Who may call the decision endpoint: every approver a manifest with `approval.required` names (IAM principals).
  # Notification channels: a Secret Manager secret cd4ml-notify-<channel> per channel a manifest routes to.
  notify_channels = toset(flatten([for name, m in local.manifests : [for r in try(m.notify, []) : r.channel]]))

  approvers = toset(flatten([for name, m in local.manifests : try(m.approval.required, false) ? m.approval.approvers : []]))

  # The decision endpoint's URL, known before the function exists (a function's own `url` would be a cycle in its
  # environment): Cloud Functions' https://REGION-PROJECT.cloudfunctions.net/NAME, the audience its callers' ID
  # tokens carry (https://cloud.google.com/functions/docs/securing/authenticating).
  decision_url = "https://${var.region}-${var.project_id}.cloudfunctions.net/${local.function_names["decide_approval"]}"

  # The deployed approval policy (CD4ML_APPROVAL_POLICY): the repository's manifests decide which models wait for whom,
  # never the manifest a model team pushes to the bucket (cd4ml.approval_policy reads this JSON).
  approval_policy = { for name, m in local.manifests : name => {
    approvers     = m.approval.approvers
    expires_after = try(m.approval.expires_after, "72h")
  } if try(m.approval.required, false) }

  # One build and one training account per model (cd4ml.identities.account_id, the same rule): cd4ml-KIND-MODEL when
  # it fits in 30 characters, else 11 characters of the model (trailing dashes dropped), a dash, 6 hex of sha256.
  models = toset(keys(local.manifests))
  model_accounts = { for name in local.models : name => { for kind in ["build", "train"] : kind => (
    length("cd4ml-${kind}-${name}") <= 30 ? "cd4ml-${kind}-${name}" :
    "cd4ml-${kind}-${replace(substr(name, 0, 11), "/-+$/", "")}-${substr(sha256(name), 0, 6)}"
  ) } }
  # A model's objects are runs/MODEL-… and builds/MODEL-… (a run id is MODEL-YYYYMMDDtHHMMSSz): a model named like
  # another model and a dash would share them, so such a pair is refused (terraform_data.model_names).
  model_name_clashes = [for pair in setproduct(local.models, local.models) : "${pair[1]} starts with ${pair[0]}-" if startswith(pair[1], "${pair[0]}-")]

  data_bucket     = coalesce(var.data_bucket_name, "${var.project_id}-cd4ml-data")
  artifact_bucket = coalesce(var.artifact_bucket_name, "${var.project_id}-cd4ml-artifacts")
  bucket_names    = { "bucket:data" = local.data_bucket, "bucket:artifact" = local.artifact_bucket }

  # Every IAM binding, from iam_bindings.yaml: one per rule, stage and target, with symbolic member and
  # target ("function:fetch_data", "topic:cd4ml.data.fetched.v1") that iam.tf resolves to real ones.
  iam_rules            = yamldecode(file("${path.module}/iam_bindings.yaml")).bindings
  iam_per_stage_scopes = ["dead_letter_topic", "subscription", "run_service", "service_account:invoker"]
  iam_per_stage_roles  = ["function", "invoker"]
  # Members with one account per model: a rule for them is expanded per model (its `stage` is the model).
  iam_per_model_roles  = ["model_build", "model_training"]
  iam_per_model_scopes = ["model_repository", "service_account:model_build", "service_account:model_training"]
  iam_kinds = {
    "project"                        = "project"
    "emits_topics"                   = "topic"
    "dead_letter_topic"              = "topic"
    "subscription"                   = "subscription"
    "run_service"                    = "run_service"
    "service_account:model_training" = "service_account"
    "service_account:model_build"    = "service_account"
    "service_account:invoker"        = "service_account"
    "bucket:data"                    = "bucket"
    "bucket:artifact"                = "bucket"
    "secret:gate_key"                = "secret"
    "secret:gate_client_cert"        = "secret"
    "model_repository"               = "repository"
    "data_arrivals_topic"            = "topic"
    "secret:notify"                  = "secret"
    "ui_service"                     = "run_service"
  }
  # The web view's rules (members ui, ui_viewers) apply only when it is deployed (var.ui_image, ui.tf).
  iam_ui_members = ["ui", "ui_viewers"]
  iam_plan = { for g in flatten([
    for rule_name, rule in local.iam_rules : [
      for stage in(
        var.ui_image == null && contains(local.iam_ui_members, rule.member) ? [] :
        contains(local.iam_per_model_roles, rule.member) ? sort(local.models) :
        contains(try(rule.stages, [""]), "*") ? keys(local.stages) : try(rule.stages, [""])
        ) : [
        for target in(
          rule.scope == "emits_topics" ? [for t in local.stages[stage].emits : "topic:${t}"] :
          rule.scope == "subscription" ? [for k, sub in local.stage_subscriptions : "subscription:${k}" if sub.stage == stage] :
          rule.scope == "secret:notify" ? [for c in local.notify_channels : "secret:notify:${c}"] :
          rule.scope == "secret:gate_key" ? [for m in keys(local.manifests) : "secret:gate_key:${m}"] :
          # A model's member gets its own model's repository or account; any other member each model's.
          contains(local.iam_per_model_scopes, rule.scope) ? (
            contains(local.iam_per_model_roles, rule.member) ? ["${rule.scope}:${stage}"] : [for m in sort(local.models) : "${rule.scope}:${m}"]
          ) :
          contains(local.iam_per_stage_scopes, rule.scope) ? ["${rule.scope}:${stage}"] : [rule.scope]
          ) : [
          # `approvers`: one grant per approver the manifests name (its key ends with the principal).
          for member in(rule.member == "approvers" ? [for a in local.approvers : "approver:${a}"] :
            rule.member == "ui_viewers" ? [for v in var.ui_viewers : "ui_viewer:${v}"] : [
              contains(concat(local.iam_per_stage_roles, local.iam_per_model_roles), rule.member) ? "${rule.member}:${stage}" : rule.member
            ]) : {
            key    = contains(["approvers", "ui_viewers"], rule.member) ? "${rule_name}/${stage}/${target}/${member}" : "${rule_name}/${stage}/${target}"
            rule   = rule_name
            kind   = local.iam_kinds[rule.scope]
            role   = rule.role
            member = member
            target = target
            condition = (
              length(try(rule.prefixes, [])) > 0 ? {
                title       = "only ${join(" ", [for p in rule.prefixes : replace(p, "{model}", stage)])}"
                description = "Objects under, and listings of, ${join(", ", [for p in rule.prefixes : replace(p, "{model}", stage)])}."
                expression = join(" || ", flatten([for p in rule.prefixes : [
                  "resource.name.startsWith(\"projects/_/buckets/${local.bucket_names[rule.scope]}/objects/${replace(p, "{model}", stage)}\")",
                  "api.getAttribute(\"storage.googleapis.com/objectListPrefix\", \"\").startsWith(\"${replace(p, "{model}", stage)}\")",
                ]]))
              } :
              try(rule.condition, "") == "firestore_database" ? {
                title       = "only database ${var.firestore_database}"
                description = "The run ledger's Firestore database."
                expression  = "resource.name == \"projects/${var.project_id}/databases/${var.firestore_database}\""
              } : null
            )
        }]
      ]
    ]
  ]) : g.key => g }
}
