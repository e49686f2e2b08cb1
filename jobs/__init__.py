"""Scheduled entrypoints: a Dataflow flex-template main (:mod:`jobs.beam_main`), a spark-submit main
(:mod:`jobs.spark_main`) and a synthesis main (:mod:`jobs.synthesize_main`); their Dockerfiles, example specs and an
Airflow DAG (``jobs/airflow/``). Each main prints one line per error and never the data (see :mod:`jobs.common`)."""
