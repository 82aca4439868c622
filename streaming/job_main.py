"""Entry point of the stream job on a Flink cluster (Flink Kubernetes Operator, `PythonDriver -pym streaming.job_main`).

Only builds the graph and submits it. Checkpoint storage, interval and mode,
restore paths, parallelism and the Python executable come from the cluster's
Flink configuration (the FlinkDeployment), never from here: setting them in
code would override a savepoint restore. Locally, `freshrank stream` calls
`streaming.job.run` instead, which sets them for a mini-cluster; with
`--task-managers N` it submits this module to a local standalone cluster whose
config sets them (streaming/cluster.py).
"""

from __future__ import annotations

from pyflink.datastream import StreamExecutionEnvironment

from streaming.job import JOB_NAME, build, load_declared_views
from streaming.settings import StreamSettings


def main() -> None:
    settings = StreamSettings()
    # Declared Feast stream feature views, from the registry `feast apply` wrote; a view the job
    # cannot run fails the submission here, with the view, the field and the reason.
    declared = load_declared_views(settings)
    env = StreamExecutionEnvironment.get_execution_environment()
    build(env, settings, declared)
    env.execute(JOB_NAME)


if __name__ == "__main__":
    main()
