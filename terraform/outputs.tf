output "buckets" {
  description = "Bucket names by side of the boundary: raw, scratch, artifacts, synthetic."
  value       = { for k, b in google_storage_bucket.lake : k => b.name }
}

output "measure_service_account" {
  description = "Runs the trusted pass (Dataflow or Dataproc): reads raw, uses scratch, writes artifacts."
  value       = google_service_account.measure.email
}

output "synthesize_service_account" {
  description = "Runs synthesis: reads artifacts, writes synthetic; no access to raw."
  value       = google_service_account.synthesize.email
}

output "synthesis_job" {
  description = "The Cloud Run GPU job that synthesizes (execute it after a measurement run)."
  value       = google_cloud_run_v2_job.synthesize.name
}
