# The read-only web view of the run ledger (cd4ml_ui, `cd4ml ui`): a private Cloud Run service, made when
# var.ui_image names its container image (cd4ml_ui/Dockerfile). Its own account may only read the ledger
# (iam_bindings.yaml: ui_reads_ledger); only var.ui_viewers may invoke it (ui_viewers_invoke), and nobody else:
# no allUsers, no allAuthenticatedUsers (variables.tf refuses both). People reach it with
# `gcloud run services proxy cd4ml-ui --region REGION`, which adds their identity token; the proxy runs on their
# machine, so ingress must admit it (internal ingress would lock them out, see
# https://cloud.google.com/sdk/gcloud/reference/run/services/proxy) and IAM does the refusing.

locals {
  ui_enabled = var.ui_image != null
}

resource "google_service_account" "ui" {
  count = local.ui_enabled ? 1 : 0

  project      = var.project_id
  account_id   = "cd4ml-ui"
  display_name = "cd4ml web view"
  description  = "Runtime identity of the cd4ml web view: reads the run ledger in Firestore and nothing else."
}

resource "google_cloud_run_v2_service" "ui" {
  count = local.ui_enabled ? 1 : 0

  project             = var.project_id
  name                = "cd4ml-ui"
  location            = var.region
  description         = "cd4ml: read-only web view of runs, lineage and models (private; gcloud run services proxy)."
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = false

  template {
    service_account                  = google_service_account.ui[0].email
    max_instance_request_concurrency = 40
    timeout                          = "30s"

    scaling {
      min_instance_count = 0
      max_instance_count = 2
    }

    containers {
      image = var.ui_image

      ports {
        container_port = 8080
      }

      env {
        name  = "CD4ML_PROJECT"
        value = var.project_id
      }

      env {
        name  = "CD4ML_FIRESTORE_DATABASE"
        value = var.firestore_database
      }

      resources {
        limits = {
          cpu    = "1"
          memory = "512Mi"
        }
        cpu_idle = true
      }

      startup_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }
}
