# The scheduled jobs: measurement on Dataflow (flex template, started by Cloud Scheduler) or on Dataproc Serverless
# (Spark), then synthesis on a GPU (Cloud Run job). Each runs as its own service account (iam.tf).

resource "google_service_account" "scheduler" {
  project      = var.project
  account_id   = "${var.prefix}-scheduler"
  display_name = "dpbeam scheduler: launches the measurement job as the measure account"
}

resource "google_project_iam_member" "scheduler_launches_dataflow" {
  #checkov:skip=CKV_GCP_49:Dataflow jobs exist only at project scope, so launching the flex template needs roles/dataflow.developer on the project; the scheduler account holds no storage role and may act only as the measure account (below)
  project = var.project
  role    = "roles/dataflow.developer"
  member  = "serviceAccount:${google_service_account.scheduler.email}"
}

resource "google_service_account_iam_member" "scheduler_acts_as_measure" {
  service_account_id = google_service_account.measure.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.scheduler.email}"
}

locals {
  launch_body = {
    launchParameter = {
      jobName               = "${var.prefix}-measure"
      containerSpecGcsPath  = var.flex_template_spec
      parameters            = { spec = var.spec_uri }
      environment = {
        serviceAccountEmail   = google_service_account.measure.email
        tempLocation          = "gs://${google_storage_bucket.lake["scratch"].name}/tmp"
        stagingLocation       = "gs://${google_storage_bucket.lake["scratch"].name}/staging"
        subnetwork            = var.network
        ipConfiguration       = "WORKER_IP_PRIVATE"
        kmsKeyName            = var.kms_key_name
      }
    }
  }
}

resource "google_cloud_scheduler_job" "measure" {
  project   = var.project
  region    = var.region
  name      = "${var.prefix}-measure"
  schedule  = var.schedule
  time_zone = "Etc/UTC"

  http_target {
    http_method = "POST"
    uri         = "https://dataflow.googleapis.com/v1b3/projects/${var.project}/locations/${var.region}/flexTemplates:launch"
    body        = base64encode(jsonencode(local.launch_body))
    headers     = { "Content-Type" = "application/json" }
    oauth_token {
      service_account_email = google_service_account.scheduler.email
    }
  }
}

# The same trusted pass on Spark: Dataproc Serverless runs jobs/spark_main.py as the measure account.
resource "google_dataproc_batch" "measure_spark" {
  project  = var.project
  location = var.region
  batch_id = "${var.prefix}-measure-spark"

  pyspark_batch {
    main_python_file_uri = var.spark_main_uri
    python_file_uris     = [replace(var.spark_main_uri, "spark_main.py", "jobs.zip")]
    args                 = ["--spec", var.spec_uri]
  }

  runtime_config {
    version = "2.3"
  }

  environment_config {
    execution_config {
      service_account = google_service_account.measure.email
      subnetwork_uri  = var.network
      kms_key         = var.kms_key_name
      staging_bucket  = google_storage_bucket.lake["scratch"].name
    }
  }
}

# Synthesis on a GPU: post-processing only, as the synthesize account (no role on raw or scratch).
resource "google_cloud_run_v2_job" "synthesize" {
  project             = var.project
  location            = var.region
  name                = "${var.prefix}-synthesize"
  deletion_protection = true
  launch_stage        = "BETA"

  template {
    template {
      service_account = google_service_account.synthesize.email
      timeout         = "3600s"
      max_retries     = 1
      node_selector {
        accelerator = "nvidia-l4"
      }
      containers {
        image = var.synthesis_image
        args  = ["--measurements", "gs://${google_storage_bucket.lake["artifacts"].name}/measurements",
                 "--out", "gs://${google_storage_bucket.lake["synthetic"].name}/table"]
        resources {
          limits = { cpu = "4", memory = "16Gi", "nvidia.com/gpu" = "1" }
        }
      }
    }
  }
}
