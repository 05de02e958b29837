# The run ledger lives in the Firestore database var.firestore_database (created once, see the README).
# `cd4ml status --model M` lists a model's runs newest first: that query needs this composite index.
# watch_training's query (training.active == true) uses Firestore's automatic single-field index.
resource "google_firestore_index" "runs_by_model" {
  project    = var.project_id
  database   = var.firestore_database
  collection = "runs"

  fields {
    field_path = "model"
    order      = "ASCENDING"
  }

  fields {
    field_path = "created_at"
    order      = "DESCENDING"
  }
}

# watch_training ends runs that made no progress (status == "running", updated_at older than the limit).
resource "google_firestore_index" "runs_by_status" {
  project    = var.project_id
  database   = var.firestore_database
  collection = "runs"

  fields {
    field_path = "status"
    order      = "ASCENDING"
  }

  fields {
    field_path = "updated_at"
    order      = "ASCENDING"
  }
}

# The web view (cd4ml_ui.queries) lists runs newest first, filtered by status, or by model and status (a model's
# champion history reads its succeeded runs); the runs_by_model index above serves the filter by model alone.
resource "google_firestore_index" "runs_by_status_newest" {
  project    = var.project_id
  database   = var.firestore_database
  collection = "runs"

  fields {
    field_path = "status"
    order      = "ASCENDING"
  }

  fields {
    field_path = "created_at"
    order      = "DESCENDING"
  }
}

resource "google_firestore_index" "runs_by_model_status" {
  project    = var.project_id
  database   = var.firestore_database
  collection = "runs"

  fields {
    field_path = "model"
    order      = "ASCENDING"
  }

  fields {
    field_path = "status"
    order      = "ASCENDING"
  }

  fields {
    field_path = "created_at"
    order      = "DESCENDING"
  }
}
