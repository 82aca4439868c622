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

from streaming.job import JOB_NAME, build
from streaming.settings import StreamSettings


def main() -> None:
    settings = StreamSettings()
    env = StreamExecutionEnvironment.get_execution_environment()
    build(env, settings)
    env.execute(JOB_NAME)


if __name__ == "__main__":
    main()
