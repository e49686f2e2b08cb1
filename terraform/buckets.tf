# Buckets, one per side of the privacy boundary: raw (trusted input), scratch (the trusted pass's temp_location: it
# briefly holds exact summaries, so only the measurement account may touch it), artifacts (DP measurements), synthetic.

locals {
  buckets = {
    raw       = { retention = 0 }
    scratch   = { retention = 0 }
    artifacts = { retention = var.retention_days }
    synthetic = { retention = var.retention_days }
  }
}

resource "google_storage_bucket" "lake" {
  for_each = local.buckets
  #checkov:skip=CKV_GCP_62:access logs go to Cloud Audit Logs (data access logs enabled at the project), not to a log bucket

  project                     = var.project
  name                        = "${var.prefix}-${each.key}"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  dynamic "retention_policy" {
    for_each = each.value.retention > 0 ? [each.value.retention] : []
    content {
      retention_period = retention_policy.value * 86400
    }
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }
}
