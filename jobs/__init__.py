"""Scheduled entrypoints: a Dataflow flex-template main (:mod:`jobs.beam_main`), a spark-submit main
(:mod:`jobs.spark_main`), a synthesis main (:mod:`jobs.synthesize_main`), a trusted evaluation main
(:mod:`jobs.evaluate_main`) and a ledger commit (:mod:`jobs.register_main`); their Dockerfiles, example specs and an
Airflow DAG (``jobs/airflow/dpbeam_dag.py``). Each main prints one line per error and never the data (see :mod:`jobs.common`)."""
