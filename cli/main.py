"""The `freshrank` command line: one typer app made of a sub-app per area.

Commands only parse options, wire the parts together and report; the work
itself lives in the packages (features/, sdk/, training/, stack/, ...). Errors a
user can fix are printed as one red line with what to do, never as a traceback.
The sub-apps without a name add their commands at the top level (`freshrank up`);
the order here is the order of `freshrank --help`.
"""

from __future__ import annotations

import typer

from cli import api, benchmarks, declared_features, local_stack, models, schema, streams, topics_command

app = typer.Typer(help="freshrank: streaming features and real-time re-ranking for feeds.", no_args_is_help=True)
app.add_typer(local_stack.app)
app.add_typer(streams.app)
app.add_typer(api.app)
app.add_typer(models.app)
app.add_typer(benchmarks.bench_app, name="bench")
app.add_typer(models.datasets_app, name="datasets")
app.add_typer(schema.schema_app, name="schema")
app.add_typer(declared_features.features_app, name="features")
app.add_typer(topics_command.topics_app, name="topics")

if __name__ == "__main__":
    app()
