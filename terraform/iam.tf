# The boundary, enforced by IAM: each identity gets roles on the buckets its side needs and on nothing else.
#   measure   (trusted side): read raw, use scratch, write artifacts
#   synthesize (post-processing): read artifacts, write synthetic; NO role on raw or scratch
#   analysts: read synthetic; NO role on raw, scratch or artifacts
# No project-level storage role is granted to any of them (it would reach every bucket).

resource "google_service_account" "measure" {
  project      = var.project
  account_id   = "${var.prefix}-measure"
  display_name = "dpbeam measurement job (trusted side: reads raw)"
}

resource "google_service_account" "synthesize" {
  project      = var.project
  account_id   = "${var.prefix}-synthesize"
  display_name = "dpbeam synthesis job (post-processing: never reads raw)"
}

resource "google_storage_bucket_iam_member" "measure_reads_raw" {
  bucket = google_storage_bucket.lake["raw"].name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.measure.email}"
}

resource "google_storage_bucket_iam_member" "measure_writes_artifacts" {
  bucket = google_storage_bucket.lake["artifacts"].name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.measure.email}"
}

resource "google_storage_bucket_iam_member" "measure_uses_scratch" {
  bucket = google_storage_bucket.lake["scratch"].name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.measure.email}"
}

resource "google_storage_bucket_iam_member" "synthesize_reads_artifacts" {
  bucket = google_storage_bucket.lake["artifacts"].name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.synthesize.email}"
}

resource "google_storage_bucket_iam_member" "synthesize_writes_synthetic" {
  bucket = google_storage_bucket.lake["synthetic"].name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.synthesize.email}"
}

resource "google_storage_bucket_iam_member" "analysts_read_synthetic" {
  bucket = google_storage_bucket.lake["synthetic"].name
  role   = "roles/storage.objectViewer"
  member = var.analysts_group
}

# What the jobs need to run (not storage): Dataflow and Dataproc workers, and the GPU job's runtime.
resource "google_project_iam_member" "measure_dataflow_worker" {
  project = var.project
  role    = "roles/dataflow.worker"
  member  = "serviceAccount:${google_service_account.measure.email}"
}

resource "google_project_iam_member" "measure_dataproc_worker" {
  project = var.project
  role    = "roles/dataproc.worker"
  member  = "serviceAccount:${google_service_account.measure.email}"
}
