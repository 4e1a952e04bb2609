"""`cresta-pipeline`: one entry point for the demo, the job and the connector worker.

Subcommands import their modules lazily so `--help` stays fast and a worker host does
not need to load PyFlink.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": ("emulators.demo", "run emulated Connect calls through the real pipeline locally"),
    "job": ("jobs.audio_job", "run the PyFlink job (`job run --config FILE`)"),
    "connector": ("connectors.kvs.worker", "run a KVS connector worker (`connector run`)"),
    "kvs": ("connectors.kvs.tools", "look into KVS media: `kvs inspect SOURCE`, `kvs dump SOURCE --out DIR`"),
    "package": ("jobs.package", "build the Managed Flink and Lambda zips into dist/"),
    "deploy": ("jobs.deploy", "upload dist/ and create or update the stack (`deploy --stack-name S --region R`)"),
    "report": ("jobs.report", "render the audit notebook over a demo output's audit trail to DIR/report.html"),
}
#: Subcommands whose first argument is a verb (`job run`, `connector run`).
VERB_COMMANDS = {"job": "run", "connector": "run"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="cresta-pipeline",
        description="Amazon Connect live audio → Cresta, through a PyFlink job, with a Parquet audit trail.",
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items()))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command (see COMMAND --help)")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    rest = argv[1:]
    verb = VERB_COMMANDS.get(args.command)
    if verb:
        if not rest or rest[0] != verb:
            parser.error(f"usage: cresta-pipeline {args.command} {verb} [options]")
        rest = rest[1:]
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
