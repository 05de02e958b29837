output "topics" {
  description = "Topic id of every event type."
  value       = { for t, r in google_pubsub_topic.event : t => r.name }
}

output "dead_letter_topics" {
  description = "Dead-letter topic id of every stage."
  value       = { for s, r in google_pubsub_topic.dead_letter : s => r.name }
}

output "subscriptions" {
  description = "Per stage: the push subscriptions that feed it (one per trigger) and the pull subscription holding what it dead-lettered."
  value = { for s in keys(local.stages) : s => {
    push             = [for k, sub in google_pubsub_subscription.stage : sub.name if local.stage_subscriptions[k].stage == s]
    dead_letter_hold = google_pubsub_subscription.dead_letter_hold[s].name
  } }
}

output "function_uris" {
  description = "Cloud Run URI of every stage's function (internal ingress only)."
  value       = { for s, f in google_cloudfunctions2_function.stage : s => f.service_config[0].uri }
}

output "data_bucket" {
  description = "Bucket of source data and dataset snapshots."
  value       = google_storage_bucket.bucket["data"].name
}

output "artifact_bucket" {
  description = "Bucket of manifests, function sources, models and build contexts."
  value       = google_storage_bucket.bucket["artifacts"].name
}

output "registry" {
  description = "Image registry prefix (CD4ML_REGISTRY): images are REGISTRY/MODEL:RUN_ID, {model} in REGISTRY standing for the model (a repository per model)."
  value       = local.registry
}

output "gate_key_secrets" {
  description = "Per model, the secret to add its Spinnaker webhook key to: gcloud secrets versions add NAME --data-file=-"
  value       = { for m, secret in google_secret_manager_secret.gate_key : m => secret.secret_id }
}

output "gate_client_certificate_secret" {
  description = "Secret to add the functions' Gate client certificate and key to (PEM), when spinnaker_gate_auth is x509."
  value       = google_secret_manager_secret.gate_client_certificate.secret_id
}

output "service_accounts" {
  description = "Every identity cd4ml runs as."
  value = {
    functions = { for s, a in google_service_account.function : s => a.email }
    push      = { for s, a in google_service_account.invoker : s => a.email }
    training  = { for m, a in google_service_account.model_training : m => a.email }
    build     = { for m, a in google_service_account.model_build : m => a.email }
  }
}

output "scheduler_jobs" {
  description = "Cloud Scheduler job of every model, and of the watch tick."
  value       = { for k, j in google_cloud_scheduler_job.job : k => j.name }
}

output "decision_url" {
  description = "The decision endpoint `cd4ml approve|reject` calls (CD4ML_DECISION_URL)."
  value       = local.decision_url
}

output "approval_policy" {
  description = "The deployed approval policy (CD4ML_APPROVAL_POLICY), for `cd4ml model check|push` to compare manifests with."
  value       = jsonencode(local.approval_policy)
}

output "ui_service" {
  description = "The web view's Cloud Run service (null without var.ui_image); open it with `gcloud run services proxy NAME --region REGION`."
  value       = local.ui_enabled ? google_cloud_run_v2_service.ui[0].name : null
}
