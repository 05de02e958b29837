variable "project_id" {
  type        = string
  description = "Google Cloud project that hosts the whole pipeline."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project id (6-30 lowercase letters, digits and dashes), not a number or a name."
  }
}

variable "region" {
  type        = string
  description = "Region of the functions, Cloud Scheduler, Artifact Registry, Vertex AI and Cloud Build."
  default     = "us-central1"
}

variable "spinnaker_gate_url" {
  type        = string
  description = "Base URL of Spinnaker Gate, e.g. https://gate.spinnaker.example.com (trigger_canary POSTs /webhooks/webhook/SOURCE)."

  validation {
    condition     = can(regex("^https://[^/\\s]+", var.spinnaker_gate_url))
    error_message = "spinnaker_gate_url must be an https:// URL: the webhook carries a pre-shared key."
  }
}

variable "manifests_dir" {
  type        = string
  description = "Folder searched for **/manifest.yaml, one per model; relative paths are taken from this module."
  default     = "../examples"
}

variable "bucket_location" {
  type        = string
  description = "Location of the data and artifact buckets; null means var.region."
  default     = null
}

variable "data_bucket_name" {
  type        = string
  description = "Name of the bucket of source data and dataset snapshots; null means PROJECT-cd4ml-data."
  default     = null
}

variable "artifact_bucket_name" {
  type        = string
  description = "Name of the bucket of manifests, function sources, models and build contexts; null means PROJECT-cd4ml-artifacts."
  default     = null
}

variable "noncurrent_version_retention_days" {
  type        = number
  description = "Days an overwritten or deleted object version is kept in the versioned buckets."
  default     = 30

  validation {
    condition     = var.noncurrent_version_retention_days >= 1
    error_message = "noncurrent_version_retention_days must be at least 1."
  }
}

variable "registry_repository_id" {
  type        = string
  description = "Artifact Registry Docker repository of the serving images."
  default     = "cd4ml"
}

variable "spinnaker_gate_auth" {
  type        = string
  description = "How the functions authenticate to Gate: x509 (the client certificate in secret cd4ml-spinnaker-client-certificate), iap:AUDIENCE (a Google ID token for Gate behind IAP, AUDIENCE its OAuth client id) or none."
  default     = "x509"

  validation {
    condition     = can(regex("^(x509|none|iap:.+)$", var.spinnaker_gate_auth))
    error_message = "spinnaker_gate_auth must be x509, none or iap:AUDIENCE."
  }
}

variable "spinnaker_confirm_seconds" {
  type        = number
  description = "How long trigger_canary searches for the execution a webhook started (Echo starts it asynchronously and retries its call to Orca 5 times 5 s apart)."
  default     = 30
}

variable "firestore_database" {
  type        = string
  description = "Firestore (native mode) database of the run ledger; the functions' Firestore access is limited to it."
  default     = "(default)"
}

variable "vertex_endpoint" {
  type        = string
  description = "CD4ML_VERTEX_ENDPOINT: empty means the regional endpoint REGION-aiplatform.googleapis.com."
  default     = ""
}

variable "cloudbuild_endpoint" {
  type        = string
  description = "CD4ML_CLOUDBUILD_ENDPOINT: empty means the client library's default endpoint."
  default     = ""
}

variable "max_instance_count" {
  type        = number
  description = "Upper bound of instances per function (each serves one request at a time)."
  default     = 20
}

variable "labels" {
  type        = map(string)
  description = "Labels added to every labelled resource."
  default     = {}
}

variable "decision_user_audiences" {
  description = "ID-token audiences the decision endpoint also accepts besides its URL: gcloud's OAuth client id, the audience of a user's `gcloud auth print-identity-token` (such a token is accepted by any Cloud Run service the user calls; [] to admit only tokens minted for the endpoint, i.e. service accounts)."
  type        = list(string)
  default     = ["32555940559.apps.googleusercontent.com"]
}

variable "ui_image" {
  type        = string
  description = "Container image of the web view (cd4ml_ui/Dockerfile), e.g. REGION-docker.pkg.dev/PROJECT/cd4ml/cd4ml-ui@sha256:...; null deploys no web view."
  default     = null
}

variable "ui_viewers" {
  type        = list(string)
  description = "Principals that may open the web view through `gcloud run services proxy` (run.invoker on it), e.g. group:ml-team@example.com."
  default     = []

  validation {
    condition     = alltrue([for v in var.ui_viewers : can(regex("^(user|group|serviceAccount|domain|principal|principalSet):.+", v))])
    error_message = "ui_viewers must be IAM principals (user:, group:, serviceAccount:, domain:, principal:, principalSet:); allUsers and allAuthenticatedUsers would make the ledger public."
  }
}
