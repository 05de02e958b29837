terraform {
  # Terraform 1.9+ for cross-object variable validation; checked with 1.11.
  required_version = ">= 1.9, < 2.0"

  required_providers {
    # nox -s terraform plans offline against this provider version's schema (cdktn-provider-google 21.1.0 embeds
    # hashicorp/google 8.7.0; tests/terraform/provider/schema.py pins it); move both together.
    google = {
      source  = "hashicorp/google"
      version = "~> 8.7"
    }
    # For google_project_service_identity alone (not in hashicorp/google); planned against
    # cdktn-provider-google-beta 21.1.0 (= google-beta 8.7.0). Move it with google.
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "~> 8.7"
    }
    # Planned against cdktn-provider-archive 14.0.1 (= archive 2.8.1).
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.7"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

provider "google-beta" {
  project = var.project_id
  region  = var.region
}
