# Inputs. Every bucket name is derived from var.prefix; nothing here is read from data.

variable "project" {
  description = "GCP project that holds the buckets, the service accounts and the jobs."
  type        = string
}

variable "region" {
  description = "Region of the buckets and jobs (keep the data in one region)."
  type        = string
  default     = "europe-west4"
}

variable "prefix" {
  description = "Prefix of every resource name (e.g. \"acme-dpbeam\")."
  type        = string
}

variable "kms_key_name" {
  description = "Optional CMEK key (projects/P/locations/L/keyRings/R/cryptoKeys/K) for the buckets; null for Google-managed keys."
  type        = string
  default     = null
}

variable "retention_days" {
  description = "Retention period of the artifacts and synthetic buckets: objects cannot be deleted earlier (the ledger points to them)."
  type        = number
  default     = 30
}

variable "analysts_group" {
  description = "Google group of the analysts (e.g. \"group:analysts@example.com\"): read the synthetic bucket only."
  type        = string
}

variable "spec_uri" {
  description = "The job spec's URI (gs://.../specs/events.yaml), handed to the measurement job as --spec."
  type        = string
}

variable "flex_template_spec" {
  description = "gs:// path of the flex template's JSON spec (built from jobs/docker/flex-template.Dockerfile)."
  type        = string
}

variable "synthesis_image" {
  description = "Image built from jobs/docker/synthesis.Dockerfile."
  type        = string
}

variable "spark_main_uri" {
  description = "gs:// path of jobs/spark_main.py (with a jobs.zip of the package beside it) for Dataproc Serverless."
  type        = string
}

variable "schedule" {
  description = "Cloud Scheduler cron of the measurement job."
  type        = string
  default     = "0 3 * * *"
}

variable "network" {
  description = "Subnetwork self link for Dataflow and Dataproc workers (private IPs only)."
  type        = string
}
